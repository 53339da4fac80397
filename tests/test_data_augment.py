"""The loader's uint8 augmentation (`_spatial`: crop, one uint8 resize, flip, colour jitter
rounded back to uint8) followed by the consumer's `video_to_float` equals the same steps done
plainly in float32 (the loader before issue 15, restated below) within rounding, on decoded
MJPEG frames at the spec's geometry (stored 224 x 304, output 224 x 224), for training and
evaluation crops."""

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vatt.config import load_config
from vatt.data.loader import (_colour_jitter, _colour_uint8, _crop_box, _draw_jitter,
                              _jitter_affine, _spatial, clip_spec, video_to_float)
from vatt.data.media import decode_video, encode_video

# one uint8 level in [-1, 1] units: the uint8 resize rounds to the nearest level (0.5) and its
# fixed-point weights add at most another half level, so every output pixel is within 1 level
LEVEL = 2.0 / 255.0
# the jitter's output is rounded to uint8 in the data worker: at most another half level
JITTER_ROUNDING = LEVEL / 2


def _fast(frames: np.ndarray, rng, spec, crop: int = 0) -> np.ndarray:
    """The loader's path: the row's uint8 video, then the consumer's conversion to [-1, 1]."""
    row_video = _spatial(frames, rng, spec, crop)
    assert row_video.dtype == np.uint8  # rows travel through Ray Data as uint8
    return video_to_float(torch.from_numpy(row_video)).numpy()


def _reference(frames: np.ndarray, rng, spec, crop: int = 0) -> np.ndarray:
    """The float32 path: whole frames to float, crop, resize, flip, jitter, normalise."""
    video = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div_(255.0)  # (T, 3, h, w)
    _, _, h, w = video.shape
    size = spec.frame_size

    def resize(x):
        shrink = x.shape[-1] > size or x.shape[-2] > size
        return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                             antialias=shrink)

    if rng is None:
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        if spec.num_crops > 1:
            offset = int(round(crop * (max(h, w) - side) / (spec.num_crops - 1)))
            top, left = (offset, 0) if h > w else (0, offset)
        video = video[:, :, top:top + side, left:left + side]
        if side != size:
            video = resize(video)
    else:
        if spec.crop == "vgg":
            scale = rng.uniform(1.0, 1.25) * size / min(h, w)
            nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
            video = F.interpolate(video, size=(nh, nw), mode="bilinear", align_corners=False)
            top, left = int(rng.integers(0, nh - size + 1)), int(rng.integers(0, nw - size + 1))
            video = video[:, :, top:top + size, left:left + size]
        else:
            top, left, ch, cw = _crop_box(rng, h, w, spec)
            video = resize(video[:, :, top:top + ch, left:left + cw])
        if rng.random() < 0.5:
            video = video.flip(-1)
        if rng.random() < spec.jitter_prob:
            video = _colour_jitter(video, rng, spec)
    return (video.permute(0, 2, 3, 1) * 2.0 - 1.0).contiguous().numpy()  # (T, S, S, 3)


@pytest.fixture(scope="module")
def decoded():
    """8 decoded MJPEG frames of 224 x 304 (mbs's stored size): smooth colour gradients, a
    moving bright bar and noise, so that every resize meets edges and flat areas."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:224, 0:304]
    frames = []
    for k in range(8):
        image = np.stack([x * 255 / 303, y * 255 / 223, (x + y + 20 * k) % 256], -1)
        image = image + rng.normal(0, 12, image.shape)
        image[:, 30 * k:30 * k + 12] = 250
        frames.append(np.clip(image, 0, 255).astype(np.uint8))
    return decode_video(encode_video(np.stack(frames), fps=10.0))


def _jitter_bound(seed: int, spec, h: int, w: int) -> float:
    """Largest |uint8 path - float path| allowed with this seed's colour jitter.

    An input error e (at most 1 level) leaves the affine map x -> M x + o as at most ||M||_inf e,
    and the contrast pivot (the clip mean, from rounded pixels: off by at most 1 level) moves
    the offset by |1 - contrast| levels along grey (the saturation and hue steps keep grey);
    the clamp does not widen a gap; rounding the jitter's output to uint8 adds half a level."""
    rng = np.random.default_rng(seed)
    _crop_box(rng, h, w, spec)
    rng.random(), rng.random()  # flip, jitter or not: the jitter's draws come next
    probe = copy.deepcopy(rng)
    probe.uniform()  # brightness
    contrast = probe.uniform(1 - spec.contrast, 1 + spec.contrast)
    matrix, _ = _jitter_affine(0.5, _draw_jitter(rng, spec))  # the matrix does not depend on the mean
    return (LEVEL * (np.abs(matrix).sum(axis=1).max() + abs(1 - contrast)) + JITTER_ROUNDING
            + 1e-5)


@pytest.mark.parametrize("jitter_prob", [0.0, 1.0])
def test_training_crop_equals_the_float_path_within_rounding(decoded, jitter_prob):
    cfg = load_config("mbs", [f"data.color_jitter_prob={jitter_prob}"])
    spec = clip_spec(cfg, {"label_names": []}, True, ("<pad>", "<unk>"))
    assert spec.hue > 0 and spec.frame_size == 224  # the spec's jitter, hue included
    _, h, w, _ = decoded.shape
    shrunk = grown = flipped = 0
    for seed in range(12):  # crops that shrink and crops that grow, flipped and not
        fast = _fast(decoded, np.random.default_rng(seed), spec)
        plain = _reference(decoded, np.random.default_rng(seed), spec)
        assert fast.shape == plain.shape == (8, 224, 224, 3) and fast.dtype == np.float32
        bound = _jitter_bound(seed, spec, h, w) if jitter_prob else LEVEL + 1e-5
        gap = np.abs(fast - plain)
        assert gap.max() <= bound, (seed, gap.max() * 127.5, bound * 127.5)
        # rounding: the mean of an error spread over +-0.5 level is 0.25 level (0.3-0.37 seen
        # with the jitter rounded to uint8 too), below half a level
        assert gap.mean() < LEVEL / 2
        rng = np.random.default_rng(seed)
        _, _, ch, cw = _crop_box(rng, h, w, spec)
        shrunk += ch > 224 or cw > 224
        grown += ch < 224 and cw < 224
        flipped += rng.random() < 0.5
    assert shrunk and grown and 0 < flipped < 12


def test_vgg_crop_equals_the_float_path_within_rounding(decoded):
    cfg = load_config("mbs", ["data.crop=vgg", "data.color_jitter_prob=0.0"])
    spec = clip_spec(cfg, {"label_names": []}, True, ("<pad>", "<unk>"))
    for seed in range(4):
        fast = _fast(decoded, np.random.default_rng(seed), spec)
        plain = _reference(decoded, np.random.default_rng(seed), spec)
        assert np.abs(fast - plain).max() <= LEVEL + 1e-5


@pytest.mark.parametrize("size", [224, 160])
def test_eval_crops_equal_the_float_path_within_rounding(decoded, size):
    """224: the short side is the output (no resize: exact up to float rounding); 160: each of
    the three crops is shrunk."""
    cfg = load_config("mbs", [f"data.frame_size={size}"])
    spec = clip_spec(cfg, {"label_names": []}, False, ("<pad>", "<unk>"), num_crops=3)
    for crop in range(3):
        fast = _fast(decoded, None, spec, crop)
        plain = _reference(decoded, None, spec, crop)
        assert fast.shape == (8, size, size, 3)
        tolerance = 1e-6 if size == 224 else LEVEL + 1e-5
        assert np.abs(fast - plain).max() <= tolerance


def test_uint8_jitter_keeps_the_range_and_the_static_clip_static(decoded):
    spec = clip_spec(load_config("mbs", ["data.color_jitter_prob=1.0"]), {"label_names": []},
                     True, ("<pad>", "<unk>"))
    still = np.repeat(decoded[:1], 8, axis=0)
    out = _fast(still, np.random.default_rng(5), spec)
    assert -1.0 <= out.min() and out.max() <= 1.0
    assert np.array_equal(out, np.broadcast_to(out[:1], out.shape))
    assert not math.isclose(float(out.std()), 0.0)


def test_uint8_jitter_is_the_float_jitter_rounded_to_the_nearest_level(decoded):
    """The data worker's jitter (`_colour_uint8`) on uint8 pixels equals the float jitter on the
    same pixels within half a uint8 level: the rounding is all it adds."""
    spec = clip_spec(load_config("mbs", ["data.color_jitter_prob=1.0"]), {"label_names": []},
                     True, ("<pad>", "<unk>"))
    pixels = torch.from_numpy(np.ascontiguousarray(decoded[:, :, :224]))  # (T, S, S, 3) uint8
    for seed in range(4):
        rounded = _colour_uint8(pixels, _draw_jitter(np.random.default_rng(seed), spec))
        assert rounded.dtype == torch.uint8
        plain = _colour_jitter(pixels.permute(0, 3, 1, 2).float() / 255.0,
                               np.random.default_rng(seed), spec)  # (T, 3, S, S) in [0, 1]
        gap = (rounded.float() - plain.permute(0, 2, 3, 1) * 255.0).abs()  # in levels
        assert gap.max() <= 0.5 + 1e-3, (seed, float(gap.max()))
        assert not torch.equal(rounded, pixels)  # the jitter did change the clip
