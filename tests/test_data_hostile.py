"""Hostile input for each of the nine published-layout readers: paths that climb out of --path
('..', absolute, symlinks), rows that are not UTF-8 or are huge, numbers out of range, keys
given twice. Each bad item is named in the ingest's report with its reason, or the run stops
with a clear error; nothing outside --path is opened (the kernel's inotify record, so opens by
FFmpeg and Pillow count too); the raw input is unchanged. Then the shards those ingests wrote
are tampered with (a member added, a member changed, a clip removed, a crafted fps, an old
manifest) and the loader refuses each with a message naming what is wrong.

The datasets are a few 1 s clips, written here with the generator's PyAV writer."""

from __future__ import annotations

import ctypes
import errno
import hashlib
import io
import json
import os
import re
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vatt.config import load_config
from vatt.data.ingest import IngestError, ingest
from vatt.data.loader import DataError, _read_shard, clip_spec, decode_clip
from vatt.data.sources import READERS
from vatt.data.synthetic import HEIGHT, RATE, WIDTH, write_video, write_wav
from helpers import tree_digest

OVERRIDES = ["data.ingest.num_workers=1", "data.ingest.media_per_shard=4",
             "data.ingest.max_bad_fraction=1.0"]
NOT_UTF8 = b"\xff\xfe\xfa not utf-8"
HUGE = "x" * (1 << 17)  # twice the longest row a list may have (bounds.MAX_ROW_BYTES)


@pytest.fixture
def cfg():
    return load_config("tiny", OVERRIDES)


def _video(path: Path, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(RATE) / RATE
    write_video(path, rng.integers(0, 255, (10, HEIGHT, WIDTH, 3)).astype(np.uint8),
                (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32))


def _wav(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_wav(path, (0.3 * np.sin(2 * np.pi * 440 * np.arange(RATE) / RATE)).astype(np.float32))


def _jpeg(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (96, 64), (200, 40, 40)).save(path, "JPEG")


def _link(link: Path, target: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)


def _lines(path: Path, *rows: str | bytes) -> None:
    """A list file whose rows are text, or raw bytes (not UTF-8)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join((r if isinstance(r, bytes) else r.encode()) + b"\n" for r in rows))


def _outside(tmp: Path) -> Path:
    """Media beside the source folder that hostile rows point at: none may be opened."""
    out = tmp / "outside"
    _video(out / "secret.mp4", seed=9)
    _wav(out / "secret.wav")
    _jpeg(out / "secret.JPEG")
    _jpeg(out / "n01443537" / "stolen.JPEG")  # a class folder a symlink leads to
    return out


# ---------------------------------------------------------------------------------------------
# the nine layouts, each with its hostile rows: (source folder, {report item: reason part},
# clips the good rows give)


def _howto100m(src: Path, out: Path):
    _video(src / "videos" / "good.mp4")
    _link(src / "videos" / "link.mp4", out / "secret.mp4")
    ok = '{"start": [0.0], "end": [1.0], "text": ["a ball"]}'
    (src / "caption.json").write_text(
        "{" + f'"good": {ok}, "../outside/secret": {ok}, "/abs/secret": {ok}, "link": {ok}, '
        '"far": {"start": [0.0], "end": [1e12], "text": ["x"]}, '
        '"nan": {"start": [NaN], "end": [1.0], "text": ["x"]}, '
        f'"huge": {{"start": [0.0], "end": [1.0], "text": ["{HUGE}"]}}, '
        '"twice": {"start": [0.0], "start": [0.5], "end": [1.0], "text": ["x"]}, '
        f'"dup": {ok}, "dup": {ok}' + "}")
    w = "caption.json"
    return src, {f"{w}['../outside/secret']": "is not a file name",
                 f"{w}['/abs/secret']": "is not a file name",
                 f"{w}['link']": "leads outside --path",
                 f"{w}['far']": "end=1000000000000.0 is outside [0, 86400]",
                 f"{w}['nan']": "start=nan is outside [0, 86400]",
                 f"{w}['huge']": "characters, more than the 10000",
                 f"{w}['twice']": "key 'start' appears more than once",
                 f"{w}['dup']": "appears more than once in caption.json"}, 1


def _kinetics(src: Path, out: Path):
    _video(src / "train" / "good_000000_000001.mp4")
    _link(src / "train" / "link_000000_000001.mp4", out / "secret.mp4")
    _lines(src / "train.csv", "label,youtube_id,time_start,time_end,split",
           "run,good,0,1,train", "run,../outside/secret,0,1,train", "run,/abs/x,0,1,train",
           "run,link,0,1,train", "run,far,0,1e12,train", "run,inf,inf,1,train",
           "run,good,0,1,train", NOT_UTF8, f"run,{HUGE},0,1,train")
    return src, {"train.csv:3": "is not a file name", "train.csv:4": "is not a file name",
                 "train.csv:5": "leads outside --path",
                 "train.csv:6": "time_end='1e12' is outside [0, 86400]",
                 "train.csv:7": "time_start='inf' is outside",
                 "train.csv:8": "duplicate: clip 'good_000000_000001' is already at train.csv:2",
                 "train.csv:9": "not UTF-8", "train.csv:10": "more than the 65536"}, 1


def _ucf101(src: Path, out: Path):
    _video(src / "UCF-101" / "Jump" / "v_Jump_g01_c01.avi")
    _video(src / "UCF-101" / "Jump" / "v_Jump_g03_c01.avi", seed=1)
    _link(src / "UCF-101" / "Jump" / "v_Jump_g02_c01.avi", out / "secret.mp4")
    lists = src / "ucfTrainTestlist"
    _lines(lists / "classInd.txt", "1 Jump")
    _lines(lists / "trainlist01.txt", "Jump/v_Jump_g01_c01.avi 1",
           "Jump/../../../outside/secret.mp4 1", "/abs/Jump/v_Jump_g01_c01.avi 1",
           "Jump/v_Jump_g02_c01.avi 1", "Jump/v_Jump_g01_c01.avi 1", NOT_UTF8,
           f"Jump/{HUGE}.avi 1", "Jump/v_Jump_g03_c01.avi x9")
    _lines(lists / "testlist01.txt", "Jump/v_Jump_g03_c01.avi")
    t = "ucfTrainTestlist/trainlist01.txt"
    return src, {f"{t}:2": "has a '..' component", f"{t}:3": "is absolute",
                 f"{t}:4": "leads outside --path", f"{t}:5": "duplicate: video",
                 f"{t}:6": "not UTF-8", f"{t}:7": "more than the 65536",
                 f"{t}:8": "malformed row"}, 2


def _esc50(src: Path, out: Path):
    for name in ("1-1-A-0.wav", "x.1.wav", "x_1.wav"):
        _wav(src / "audio" / name)
    _link(src / "audio" / "link.wav", out / "secret.wav")
    _lines(src / "meta" / "esc50.csv", "filename,fold,target,category,esc10,src_file,take",
           "1-1-A-0.wav,1,0,dog,True,1,A", "../outside/secret.wav,1,0,dog,True,1,A",
           "/abs/x.wav,1,0,dog,True,1,A", "link.wav,1,0,dog,True,1,A",
           "1-2-A-0.wav,99,0,dog,True,1,A", "1-3-A-0.wav,1,1e9,dog,True,1,A",
           "1-4-A-0.wav,1,-1,dog,True,1,A", "1-5-A-0.wav,1,0,cat,True,1,A",
           "1-1-A-0.wav,1,0,dog,True,1,A", NOT_UTF8, f"{HUGE}.wav,1,0,dog,True,1,A",
           "x.1.wav,2,0,dog,True,1,A", "x_1.wav,2,0,dog,True,1,A")
    m = "meta/esc50.csv"
    return src, {f"{m}:3": "is not a file name", f"{m}:4": "is not a file name",
                 f"{m}:5": "leads outside --path", f"{m}:6": "fold='99' is outside [1, 10]",
                 f"{m}:7": "target='1e9' is outside [0, 99999]",
                 f"{m}:8": "target='-1' is outside", f"{m}:9": "is category 'dog'",
                 f"{m}:10": "duplicate: file '1-1-A-0.wav'", f"{m}:11": "not UTF-8",
                 f"{m}:12": "more than the 65536",
                 "audio/x_1.wav": "gives the clip key 'x_1' that audio/x.1.wav has"}, 2


def _msrvtt(src: Path, out: Path):
    _video(src / "videos" / "video0.mp4")
    _link(src / "videos" / "link.mp4", out / "secret.mp4")
    videos = [{"video_id": v, "split": "train"} for v in
              ("video0", "../outside/secret", "/abs/x", "link", "video0")]
    sentences = [{"video_id": "video0", "caption": "a man sings"},
                 {"video_id": "video0", "caption": HUGE}]
    body = json.dumps({"videos": videos, "sentences": sentences})
    twice = '{"video_id": "video7", "video_id": "video0", "split": "train"}'
    (src / "MSRVTT_data.json").write_text(body.replace("}], ", f"}}, {twice}], ", 1))
    w = "MSRVTT_data.json"
    return src, {f"{w}:videos[1]": "is not a file name", f"{w}:videos[2]": "is not a file name",
                 f"{w}:videos[3]": "leads outside --path",
                 f"{w}:videos[4]": "duplicate: video_id 'video0'",
                 f"{w}:videos[5]": "key 'video_id' appears more than once",
                 f"{w}:sentences[1]": "characters, more than the 10000"}, 1


def _youcook2(src: Path, out: Path):
    _video(src / "raw_videos" / "training" / "101" / "yc0.mp4")
    _link(src / "raw_videos" / "training" / "101" / "link.mp4", out / "secret.mp4")

    def entry(segment, sentence="cut it"):
        return {"subset": "training", "recipe_type": "101",
                "annotations": [{"segment": segment, "sentence": sentence}]}

    db = {"yc0": entry([0, 1]), "../outside/secret": entry([0, 1]), "/abs/x": entry([0, 1]),
          "link": entry([0, 1]), "far": entry([0, 1e12]), "back": entry([1, 0.5]),
          "huge": entry([0, 1], HUGE)}
    body = json.dumps({"database": db})
    twice = json.dumps(entry([0, 1]))
    (src / "youcookii_annotations_trainval.json").write_text(
        body[:-2] + f', "dup": {twice}, "dup": {twice}}}}}')
    w = "youcookii_annotations_trainval.json"
    return src, {f"{w}['../outside/secret']": "is not a file name",
                 f"{w}['/abs/x']": "is not a file name", f"{w}['link']": "leads outside --path",
                 f"{w}['far']": "segment[1]=1000000000000.0 is outside",
                 f"{w}['back']": "segment[1]=0.5 is before segment[0]=1",
                 f"{w}['huge']": "characters, more than the 10000",
                 f"{w}['dup']": "appears more than once"}, 1


def _audioset(src: Path, out: Path):
    _wav(src / "audio" / "good_0.000.wav")
    _link(src / "audio" / "link_0.000.wav", out / "secret.wav")
    _lines(src / "class_labels_indices.csv", "index,mid,display_name", "0,/m/a,Speech")
    _lines(src / "balanced_train_segments.csv", "# YTID, start_seconds, end_seconds, labels",
           'good, 0.000, 10.000, "/m/a"', '../outside/secret, 0.000, 10.000, "/m/a"',
           '/abs/x, 0.000, 10.000, "/m/a"', 'link, 0.000, 10.000, "/m/a"',
           'far, 0.000, 1e12, "/m/a"', 'nan, nan, 10.000, "/m/a"', 'good, 0.000, 10.000, "/m/a"',
           NOT_UTF8, f'{HUGE}, 0.000, 10.000, "/m/a"')
    b = "balanced_train_segments.csv"
    return src, {f"{b}:3": "is not a file name", f"{b}:4": "is not a file name",
                 f"{b}:5": "leads outside --path",
                 f"{b}:6": "end_seconds='1e12' is outside [0, 86400]",
                 f"{b}:7": "start_seconds='nan' is outside", f"{b}:8": "duplicate: segment 'good'",
                 f"{b}:9": "not UTF-8", f"{b}:10": "more than the 65536"}, 1


def _mit(src: Path, out: Path):
    base = src / "Moments_in_Time_Raw"
    _video(base / "training" / "clapping" / "good.mp4")
    _link(base / "training" / "clapping" / "link.mp4", out / "secret.mp4")
    _lines(base / "moments_categories.txt", "clapping,0")
    _lines(base / "trainingSet.csv", "clapping/good.mp4,clapping,3,0",
           "clapping/../../../outside/secret.mp4,clapping,3,0",  # the example, deeper
           f"{out / 'secret.mp4'},clapping,3,0", "clapping/link.mp4,clapping,3,0",
           "clapping/good.mp4,clapping,99999,0", "clapping/good.mp4,clapping,3,0", NOT_UTF8,
           f"clapping/{HUGE}.mp4,clapping,3,0")
    _lines(base / "validationSet.csv")
    t = "Moments_in_Time_Raw/trainingSet.csv"
    return src, {f"{t}:2": "has a '..' component", f"{t}:3": "is absolute",
                 f"{t}:4": "leads outside --path", f"{t}:5": "agreement='99999' is outside",
                 f"{t}:6": "duplicate: video", f"{t}:7": "not UTF-8",
                 f"{t}:8": "more than the 65536"}, 1


def _imagenet(src: Path, out: Path):
    _lines(src / "LOC_synset_mapping.txt", "n01440764 tench, Tinca tinca",
           "n01443537 goldfish, Carassius auratus")
    data = src / "ILSVRC" / "Data" / "CLS-LOC"
    _jpeg(data / "train" / "n01440764" / "n01440764_1.JPEG")
    _link(data / "train" / "n01440764" / "n01440764_2.JPEG", out / "secret.JPEG")
    _link(data / "train" / "n01443537", out / "n01443537")  # a whole class folder outside
    _jpeg(data / "val" / "ILSVRC2012_val_00000001.JPEG")
    _link(data / "val" / "ILSVRC2012_val_00000002.JPEG", out / "secret.JPEG")
    _lines(src / "LOC_val_solution.csv", "ImageId,PredictionString",
           "ILSVRC2012_val_00000001,n01440764 1 1 2 2",
           "ILSVRC2012_val_00000002,n01440764 1 1 2 2",
           "../../outside/secret,n01440764 1 1 2 2",
           "ILSVRC2012_val_00000001,n01440764 1 1 2 2", NOT_UTF8,
           f"ILSVRC2012_val_00000003,n01440764 {HUGE}")
    train = "ILSVRC/Data/CLS-LOC/train"
    return src, {f"{train}/n01440764/n01440764_2.JPEG": "leads outside --path",
                 f"{train}/n01443537": "class folder: 'ILSVRC/Data/CLS-LOC/train/n01443537' leads",
                 "LOC_val_solution.csv:3": "leads outside --path",
                 "LOC_val_solution.csv:4": "no media file",
                 "LOC_val_solution.csv:5": "duplicate: ImageId",
                 "LOC_val_solution.csv:6": "not UTF-8",
                 "LOC_val_solution.csv:7": "more than the 65536"}, 2


LAYOUTS = {"howto100m": _howto100m, "kinetics": _kinetics, "ucf101": _ucf101, "esc50": _esc50,
           "msrvtt": _msrvtt, "youcook2": _youcook2, "audioset": _audioset, "mit": _mit,
           "imagenet": _imagenet}


def test_every_reader_has_a_hostile_dataset():
    assert sorted(LAYOUTS) == sorted(READERS)


# ---------------------------------------------------------------------------------------------
# what the kernel saw opened


class _Opens:
    """Opens and reads of files and folders in `folders` while watched: Linux inotify, which
    records the kernel's view, so opens by C code (FFmpeg, Pillow) count as well as Python's."""

    IN_ACCESS, IN_OPEN = 0x1, 0x20

    def __init__(self, folders: list[Path]) -> None:
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self.libc.inotify_init1(os.O_NONBLOCK)
        assert self.fd >= 0, os.strerror(ctypes.get_errno())
        self.names = {}
        for folder in folders:
            wd = self.libc.inotify_add_watch(self.fd, str(folder).encode(),
                                             self.IN_OPEN | self.IN_ACCESS)
            assert wd >= 0, os.strerror(ctypes.get_errno())
            self.names[wd] = folder

    def seen(self) -> list[str]:
        events = []
        while True:
            try:
                data = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                break
            except OSError as err:
                assert err.errno == errno.EAGAIN
                break
            offset = 0
            while offset < len(data):
                wd, mask, _, size = struct.unpack_from("iIII", data, offset)
                name = data[offset + 16:offset + 16 + size].rstrip(b"\0").decode()
                events.append(f"{self.names[wd]}/{name} (mask {mask:#x})")
                offset += 16 + size
        os.close(self.fd)
        return events


# ---------------------------------------------------------------------------------------------


def _members(path: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(path) as tar:
        return [(m, tar.extractfile(m).read()) for m in tar.getmembers()]


def _write(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for member, payload in members:
            info = tarfile.TarInfo(member.name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    path.write_bytes(buffer.getvalue())


@pytest.mark.parametrize("source", sorted(LAYOUTS))
def test_hostile_rows_are_quarantined_and_nothing_outside_is_read(cfg, tmp_path, source):
    outside = _outside(tmp_path)
    src, expected, good = LAYOUTS[source](tmp_path / source, outside)
    before = tree_digest(src)  # follows the symlinks: outside the watch
    watch = _Opens([outside, outside / "n01443537"])
    [summary] = ingest(cfg, source, str(src), tmp_path / "out", progress=False)
    opened = watch.seen()
    assert opened == [], f"{source} opened files outside --path: {opened}"
    assert tree_digest(src) == before  # the raw input is unchanged

    folder = tmp_path / "out" / source
    reasons = {q["item"]: q["reason"] for q in
               json.loads((folder / "report.json").read_text())["quarantined"]}
    for item, part in expected.items():
        assert item in reasons, f"{source}: {item} is not in the report: {sorted(reasons)}"
        assert part in reasons[item], (source, item, reasons[item])
    manifest = json.loads((folder / "manifest.json").read_text())
    assert len({c["video_id"] for c in manifest["clips"]}) == good, manifest["clips"]
    for clip in manifest["clips"]:
        assert (src / clip["media"]).resolve().is_relative_to(src.resolve())

    _tampered_shards_are_refused(cfg, tmp_path / "out", source, manifest)


def _tampered_shards_are_refused(cfg, root: Path, dataset: str, manifest: dict) -> None:
    """Each change to a shard after ingest is a DataError naming it; a crafted record whose
    manifest checksum was forged too is stopped by the record's bounds."""
    clip = manifest["clips"][0]
    shard_path = root / dataset / clip["shard"]
    key = clip["clip_id"].split("/", 1)[1]
    index = {c["clip_id"]: i for i, c in enumerate(manifest["clips"])}
    checksums = {c["clip_id"]: c["sha256"] for c in manifest["clips"]}
    shard_clips: dict[str, list[str]] = {}
    for c in manifest["clips"]:
        shard_clips.setdefault(c["shard"], []).append(c["clip_id"])

    def read(sums=checksums):
        return _read_shard({"shard": clip["shard"]}, str(root), dataset, index, sums,
                           shard_clips=shard_clips)

    rows = read()
    assert {json.loads(r["record"])["clip_id"] for r in rows} == set(shard_clips[clip["shard"]])
    original = _members(shard_path)
    payload = {m.name: data for m, data in original}
    json_name = f"{key}.json"

    def refused(members, match, sums=checksums):
        _write(shard_path, members)
        with pytest.raises(DataError, match=match):
            read(sums)

    # a member added: a track the clip never had, or a second copy of one it has
    missing_ext = next((e for e in ("wav", "mp4") if e not in clip["sha256"]), None)
    if missing_ext:
        extra = tarfile.TarInfo(f"{key}.{missing_ext}")
        refused([*original, (extra, b"RIFF....")], rf"added: \['{missing_ext}'\]")
    refused([*original, (tarfile.TarInfo(json_name), payload[json_name])], "appears twice")
    refused([*original, (tarfile.TarInfo("zz_extra_0000.json"), b"{}")],
            "clip 'zz_extra_0000' is not in the manifest")
    # a member changed: the record's fps, the same length
    record = json.loads(payload[json_name])
    crafted = dict(record, fps=1e-9)
    text = json.dumps(crafted, sort_keys=True).encode()
    changed = [(m, text if m.name == json_name else data) for m, data in original]
    refused(changed, rf"{key}\.json does not match the manifest's sha256")
    # a clip removed
    refused([(m, d) for m, d in original if not m.name.startswith(f"{key}.")],
            "the manifest lists 1 clip")
    # a manifest written without the record's checksum (or edited): a clear error, no crash
    old = {cid: {e: d for e, d in sums.items() if e != "json"} for cid, sums in checksums.items()}
    refused(original, r"no checksum for .*\.json", old)

    # the crafted fps with its checksum forged in the manifest too: the bounds stop it
    forged = dict(checksums, **{clip["clip_id"]: dict(clip["sha256"],
                                                      json=hashlib.sha256(text).hexdigest())})
    _write(shard_path, changed)
    [row] = [r for r in read(forged) if json.loads(r["record"])["clip_id"] == clip["clip_id"]]
    spec = clip_spec(cfg, manifest, False, ("<pad>", "<unk>"))
    with pytest.raises(DataError, match=rf"clip '{clip['clip_id']}': fps=1e-09 is outside "
                                        r"\[1, 1000\].*re-ingest"):
        decode_clip(row, spec)
    classes = len(manifest["label_names"])
    for field, value, message in (
            ("num_frames", 10 ** 12, "num_frames=1000000000000 is outside [0, "),
            ("label", classes, f"label={classes} is outside [-1, {classes - 1}]"),
            ("labels", [-1], "labels[]=-1 is outside [0, "),
            ("fold", 11, "fold=11 is outside [0, 10]"),
            ("captions", ["x" * 20000], "captions[] has 20000 characters")):
        bad = dict(row, record=json.dumps(dict(record, **{field: value})))
        with pytest.raises(DataError, match=re.escape(f"clip '{clip['clip_id']}': {message}")):
            decode_clip(bad, spec)
    _write(shard_path, original)
    assert len(read()) == len(rows)  # restored: read as before


def test_json_layouts_that_are_not_utf8_stop_with_the_file_named(cfg, tmp_path):
    for source, name in (("howto100m", "caption.json"), ("msrvtt", "MSRVTT_data.json"),
                         ("youcook2", "youcookii_annotations_trainval.json")):
        src = tmp_path / source
        src.mkdir()
        (src / name).write_bytes(b'{"a": "' + NOT_UTF8 + b'"}')
        with pytest.raises(IngestError, match=rf"{name}: not UTF-8 text"):
            ingest(cfg, source, str(src), tmp_path / "out", progress=False)


def test_class_lists_with_a_bad_line_stop_the_run(cfg, tmp_path):
    """A class list is positional: a dropped or doubled line would move every label after it,
    so it stops the run instead of being quarantined."""
    outside = _outside(tmp_path)
    src, _, _ = _audioset(tmp_path / "as", outside)
    _lines(src / "class_labels_indices.csv", "index,mid,display_name", "0,/m/a,Speech",
           "5,/m/b,Dog")
    with pytest.raises(IngestError, match=r"class indices must be 0\.\.1, each once"):
        ingest(cfg, "audioset", str(src), tmp_path / "out", progress=False)
    src, _, _ = _ucf101(tmp_path / "ucf", outside)
    _lines(src / "ucfTrainTestlist" / "classInd.txt", "1 Jump", NOT_UTF8)
    with pytest.raises(IngestError, match=r"classInd.txt:2: row is not UTF-8"):
        ingest(cfg, "ucf101", str(src), tmp_path / "out", progress=False)
    src, _, _ = _mit(tmp_path / "mit", outside)
    _lines(src / "Moments_in_Time_Raw" / "moments_categories.txt", "clapping,0",
           "running,99999999")
    with pytest.raises(IngestError, match=r"index='99999999' is outside \[0, 99999\]"):
        ingest(cfg, "mit", str(src), tmp_path / "out", progress=False)
    # an annotation file that is a symlink out of --path is not read either
    src, _, _ = _kinetics(tmp_path / "kin", outside)
    (outside / "list.csv").write_text("label,youtube_id,time_start,time_end,split\n")
    _link(src / "more.csv", outside / "list.csv")
    with pytest.raises(IngestError, match=r"more.csv: 'more.csv' leads outside --path"):
        ingest(cfg, "kinetics", str(src), tmp_path / "out", progress=False)
