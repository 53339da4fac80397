"""Ray Data loader: ingested shards -> decoded, windowed, augmented, tokenised torch batches.

    ds = build_dataset(cfg, "train", training=True)             # ray.data.Dataset
    for batch in torch_batches(ds, batch_size=32, training=True):  # or a Train dataset shard
        model(batch["video"], batch["audio"], batch["text"], batch["text_mask"])

`build_dataset(cfg, split, training, dataset=...)` reads `<cfg.data.path>/<dataset>/manifest.json`
(a local folder or an s3:// prefix), lists that split's shards, reads them on Ray workers
(`flat_map`, one row per clip) and decodes each clip on CPU workers (`map`/`flat_map`). Datasets
are the folder names `vatt ingest` writes: a source name (`howto100m`, `kinetics`, ...) or
`synthetic-<layout>` for the generated default (`synthetic-howto100m` for pretraining,
`synthetic-ucf101` action labels, `synthetic-esc50` sound events, `synthetic-msrvtt` retrieval).

Row / batch schema (B = batch size, T = data.num_frames, H = W = data.frame_size,
S = data.audio_samples, L = data.num_text_candidates, K = data.max_text_tokens, C = classes):

    video        float32 [B, T, H, W, 3]  in [-1, 1], channels last; zeros when has_video is 0;
                                          a row (Ray Data, `decode_clip`) holds it as uint8
                                          [T, H, W, 3] (0-255; zeros when has_video is 0), and
                                          `torch_batches` / `video_to_float` make the float;
                                          an image (a 1-frame clip, ImageNet) is its frame
                                          replicated to T = model.video.patch_size[0] (one
                                          temporal patch), one window per image; no video
                                          column at all where the split is read without
                                          video (`build_dataset(video=False)`: audio-only
                                          tasks), nothing of it decoded
    audio        float32 [B, S]           in [-1, 1], mono, the same time span as the video
    text         int64   [B, L, K]        word ids (pad 0, unk 1) of up to L captions
    text_mask    float32 [B, L]           1 for a real caption, 0 for a missing one
    label        int64   [B]              class index, -1 when the clip has none
    fold         int64   [B]              cross-validation fold (ESC-50: 1-5), 0 when the source has none
    labels       float32 [B, C]           multi-hot, only for multi-label sources (AudioSet)
    has_video    float32 [B]              0 for audio-only sources (ESC-50)
    has_audio    float32 [B]              0 for clips without sound
    clip_index   int64   [B]              index of the clip in manifest["clips"]
    window       int64   [B]              view number within its clip: window x crops + crop (0 in training)
    clip_id      str     [B] (list)       "<dataset>/<key>", stable across re-ingestion
    video_id     str     [B] (list)       the raw video's id (several clips may share it)

Training (training=True): a random window (T frames at data.fps and the audio of the same span),
Inception-style random resized crop (data.crop_area, data.crop_aspect) or VGG-style scale jitter
(data.crop=vgg), horizontal flip (p 0.5), colour jitter with p = data.color_jitter_prob
(brightness, contrast, saturation, hue), Gaussian audio noise (std data.audio_noise_std x max abs
amplitude), and L captions drawn from the clip's candidates. Evaluation (training=False) is
deterministic: `num_windows` (default data.eval_num_windows) windows spread evenly over each clip,
each as `num_crops` (default 1) square crops of the short side spread evenly along the long side
(1: the centre; 3: left, centre, right, the spec's fine-tuning test), one row per window and crop
(average over rows with the same clip_index), no augmentation, the first L captions.

Only the windows' frames are decoded, and rows carry uint8 pixels (a quarter of float32's bytes
through Ray's object store): the crop is a view, resized once (bilinear, antialiased when it
shrinks) to S x S and flipped in uint8, then colour jitter is one affine map applied in float32
at the output size and rounded back to uint8 (at most half a level more). The consumer's collate
scales whole batches to [-1, 1]. That equals the same steps in float32 within 1.5 uint8 levels
(times the jitter's gain; tests/test_data_augment.py) and is several times faster at the spec's
input (BENCHMARKS.md, issue 15).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import re
import tarfile
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from vatt.config import Config, CropStyle, StorageConfig
from vatt.data import bounds
from vatt.data.media import decode_video, decode_wav, video_size

STRING_COLUMNS = ("clip_id", "video_id")


class DataError(RuntimeError):
    """Shards that cannot be loaded; the message names the file and what to do."""


def _join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts])


@lru_cache(maxsize=4)
def _store(settings: tuple, endpoint: Optional[str], key_id: Optional[str]):
    from vatt.storage import ObjectStore

    return ObjectStore.from_config(StorageConfig(**dict(settings)))


def _read_bytes(uri: str, storage: Optional[StorageConfig] = None) -> bytes:
    """A file's bytes, local or s3:// (through the store `storage` describes: the config's
    endpoint, region and timeouts; credentials from the environment)."""
    if uri.startswith("s3://"):
        import os
        from dataclasses import asdict

        # one client per process, settings and environment
        store = _store(tuple(sorted(asdict(storage or StorageConfig()).items())),
                       os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"),
                       os.environ.get("AWS_ACCESS_KEY_ID"))
        return store.read_bytes(uri)
    try:
        with open(uri, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        raise DataError(f"{uri}: no such file; run `vatt ingest` (or `dvc pull`) first, or point "
                        "data.path at the ingested folder") from None


def read_manifest(root: str, dataset: str, storage: Optional[StorageConfig] = None) -> dict:
    uri = _join(root, dataset, "manifest.json")
    try:
        manifest = json.loads(_read_bytes(uri, storage))
    except ValueError as err:
        raise DataError(f"{uri}: not valid JSON ({err}); re-ingest the dataset or `dvc pull` "
                        "it again") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("clips"), list) or \
            not isinstance(manifest.get("splits"), dict):
        raise DataError(f"{uri}: not a manifest vatt ingest writes (it needs 'splits' and "
                        "'clips'); re-ingest the dataset")
    return manifest


def manifest_sha256(root: str, dataset: str, storage: Optional[StorageConfig] = None) -> str:
    """SHA-256 of a dataset's manifest: it lists every clip with its members' checksums, so it
    identifies the data a run reads."""
    import hashlib

    return hashlib.sha256(_read_bytes(_join(root, dataset, "manifest.json"), storage)).hexdigest()


@dataclass
class ClipSpec:
    """What a decoding worker needs (picklable, small)."""

    num_frames: int
    fps: float
    frame_size: int
    sample_rate: int
    audio_samples: int
    num_captions: int
    max_tokens: int
    vocab_words: tuple[str, ...]
    num_classes: int
    multi_label: bool
    training: bool
    num_windows: int
    num_crops: int
    crop: str
    crop_area: tuple[float, float]
    crop_aspect: tuple[float, float]
    jitter_prob: float
    brightness: float
    contrast: float
    saturation: float
    hue: float
    noise_std: float
    image_frames: int = 1  # frames an image (a 1-frame clip) becomes: the temporal patch size
    seed: Optional[int] = None  # training: augmentation drawn from (seed, clip_index); None: fresh
    video: bool = True  # False: rows carry no video column and no frame is decoded


@lru_cache(maxsize=4)
def _vocabulary(words: tuple[str, ...]):
    from vatt.text import Vocabulary

    return Vocabulary(words[2:])


# ---------------------------------------------------------------------------------------------
# shard -> rows


_MEMBER_NAME = re.compile(r"^[A-Za-z0-9_\-]+\.(json|mp4|wav)$")  # what vatt ingest writes


def _read_shard(row: dict, root: str, dataset: str, clip_index: dict,
                checksums: Optional[dict] = None,
                storage: Optional[StorageConfig] = None,
                shard_clips: Optional[dict] = None) -> list[dict]:
    """The clips of one shard. Every member must be a plain file with a name ingest writes
    (no paths, no '..'), once; with `checksums` (clip_id -> {ext: sha256}, from the manifest)
    every member of every clip must have a manifest checksum and match it (the `.json` record
    too), before anything of it is parsed: a corrupt, tampered or extended shard is an error,
    not training data. With `shard_clips` (shard -> the clip_ids the manifest puts in it), a
    clip missing from the shard is an error too."""
    uri = _join(root, dataset, row["shard"])
    data = _read_bytes(uri, storage)
    clips: dict[str, dict] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for member in tar.getmembers():
                if not member.isfile() or not _MEMBER_NAME.match(member.name):
                    raise DataError(f"{uri}: member {member.name!r} is not a clip file vatt "
                                    "ingest writes (<key>.json/.mp4/.wav); the shard is not ours "
                                    "or was tampered with: re-ingest the dataset")
                key, ext = member.name.split(".", 1)
                if ext in clips.get(key, {}):
                    raise DataError(f"{uri}: member {member.name!r} appears twice; the shard was "
                                    "tampered with: re-ingest the dataset")
                clips.setdefault(key, {})[ext] = tar.extractfile(member).read()
    except tarfile.TarError as err:
        raise DataError(f"{uri}: not a readable tar ({err}); re-ingest the dataset or `dvc "
                        "pull` it again") from None
    clip_ids = {clip_id.split("/", 1)[-1]: clip_id for clip_id in (checksums or {})}
    if shard_clips is not None:
        absent = sorted(set(shard_clips.get(row["shard"], [])) - {clip_ids.get(k) for k in clips})
        if absent:
            raise DataError(f"{uri}: the manifest lists {len(absent)} clip(s) this shard does "
                            f"not hold ({absent[0]!r}, ...); the shard was changed after ingest: "
                            "re-ingest the dataset")
    rows = []
    for key, parts in clips.items():
        if checksums is not None:
            clip_id = clip_ids.get(key)
            if clip_id is None:
                raise DataError(f"{uri}: clip {key!r} is not in the manifest; re-ingest the "
                                "dataset")
            _verify_members(uri, key, parts, checksums[clip_id])
        if "json" not in parts:
            raise DataError(f"{uri}: clip {key!r} has no {key}.json record; re-ingest the "
                            "dataset")
        try:
            record = json.loads(parts["json"])
            clip_id = record["clip_id"]
        except (ValueError, KeyError, TypeError) as err:
            raise DataError(f"{uri}: {key}.json is not a clip record ({err!r}); re-ingest the "
                            "dataset") from None
        if checksums is not None and clip_id != clip_ids[key]:
            raise DataError(f"{uri}: {key}.json says it is clip {clip_id!r}, the manifest says "
                            f"{clip_ids[key]!r}; re-ingest the dataset")
        rows.append({"record": json.dumps(record), "mp4": parts.get("mp4", b""),
                     "wav": parts.get("wav", b""),
                     "clip_index": clip_index.get(clip_id, -1)})
    return rows


def _verify_members(uri: str, key: str, parts: dict[str, bytes], expected: dict) -> None:
    """A clip's members against its manifest checksums: the same members (none added, none
    missing; the `.json` record is one of them) with the same bytes."""
    if "json" not in expected:
        raise DataError(f"{uri}: the manifest has no checksum for {key}.json, so the clip's "
                        "record cannot be verified (a manifest not written by this version of "
                        "vatt ingest, or edited); re-ingest the dataset")
    if set(parts) != set(expected):
        added = sorted(set(parts) - set(expected))
        missing = sorted(set(expected) - set(parts))
        raise DataError(f"{uri}: clip {key!r} has members {sorted(parts)} but the manifest has "
                        f"checksums for {sorted(expected)} (added: {added}, missing: "
                        f"{missing}); the shard was changed after ingest: re-ingest the dataset")
    for ext, digest in sorted(expected.items()):
        if hashlib.sha256(parts[ext]).hexdigest() != digest:
            raise DataError(f"{uri}: {key}.{ext} does not match the manifest's sha256 "
                            "(corrupt or changed after ingest); re-ingest the dataset")


# ---------------------------------------------------------------------------------------------
# augmentations (numpy/torch on the CPU worker)


def _crop_box(rng: np.random.Generator, h: int, w: int, spec: ClipSpec) -> tuple[int, int, int, int]:
    """Inception-style random resized crop box (top, left, height, width)."""
    area = h * w
    for _ in range(10):
        target = area * rng.uniform(*spec.crop_area)
        aspect = math.exp(rng.uniform(math.log(spec.crop_aspect[0]), math.log(spec.crop_aspect[1])))
        cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
    side = min(h, w)
    return (h - side) // 2, (w - side) // 2, side, side


def _resize(frames, size: int):
    """(T, 3, h, w) uint8, any strides -> (T, 3, size, size) uint8, channels-last in memory.

    Bilinear on uint8 (torch's fixed-point kernel, within one uint8 level of the float one),
    antialiased only to shrink (antialias costs and upscaling needs none)."""
    import torch
    import torch.nn.functional as F

    shrink = frames.shape[-1] > size or frames.shape[-2] > size
    # the uint8 kernels want packed RGB: a cropped view is copied once, at the crop's size
    frames = frames.contiguous(memory_format=torch.channels_last)
    return F.interpolate(frames, size=(size, size), mode="bilinear", align_corners=False,
                         antialias=shrink)


@dataclass(frozen=True)
class Jitter:
    """One colour jitter's drawn parameters (spec section 1)."""

    brightness: float  # added to every channel
    contrast: float  # gain about the clip's mean
    saturation: float  # gain away from grey
    hue: float  # rotation of the YIQ chroma plane, radians


def _draw_jitter(rng: np.random.Generator, spec: ClipSpec) -> Jitter:
    """The jitter's four draws from `rng`, in the order the loader has always taken them."""
    return Jitter(brightness=float(rng.uniform(-spec.brightness, spec.brightness)),
                  contrast=float(rng.uniform(1 - spec.contrast, 1 + spec.contrast)),
                  saturation=float(rng.uniform(1 - spec.saturation, 1 + spec.saturation)),
                  hue=2 * math.pi * float(rng.uniform(-spec.hue, spec.hue)))


def _jitter_affine(mean: float, jitter: Jitter) -> tuple[np.ndarray, np.ndarray]:
    """Colour jitter (spec section 1) as one affine map of RGB in [0, 1]: x -> matrix @ x + offset
    (before the clamp to [0, 1]). Brightness, contrast, saturation and hue, in that order, are
    each affine in the pixel values (contrast about `mean`, the clip's mean before jitter), so
    the four compose into one 3x3 matrix and offset."""
    delta, contrast, saturation = jitter.brightness, jitter.contrast, jitter.saturation
    theta = jitter.hue
    luma = np.array([0.299, 0.587, 0.114])
    eye = np.eye(3)
    # brightness: x + delta; contrast: (x - m) c + m with m the mean after brightness
    mean = mean + delta
    matrix, offset = contrast * eye, contrast * delta + (1 - contrast) * mean * np.ones(3)
    # saturation: s x + (1 - s) gray(x)
    sat = saturation * eye + (1 - saturation) * np.outer(np.ones(3), luma)
    matrix, offset = sat @ matrix, sat @ offset
    # hue: rotate the chroma plane of YIQ by theta
    to_yiq = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    c, s = math.cos(theta), math.sin(theta)
    hue = np.linalg.inv(to_yiq) @ np.array([[1.0, 0, 0], [0, c, -s], [0, s, c]]) @ to_yiq
    return hue @ matrix, hue @ offset


def _colour_jitter(video, rng: np.random.Generator, spec: ClipSpec):
    """video (T, 3, H, W) float in [0, 1] -> jittered and clamped to [0, 1]: the plain float
    statement of the jitter (the loader applies the same map in `_colour_uint8`)."""
    import torch

    matrix, offset = _jitter_affine(float(video.mean()), _draw_jitter(rng, spec))
    t, _, h, w = video.shape
    flat = video.permute(1, 0, 2, 3).reshape(3, -1)  # (3, T*H*W)
    out = torch.addmm(torch.tensor(offset, dtype=video.dtype)[:, None],
                      torch.tensor(matrix, dtype=video.dtype), flat)
    return out.reshape(3, t, h, w).permute(1, 0, 2, 3).clamp_(0.0, 1.0)


def _colour_uint8(pixels, jitter: Optional[Jitter] = None):
    """(T, S, S, 3) uint8, contiguous -> (T, S, S, 3) uint8: the colour jitter
    (`_jitter_affine` with the drawn parameters `jitter`, the clamp to [0, 1]) rounded to the
    nearest uint8 level, or `pixels` unchanged when `jitter` is None.

    The rounding adds at most half a level (1/510 in [0, 1], 1/255 in [-1, 1]) to the float
    jitter; rows stay uint8 (4x less to move through Ray's object store) and `video_to_float`
    normalises whole batches in the consumer. The affine map runs frame by frame (a frame's
    floats stay in cache) as a matrix product of k pixels at a time against k copies of the
    3x3 matrix on the diagonal: (N/8, 24) x (24, 24) ran 3-5x faster here than (N, 3) x (3, 3),
    which BLAS handles poorly."""
    import torch

    if jitter is None:
        return pixels
    # the clip's mean in [0, 1] (contrast pivots on it); numpy sums uint8 fastest
    mean = float(pixels.numpy().sum(dtype=np.uint64)) / (255.0 * pixels.numel())
    matrix, offset = _jitter_affine(mean, jitter)
    # on the 0-255 scale; + 0.5 so that the float -> uint8 cast (truncation) rounds to nearest
    weight = torch.tensor(matrix.T, dtype=torch.float32)  # (3 in, 3 out)
    bias = torch.tensor(255.0 * offset + 0.5, dtype=torch.float32)
    per_frame = pixels[0].numel() // 3
    k = next(k for k in (8, 4, 2, 1) if per_frame % k == 0)
    weight, bias = torch.block_diag(*[weight] * k), bias.repeat(k)  # (3k, 3k), (3k,)
    out = torch.empty_like(pixels)
    jittered = torch.empty((per_frame // k, 3 * k), dtype=torch.float32)  # one frame, reused
    for frame, target in zip(pixels, out):
        values = frame.float().view(-1, 3 * k)  # (S*S/k, 3k): k pixels a row
        torch.addmm(bias, values, weight, out=jittered).clamp_(0.0, 255.0)
        target.view(-1, 3 * k).copy_(jittered)  # truncates: jittered + 0.5 -> nearest level
    return out


def video_to_float(video, has_video=None):
    """uint8 video [B, T, H, W, 3] (rows' pixels) -> float32 in [-1, 1], one vectorised pass;
    rows whose `has_video` [B] is 0 become exactly zeros (no uint8 level maps to 0.0)."""
    import torch

    out = video.float().mul_(2.0 / 255.0).sub_(1.0)  # one copy (the cast), then in place
    if has_video is not None:
        # compared in numpy: Ray's batches are read-only arrays, which torch warns about
        missing = torch.from_numpy(np.asarray(has_video) == 0)  # (B,) bool
        if bool(missing.any()):
            out[missing] = 0.0
    return out


@dataclass(frozen=True)
class SpatialDraw:
    """A training view's random crop, flip and colour jitter, drawn from the frame's size alone
    (so a split read without video takes the same draws, and its audio noise after them)."""

    box: tuple[int, int, int, int]  # (top, left, height, width) of the crop
    rescaled: Optional[tuple[int, int]]  # VGG style: (h, w) the frame is resized to first
    flip: bool
    jitter: Optional[Jitter]  # None: no colour jitter


def _draw_spatial(rng: np.random.Generator, h: int, w: int, spec: ClipSpec) -> SpatialDraw:
    """A training view's augmentation of (h, w) frames, drawn from `rng` in the loader's order:
    the crop (Inception's random resized crop, or VGG's scale jitter and crop), the flip, the
    jitter's coin and then its parameters."""
    size, rescaled = spec.frame_size, None
    if spec.crop == CropStyle.vgg.value:  # resize + scale jitter, then a random crop
        scale = rng.uniform(1.0, 1.25) * size / min(h, w)
        nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
        rescaled = (nh, nw)
        box = (int(rng.integers(0, nh - size + 1)), int(rng.integers(0, nw - size + 1)), size,
               size)
    else:
        box = _crop_box(rng, h, w, spec)
    flip = bool(rng.random() < 0.5)
    jitter = _draw_jitter(rng, spec) if rng.random() < spec.jitter_prob else None
    return SpatialDraw(box=box, rescaled=rescaled, flip=flip, jitter=jitter)


def _spatial(frames: np.ndarray, rng: Optional[np.random.Generator], spec: ClipSpec,
             crop: int = 0) -> np.ndarray:
    """(T, h, w, 3) uint8 -> (T, S, S, 3) uint8 (a row's video; `video_to_float` maps it to
    [-1, 1]); `crop` picks one of the evaluation's spec.num_crops square crops, `rng` (training)
    draws the augmentation (`_draw_spatial`).

    Pixels stay uint8 throughout: crop (a view), one uint8 resize to S x S, flip, then colour
    jitter as one float pass at the output size, rounded back to uint8. Equal to the same steps
    in float32 within rounding (tests/test_data_augment.py)."""
    import torch

    video = torch.from_numpy(frames).permute(0, 3, 1, 2)  # (T, 3, h, w) view, channels last
    _, _, h, w = video.shape
    size = spec.frame_size
    jitter = None
    if rng is None:  # evaluation: a square crop of the short side, spread along the long side
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        if spec.num_crops > 1:
            offset_px = int(round(crop * (max(h, w) - side) / (spec.num_crops - 1)))
            top, left = (offset_px, 0) if h > w else (0, offset_px)
        video = video[:, :, top:top + side, left:left + side]
        if side != size:
            video = _resize(video, size)
    else:
        draw = _draw_spatial(rng, h, w, spec)
        top, left, ch, cw = draw.box
        if draw.rescaled is not None:  # VGG style: the whole frame resized, then cropped
            import torch.nn.functional as F

            video = F.interpolate(video.contiguous(memory_format=torch.channels_last),
                                  size=draw.rescaled, mode="bilinear", align_corners=False)
            video = video[:, :, top:top + ch, left:left + cw]
        else:
            video = _resize(video[:, :, top:top + ch, left:left + cw], size)
        if draw.flip:
            video = video.flip(-1)
        jitter = draw.jitter
    pixels = video.permute(0, 2, 3, 1).contiguous()  # (T, S, S, 3) uint8
    return _colour_uint8(pixels, jitter).numpy()


# ---------------------------------------------------------------------------------------------
# row -> model inputs


def _window_starts(num_frames: int, spec: ClipSpec, rng: Optional[np.random.Generator]) -> list[int]:
    last = max(0, num_frames - spec.num_frames)
    if rng is not None:
        return [int(rng.integers(0, last + 1))]
    if spec.num_windows <= 1:
        return [last // 2]
    return [int(round(x)) for x in np.linspace(0, last, spec.num_windows)]


def _audio_window(audio: Optional[np.ndarray], start: int, rng: Optional[np.random.Generator],
                  spec: ClipSpec) -> np.ndarray:
    """The (spec.audio_samples,) float32 audio of the window starting at frame `start` (zeros
    past the clip's end or without audio), plus training's noise (spec.training) from `rng`."""
    wave = np.zeros(spec.audio_samples, dtype=np.float32)
    if audio is not None:
        a0 = int(round(start / spec.fps * spec.sample_rate))
        piece = audio[a0:a0 + spec.audio_samples]
        wave[:len(piece)] = piece
        if spec.training and spec.noise_std > 0:
            peak = float(np.abs(wave).max())
            noise = rng.standard_normal(wave.shape, dtype=np.float32)
            wave += noise * np.float32(spec.noise_std * peak)
            np.clip(wave, -1.0, 1.0, out=wave)
    return wave


def _checked_record(record: dict, spec: ClipSpec) -> dict:
    """A clip record with the numbers the loader uses checked against vatt.data.bounds (fps and
    frame count size the window index, labels index the class list): a DataError naming the
    field, the value, the bound and the clip otherwise."""
    where = f"clip {record.get('clip_id', '?')!r}"
    try:
        fps = bounds.number(record["fps"], "fps", bounds.MIN_FPS, bounds.MAX_FPS, where)
        span = bounds.number(record["end"], "end", 0, bounds.MAX_MEDIA_SECONDS, where) - \
            bounds.number(record["start"], "start", 0, bounds.MAX_MEDIA_SECONDS, where)
        # ingest stores frames round(start * fps) to round(end * fps)
        most = min(bounds.MAX_CLIP_FRAMES, max(1, math.ceil(span * fps) + 1))
        frames = bounds.number(record["num_frames"], "num_frames", 0, most, where, integer=True)
        top = spec.num_classes - 1
        label = bounds.number(record.get("label", -1), "label", -1, top, where, integer=True)
        labels = record.get("labels", [])
        if not isinstance(labels, list):
            raise bounds.OutOfBounds(f"{where}: labels must be a list, got {labels!r}")
        labels = [bounds.number(x, "labels[]", 0, top, where, integer=True) for x in labels]
        fold = bounds.number(record.get("fold", 0), "fold", 0, bounds.MAX_FOLD, where,
                             integer=True)
        captions = record["captions"]
        if not isinstance(captions, list):
            raise bounds.OutOfBounds(f"{where}: captions must be a list, got {captions!r}")
        captions = [bounds.text(c, "captions[]", where) for c in captions]
    except KeyError as err:
        raise DataError(f"{where}: the clip record has no {err}; re-ingest the dataset") from None
    except ValueError as err:
        raise DataError(f"{err} (the clip record is not what vatt ingest writes, or the "
                        "dataset's class list changed): re-ingest the dataset") from None
    return {**record, "fps": fps, "num_frames": frames, "label": label, "labels": labels,
            "fold": fold, "captions": captions}


def decode_clip(row: dict, spec: ClipSpec) -> list[dict]:
    """One stored clip -> one row per window with the model's inputs (schema: module doc)."""
    record = _checked_record(json.loads(row["record"]), spec)
    # a seeded training pass (fine-tuning's epochs) augments each clip reproducibly (+ 1: a
    # clip the manifest lacks is -1, and seeds are non-negative)
    key = None if spec.seed is None else (spec.seed, int(row["clip_index"]) + 1)
    rng = np.random.default_rng(key) if spec.training else None
    fps_ratio = spec.fps / record["fps"]
    audio = None
    if len(row["wav"]):
        audio, rate = decode_wav(row["wav"])
        if rate != spec.sample_rate:
            raise DataError(f"{record['clip_id']}: audio stored at {rate} Hz but data.sample_rate"
                            f" is {spec.sample_rate}; re-ingest with the same data config")
    has_video = len(row["mp4"]) > 0
    # an image (ImageNet: a clip of one stored frame) fills one temporal patch, its frame
    # replicated, in one window: there is no time to spread windows over
    image = has_video and (bool(record.get("image")) or int(record["num_frames"]) == 1)
    num_frames = spec.image_frames if image else spec.num_frames
    if has_video:
        stored = int(record["num_frames"])
        length = max(1, int(stored * fps_ratio))  # frames at data.fps
    else:
        length = int((len(audio) if audio is not None else 0) / spec.sample_rate * spec.fps)
    starts = [0] if image else _window_starts(length, spec, rng)
    frame_size = None  # (h, w) of the stored frames, for a training view's draws without video
    if has_video and not spec.video and rng is not None:
        frame_size = video_size(row["mp4"])  # the container's header: nothing decoded
    if has_video and spec.video:
        # stored frame of each frame at data.fps; only the windows' frames are decoded
        def source(j: int) -> int:
            return min(stored - 1, int(min(j, length - 1) / fps_ratio))

        needed = sorted({source(j) for s in starts for j in range(s, s + num_frames)})
        decoded = decode_video(row["mp4"], needed)  # (len(needed), h, w, 3)
        position = {frame: i for i, frame in enumerate(needed)}

    vocab = _vocabulary(spec.vocab_words)
    captions = list(record["captions"])
    if spec.training and len(captions) > spec.num_captions:
        captions = [captions[i] for i in sorted(rng.choice(len(captions), spec.num_captions,
                                                           replace=False))]
    captions = captions[:spec.num_captions]
    text = np.zeros((spec.num_captions, spec.max_tokens), dtype=np.int64)
    mask = np.zeros(spec.num_captions, dtype=np.float32)
    for i, caption in enumerate(captions):
        text[i] = vocab.encode(caption, spec.max_tokens)
        mask[i] = 1.0

    out = []
    crops = spec.num_crops  # 1 in training (clip_spec)
    views = [(w, start, c) for w, start in enumerate(starts) for c in range(crops)]
    for window, start, crop in views:
        video = None
        if not spec.video:
            if frame_size is not None:
                # the draws the view's crop, flip and jitter would take, so that the audio
                # noise drawn after them is the noise of a read with video
                _draw_spatial(rng, *frame_size, spec)
        elif has_video:
            take = [position[source(j)] for j in range(start, start + num_frames)]
            # one window of distinct frames is the decoded array itself: no copy
            clip = decoded if take == list(range(len(decoded))) else decoded[take]
            video = _spatial(clip, rng, spec, crop)
        else:
            # zeros here; `video_to_float` makes has_video 0 rows exactly 0.0
            video = np.zeros((spec.num_frames, spec.frame_size, spec.frame_size, 3), np.uint8)
        wave = _audio_window(audio, start, rng, spec)
        item = {} if video is None else {"video": video}  # no video column: spec.video False
        item.update({
            "audio": wave, "text": text, "text_mask": mask,
            "label": np.int64(record.get("label", -1)), "fold": np.int64(record.get("fold", 0)),
            "has_video": np.float32(has_video), "has_audio": np.float32(audio is not None),
            "clip_index": np.int64(row["clip_index"]),
            "window": np.int64(window * crops + crop),
            "clip_id": record["clip_id"], "video_id": record["video_id"],
        })
        if spec.multi_label:
            hot = np.zeros(spec.num_classes, dtype=np.float32)
            hot[list(record.get("labels", []))] = 1.0
            item["labels"] = hot
        out.append(item)
    return out


# ---------------------------------------------------------------------------------------------


def clip_spec(cfg: Config, manifest: dict, training: bool, vocab_words: tuple[str, ...],
              num_windows: Optional[int] = None, num_crops: int = 1,
              seed: Optional[int] = None, video: bool = True) -> ClipSpec:
    d = cfg.data
    return ClipSpec(
        num_frames=d.num_frames, fps=d.fps, frame_size=d.frame_size, sample_rate=d.sample_rate,
        audio_samples=d.audio_samples, num_captions=d.num_text_candidates,
        max_tokens=d.max_text_tokens, vocab_words=vocab_words,
        num_classes=len(manifest.get("label_names", [])),
        multi_label=bool(manifest.get("multi_label")), training=training,
        num_windows=1 if training else (num_windows or d.eval_num_windows),
        num_crops=1 if training else num_crops,
        crop=d.crop.value if hasattr(d.crop, "value") else str(d.crop),
        crop_area=tuple(d.crop_area), crop_aspect=tuple(d.crop_aspect),
        jitter_prob=d.color_jitter_prob, brightness=d.brightness, contrast=d.contrast,
        saturation=d.saturation, hue=d.hue, noise_std=d.audio_noise_std,
        image_frames=int(cfg.model.video.patch_size[0]), seed=seed, video=video)


def load_vocab_words(root: str, storage: Optional[StorageConfig] = None) -> tuple[str, ...]:
    uri = _join(root, "vocab.json")
    try:
        words = json.loads(_read_bytes(uri, storage))["words"]
    except DataError:
        raise DataError(f"{uri}: no word vocabulary; `vatt ingest` writes it from the training "
                        "captions of the sources under data.path") from None
    return tuple(words)


def build_dataset(cfg: Config, split: str, training: bool, dataset: str = "synthetic-howto100m",
                  root: Optional[str] = None, num_windows: Optional[int] = None,
                  num_crops: int = 1, vocab_words: Optional[tuple[str, ...]] = None,
                  shard_seed: Optional[int] = None, augment_seed: Optional[int] = None,
                  pass_seeds: Sequence[int] = (), video: bool = True):
    """A `ray.data.Dataset` of model-ready rows (schema: module doc) for one split;
    `num_windows` x `num_crops` rows per clip in evaluation. Captions are encoded with
    `vocab_words` (a run's or a checkpoint's own vocabulary), default the data's vocab.json.
    `shard_seed` reads an evaluation split's shards in that seed's order (a fine-tuning epoch)
    instead of the manifest's (in training: the shard order of a seeded pass); `augment_seed`
    draws a training pass's augmentation from it (the same pass again for the same seed).
    `pass_seeds` (training): the split read once per seed, one pass after the other, each as
    shard_seed = augment_seed = that seed reads it, in one dataset (several fine-tuning epochs
    in one Ray Data execution instead of one each); its rows carry their pass's `pass_seed`.
    `video=False` (a split only audio-only tasks read): rows without the video column, no frame
    decoded, every other column (the audio's training noise too) as with video."""
    import ray

    root = str(root or cfg.data.path)
    manifest = read_manifest(root, dataset, cfg.storage)
    if split not in manifest["splits"]:
        raise DataError(f"{_join(root, dataset, 'manifest.json')}: no split {split!r}; this "
                        f"dataset has {sorted(manifest['splits'])}")
    shards = manifest["splits"][split]["shards"]
    index = {c["clip_id"]: i for i, c in enumerate(manifest["clips"])}
    wanted = set(shards)
    checksums, shard_clips = {}, {}
    for clip in manifest["clips"]:
        if clip.get("shard") in wanted:
            # every clip of the split is verified; one without checksums cannot be
            checksums[clip["clip_id"]] = clip.get("sha256") or {}
            shard_clips.setdefault(clip["shard"], []).append(clip["clip_id"])
    if num_crops < 1:
        raise ValueError(f"num_crops={num_crops}: evaluation needs at least one crop per window")
    words = tuple(vocab_words) if vocab_words is not None else load_vocab_words(root, cfg.storage)
    spec = clip_spec(cfg, manifest, training, words, num_windows, num_crops, augment_seed,
                     video=video)
    read = partial(_read_shard, root=root, dataset=dataset, clip_index=index,
                   storage=cfg.storage, checksums=checksums, shard_clips=shard_clips)
    if pass_seeds:
        if not training:
            raise ValueError("pass_seeds: seeded passes are training passes (training=True)")
        items = [{"shard": shard, "pass_seed": int(seed)}
                 for seed in pass_seeds for shard in shard_order(shards, seed)]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        return ds.flat_map(partial(_read_pass_shard, read=read)).flat_map(
            partial(_decode_pass_clip, spec=spec))
    ds = ray.data.from_items([{"shard": s} for s in shards], override_num_blocks=len(shards))
    if training or shard_seed is not None:
        ds = ds.randomize_block_order(seed=shard_seed)
    ds = ds.flat_map(read)
    return ds.flat_map(partial(decode_clip, spec=spec))


def shard_order(shards: Sequence[str], seed: int) -> list[str]:
    """The shards in the order `randomize_block_order(seed=seed)` gives a dataset of one block
    per shard (Ray Data shuffles the blocks with numpy's default_rng(seed)): a seeded pass's
    order, computed here so that several passes can be read as one dataset. The test of
    `pass_seeds` checks it against Ray's."""
    order = list(shards)
    np.random.default_rng(seed).shuffle(order)
    return order


def _read_pass_shard(row: dict, read: Any) -> list[dict]:
    """The clips of one shard of a seeded pass (`read`: `_read_shard` bound to its split),
    each carrying the pass's seed."""
    return [{**clip, "pass_seed": row["pass_seed"]} for clip in read(row)]


def _decode_pass_clip(row: dict, spec: ClipSpec) -> list[dict]:
    """`decode_clip` with the augmentation of the row's pass; each window keeps `pass_seed`."""
    seed = int(row["pass_seed"])
    return [{**window, "pass_seed": seed}
            for window in decode_clip(row, dataclasses.replace(spec, seed=seed))]


def _collate(batch: dict[str, np.ndarray]) -> dict[str, Any]:
    """Ray batch (numpy) -> torch tensors (strings as lists); the uint8 video becomes float32
    in [-1, 1] here, over the whole batch (schema: module doc)."""
    import torch

    out: dict[str, Any] = {}
    for name, values in batch.items():
        if name in STRING_COLUMNS:
            out[name] = [str(v) for v in values]
        else:
            out[name] = torch.from_numpy(np.require(values, requirements=["C", "W"]))
    if "video" in out:
        out["video"] = video_to_float(out["video"], out.get("has_video"))
    return out


def torch_batches(source, batch_size: int, training: bool, shuffle_buffer: int = 256,
                  prefetch_batches: int = 2) -> Iterator[dict[str, Any]]:
    """Batches as torch tensors (strings as lists) from a Dataset or a Ray Train dataset shard
    (`ray.train.get_dataset_shard(...)`): training shuffles locally and drops the last partial
    batch, evaluation keeps the order and every row."""
    return source.iter_torch_batches(
        batch_size=batch_size, collate_fn=_collate, prefetch_batches=prefetch_batches,
        drop_last=training, local_shuffle_buffer_size=shuffle_buffer if training else None)


__all__ = ["build_dataset", "shard_order", "torch_batches", "decode_clip", "video_to_float", "read_manifest",
           "manifest_sha256", "clip_spec", "load_vocab_words", "DataError", "ClipSpec"]
