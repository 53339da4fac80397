"""Ray Data loader on a small ingested folder (local Ray, 2 CPUs): the batch contract, aligned
windows, deterministic evaluation windows, training-only augmentation, audio-only and
multi-label sources."""

import json
import tarfile

import numpy as np
import pytest
import ray
import torch

from vatt.config import load_config
from vatt.data.ingest import ingest
from vatt.data.loader import (DataError, _spatial, build_dataset, clip_spec, torch_batches,
                              video_to_float)
from vatt.data.media import decode_video, decode_wav
from vatt.data.synthetic import RATE, write_video, write_wav
from vatt.text import Vocabulary



def _frames(seconds, seed=0):
    rng = np.random.default_rng(seed)
    n = int(seconds * 10)
    frames = rng.integers(0, 60, (n, 96, 128, 3)).astype(np.uint8)
    for k in range(n):  # a bar moving right over noise
        frames[k, :, (4 * k) % 128:(4 * k) % 128 + 8] = 255
    return frames


def _audio(seconds):
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)

OVERRIDES = ["data.ingest.num_workers=1", "data.ingest.media_per_shard=1"]


@pytest.fixture(scope="module")
def ray_local():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("loader")
    cfg = load_config("tiny", OVERRIDES)
    howto = root / "raw" / "howto"
    (howto / "videos").mkdir(parents=True)
    t = np.arange(int(7.0 * RATE)) / RATE
    chirp = (0.5 * np.sin(2 * np.pi * 200 * t) * (t % 1.0 < 0.1)).astype(np.float32)  # 1 Hz ticks
    write_video(howto / "videos" / "v1.mp4", _frames(7.0), chirp)
    write_video(howto / "videos" / "v2.mp4", _frames(3.4, seed=1), _audio(3.4))
    captions = {"v1": {"start": [0, 1, 2, 3, 4, 5, 6], "end": [1, 2, 3, 4, 5, 6, 7],
                       "text": [f"a red ball number {i}" for i in range(7)]},
                "v2": {"start": [0.5], "end": [2.0], "text": ["the blue box spins"]}}
    (howto / "caption.json").write_text(json.dumps(captions))
    ingest(cfg, "howto100m", str(howto), root / "data", progress=False)

    esc = root / "raw" / "esc"
    (esc / "audio").mkdir(parents=True)
    (esc / "meta").mkdir()
    write_wav(esc / "audio" / "5-1-A-1.wav", _audio(5.0))
    (esc / "meta" / "esc50.csv").write_text(
        "filename,fold,target,category,esc10,src_file,take\n5-1-A-1.wav,5,1,bell,False,1,A\n")
    ingest(cfg, "esc50", str(esc), root / "data", progress=False)

    aset = root / "raw" / "aset"
    aset.mkdir()
    write_video(aset / "Yabc.mp4", _frames(2.0), _audio(2.0))
    (aset / "class_labels_indices.csv").write_text("index,mid,display_name\n0,/m/a,A\n1,/m/b,B\n"
                                                   "2,/m/c,C\n")
    (aset / "eval_segments.csv").write_text('abc, 0.000, 10.000, "/m/a,/m/c"\n')
    ingest(cfg, "audioset", str(aset), root / "data", progress=False)
    return root / "data"


def _cfg(root, *extra):
    return load_config("tiny", [f"data.path={root}", *OVERRIDES, *extra])


def _collect(ds, batch_size, training):
    return list(torch_batches(ds, batch_size, training))


def test_training_batches_follow_the_contract(ray_local, data_root):
    cfg = _cfg(data_root)
    ds = build_dataset(cfg, "train", training=True, dataset="howto100m")
    assert len(_collect(ds, 2, True)) == 1  # 3 clips (v1: 2 x 3.2 s, v2: 1); partial dropped
    batches = _collect(ds, 3, True)
    b = batches[0]
    assert b["video"].shape == (3, 8, 64, 64, 3) and b["video"].dtype == torch.float32
    assert b["audio"].shape == (3, 12800) and b["audio"].dtype == torch.float32
    assert b["text"].shape == (3, 5, 16) and b["text"].dtype == torch.int64
    assert b["text_mask"].shape == (3, 5) and b["label"].dtype == torch.int64
    assert -1.0 <= b["video"].min() and b["video"].max() <= 1.0
    assert b["audio"].abs().max() <= 1.0
    assert isinstance(b["clip_id"], list) and isinstance(b["video_id"][0], str)
    vocab = Vocabulary.load(data_root / "vocab.json")
    rows = [(cid, text, mask) for batch in batches
            for cid, text, mask in zip(batch["clip_id"], batch["text"], batch["text_mask"])]
    for cid, text, mask in rows:
        if cid == "howto100m/v2_0000":  # one narration: one real candidate, four masked
            assert mask.tolist() == [1, 0, 0, 0, 0]
            assert text[0].tolist() == vocab.encode("the blue box spins", 16)
            assert text[1:].abs().sum() == 0
        else:
            assert mask.sum() == 5


def test_eval_windows_are_deterministic_and_aligned(ray_local, data_root):
    cfg = _cfg(data_root, "data.eval_num_windows=3")
    ds = build_dataset(cfg, "train", training=False, dataset="howto100m")
    first, second = _collect(ds, 4, False), _collect(ds, 4, False)
    assert sum(len(b["window"]) for b in first) == 3 * 3  # every clip, every window
    def by_window(batches):  # row order across blocks is not fixed; contents are
        return {(cid, int(w)): (v, a) for batch in batches for cid, w, v, a in
                zip(batch["clip_id"], batch["window"], batch["video"], batch["audio"])}

    rows, again = by_window(first), by_window(second)
    assert rows.keys() == again.keys()
    for key, (video, audio) in rows.items():
        assert torch.equal(video, again[key][0]) and torch.equal(audio, again[key][1])
    manifest = json.loads((data_root / "howto100m" / "manifest.json").read_text())
    clip = [c for c in manifest["clips"] if c["clip_id"] == "howto100m/v1_0001"][0]
    with tarfile.open(data_root / "howto100m" / clip["shard"]) as tar:
        frames = decode_video(tar.extractfile("v1_0001.mp4").read())  # (16, 64, 80, 3)
        audio, _ = decode_wav(tar.extractfile("v1_0001.wav").read())
    # windows start at frames 0, 4 and 8 of 16; the audio covers the same 1.6 s
    for window, start in enumerate((0, 4, 8)):
        video, wave = rows[("howto100m/v1_0001", window)]
        expect = frames[start:start + 8, :, 8:72].astype(np.float32) / 127.5 - 1.0
        np.testing.assert_allclose(video.numpy(), expect, atol=1e-5)
        a0 = start * 8000 // 5
        np.testing.assert_allclose(wave.numpy(), audio[a0:a0 + 12800], atol=1e-6)


def test_eval_crops_spread_along_the_long_side():
    cfg = load_config("tiny")
    manifest = {"label_names": [], "multi_label": False}
    frames = np.random.default_rng(0).integers(0, 255, (8, 64, 86, 3), dtype=np.uint8)
    three = clip_spec(cfg, manifest, False, ("<pad>", "<unk>"), num_crops=3)
    assert three.num_crops == 3
    # rows hold uint8 pixels: an evaluation crop at the output size is the stored pixels
    for crop, left in enumerate((0, 11, 22)):  # left, centre ((86 - 64) // 2), right
        view = _spatial(frames, None, three, crop)
        assert view.dtype == np.uint8 and np.array_equal(view, frames[:, :, left:left + 64])
    one = clip_spec(cfg, manifest, False, ("<pad>", "<unk>"))
    assert np.array_equal(_spatial(frames, None, one), _spatial(frames, None, three, 1))
    tall = np.ascontiguousarray(frames.transpose(0, 2, 1, 3))  # portrait: crops go top to bottom
    assert np.array_equal(_spatial(tall, None, three, 2), tall[:, 22:86])
    assert clip_spec(cfg, manifest, True, ("<pad>", "<unk>"), num_crops=3).num_crops == 1


def test_eval_views_are_windows_times_crops(ray_local, data_root):
    cfg = _cfg(data_root, "data.eval_num_windows=2")
    def views(num_crops):
        ds = build_dataset(cfg, "train", training=False, dataset="howto100m", num_crops=num_crops)
        return {(cid, int(w)): v for batch in _collect(ds, 4, False)
                for cid, w, v in zip(batch["clip_id"], batch["window"], batch["video"])}

    one, three = views(1), views(3)
    assert len(three) == 3 * len(one)
    for (cid, window), video in one.items():  # view w x 3 + 1 is window w's centre crop
        assert torch.equal(three[(cid, window * 3 + 1)], video)
        assert not torch.equal(three[(cid, window * 3)], video)
    with pytest.raises(ValueError, match="num_crops=0"):
        build_dataset(cfg, "train", training=False, dataset="howto100m", num_crops=0)


def test_augmentation_only_in_training():
    cfg = load_config("tiny", ["data.color_jitter_prob=1.0"])
    manifest = {"label_names": [], "multi_label": False}
    frames = np.random.default_rng(0).integers(0, 255, (8, 64, 86, 3), dtype=np.uint8)
    train = clip_spec(cfg, manifest, True, ("<pad>", "<unk>"))
    evaluation = clip_spec(cfg, manifest, False, ("<pad>", "<unk>"))
    centre = _spatial(frames, None, evaluation)
    assert centre.shape == (8, 64, 64, 3)
    a = _spatial(frames, np.random.default_rng(1), train)
    b = _spatial(frames, np.random.default_rng(2), train)
    assert a.shape == centre.shape and a.dtype == centre.dtype == np.uint8
    assert not np.allclose(a, b) and not np.allclose(a, centre)
    # the same crop for every frame: a static video stays static after augmentation
    still = np.repeat(frames[:1], 8, axis=0)
    out = _spatial(still, np.random.default_rng(3), train)
    assert np.allclose(out, out[:1])


def test_uint8_video_becomes_float_in_minus_one_one_and_audio_only_rows_zeros():
    video = torch.zeros(3, 2, 4, 4, 3, dtype=torch.uint8)  # (B, T, H, W, 3)
    video[0], video[1, :, :2] = 255, 128
    out = video_to_float(video, torch.tensor([1.0, 1.0, 0.0]))
    assert out.dtype == torch.float32 and out.shape == video.shape
    assert torch.equal(out[0], torch.ones_like(out[0]))
    assert torch.allclose(out[1, :, :2], torch.full_like(out[1, :, :2], 128 / 127.5 - 1),
                          atol=1e-6)
    assert torch.equal(out[1, :, 2:], -torch.ones_like(out[1, :, 2:]))
    assert torch.equal(out[2], torch.zeros_like(out[2]))  # has_video 0: exactly zeros
    assert video_to_float(video).min() == -1.0  # without has_video: every row converted


def test_audio_only_and_multi_label_sources(ray_local, data_root):
    cfg = _cfg(data_root, "data.eval_num_windows=1")
    [esc] = _collect(build_dataset(cfg, "test", False, dataset="esc50"), 4, False)
    assert esc["has_video"].tolist() == [0.0] and esc["video"].abs().sum() == 0
    assert esc["label"].tolist() == [1] and esc["text_mask"].sum() == 0
    assert esc["fold"].tolist() == [5]  # the clip's ESC-50 fold, for fold-averaged probes
    assert esc["audio"].abs().max() > 0.2
    [aset] = _collect(build_dataset(cfg, "test", False, dataset="audioset"), 4, False)
    assert aset["labels"].tolist() == [[1.0, 0.0, 1.0]] and aset["label"].tolist() == [-1]


def test_missing_split_and_folder_name_the_problem(data_root, tmp_path):
    with pytest.raises(DataError, match="no split 'val'.*'train'"):
        build_dataset(_cfg(data_root), "val", False, dataset="howto100m")
    with pytest.raises(DataError, match="manifest.json: no such file; run `vatt ingest`"):
        build_dataset(_cfg(tmp_path), "train", True, dataset="howto100m")


def test_fused_colour_jitter_equals_the_four_steps_in_order():
    from vatt.data.loader import _colour_jitter

    spec = clip_spec(load_config("tiny"), {"label_names": []}, True, ("<pad>", "<unk>"))
    video = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.6 + 0.2
    fused = _colour_jitter(video, np.random.default_rng(7), spec)
    rng = np.random.default_rng(7)
    delta, contrast, saturation, hue = (rng.uniform(-spec.brightness, spec.brightness),
                                        rng.uniform(1 - spec.contrast, 1 + spec.contrast),
                                        rng.uniform(1 - spec.saturation, 1 + spec.saturation),
                                        rng.uniform(-spec.hue, spec.hue))
    x = video.double() + delta
    x = (x - x.mean()) * contrast + x.mean()
    gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
    x = (x - gray) * saturation + gray
    yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]],
                       dtype=torch.float64)
    c, s = np.cos(2 * np.pi * hue), np.sin(2 * np.pi * hue)
    rot = torch.tensor([[1.0, 0, 0], [0, c, -s], [0, s, c]], dtype=torch.float64)
    x = torch.einsum("ij,tjhw->tihw", torch.linalg.inv(yiq) @ rot @ yiq, x).clamp(0, 1)
    torch.testing.assert_close(fused, x.float(), atol=1e-5, rtol=0)


def test_shards_are_checked_against_the_manifest(data_root, tmp_path):
    """A shard member with a path, or bytes that differ from the manifest's checksum, is an
    error naming the shard (not a clip trained on)."""
    import io
    import shutil
    import tarfile

    from vatt.data.loader import DataError, _read_shard, read_manifest

    data = tmp_path / "data"
    shutil.copytree(data_root / "howto100m", data / "howto100m")
    manifest = read_manifest(str(data), "howto100m")
    index = {c["clip_id"]: i for i, c in enumerate(manifest["clips"])}
    checksums = {c["clip_id"]: c["sha256"] for c in manifest["clips"]}
    shard = manifest["splits"]["train"]["shards"][0]
    assert _read_shard({"shard": shard}, str(data), "howto100m", index, checksums)  # as ingested

    path = data / "howto100m" / shard
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]

    def rewrite(changed):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for member, payload in changed:
                member.size = len(payload)
                tar.addfile(member, io.BytesIO(payload))
        path.write_bytes(buffer.getvalue())

    wav = next(i for i, (m, _) in enumerate(members) if m.name.endswith(".wav"))
    tampered = list(members)
    tampered[wav] = (members[wav][0], members[wav][1][:-4] + b"\x00\x01\x02\x03")
    rewrite(tampered)
    with pytest.raises(DataError, match=r"\.wav does not match the manifest's sha256"):
        _read_shard({"shard": shard}, str(data), "howto100m", index, checksums)

    escaping = tarfile.TarInfo("../../outside.json")
    rewrite([*members, (escaping, b"{}")])
    with pytest.raises(DataError, match=r"member '\.\./\.\./outside\.json' is not a clip file"):
        _read_shard({"shard": shard}, str(data), "howto100m", index, checksums)
    assert not (tmp_path / "outside.json").exists()


def _same_columns(with_video, without, video_columns=("video",)):
    """Rows read without video equal those read with it in every column but `video_columns`."""
    assert len(without) == len(with_video)
    for a, b in zip(with_video, without):
        assert set(b) == set(a) - set(video_columns)
        for name, value in b.items():
            assert np.array_equal(np.asarray(value), np.asarray(a[name])), name


@pytest.mark.parametrize("crop", ["inception", "vgg"])
def test_a_split_read_without_video_decodes_none_and_keeps_every_other_column(
        data_root, monkeypatch, crop):
    """`video=False` (a split only audio-only tasks read): no frame is decoded (a counting
    wrapper around the real `decode_video`) and every other column of every row, the seeded
    training pass's audio noise (drawn after the crop, flip and jitter) included, equals the
    row read with video."""
    import dataclasses

    from vatt.data import loader

    cfg = _cfg(data_root, f"data.crop={crop}", "data.color_jitter_prob=0.5",
               "data.audio_noise_std=0.1", "data.eval_num_windows=2")
    manifest = loader.read_manifest(str(data_root), "howto100m")
    index = {c["clip_id"]: i for i, c in enumerate(manifest["clips"])}
    clips = [clip for shard in manifest["splits"]["train"]["shards"]
             for clip in loader._read_shard({"shard": shard}, str(data_root), "howto100m", index)]
    words = loader.load_vocab_words(str(data_root))
    calls = []
    real = loader.decode_video

    def counting(*args, **kwargs):
        calls.append(args[1:])
        return real(*args, **kwargs)

    monkeypatch.setattr(loader, "decode_video", counting)
    for training, seed in ((True, 3), (True, 4), (True, 5), (False, None)):
        spec = clip_spec(cfg, manifest, training, words, seed=seed)
        with_video = [row for clip in clips for row in loader.decode_clip(clip, spec)]
        assert len(calls) == len(clips) and all("video" in row for row in with_video)
        calls.clear()
        without = [row for clip in clips
                   for row in loader.decode_clip(clip, dataclasses.replace(spec, video=False))]
        assert calls == []  # nothing decoded
        _same_columns(with_video, without)
        assert all(row["has_video"] == 1.0 for row in without)  # the clips still have video
    noisy = loader.decode_clip(clips[0], clip_spec(cfg, manifest, True, words, seed=3))[0]["audio"]
    quiet = loader.decode_clip(clips[0], clip_spec(cfg, manifest, False, words))[0]["audio"]
    assert not np.array_equal(noisy, quiet)  # something to compare: training drew noise


def test_evaluation_decodes_video_only_where_a_task_of_the_split_reads_it(
        ray_local, data_root, monkeypatch):
    """An evaluation split whose tasks read only audio is read with `video=False` (recorded by
    a wrapper around the real `build_dataset`), one shared with a video task (its columns hold
    video) with video; both give the same audio, labels and places in seeded training passes
    (fine-tuning's epochs, through Ray Data; evaluation windows: the test above)."""
    from vatt.data import loader
    from vatt.evaluate.data import EvalSplit

    cfg = _cfg(data_root, "data.eval_num_windows=2", "data.audio_noise_std=0.1")
    manifest = loader.read_manifest(str(data_root), "howto100m")
    asked = []
    real = loader.build_dataset

    def recording(*args, **kwargs):
        asked.append(kwargs["video"])
        return real(*args, **kwargs)

    monkeypatch.setattr(loader, "build_dataset", recording)

    def rows(columns):
        split = EvalSplit(cfg, "howto100m", "train", columns, 2, 1, 2, None, manifest,
                          training=True)
        return [{k: v[i] for k, v in batch.items()}
                for batch in split.passes((1, 2)) for i in range(len(batch["clip_id"]))]

    audio_only, shared = rows(["audio"]), rows(["audio", "video"])
    assert asked == [False, True]
    assert all("video" in row for row in shared)
    # a training split with video also carries has_video (its uint8 zeros rows)
    _same_columns(shared, audio_only, ("video", "has_video"))
