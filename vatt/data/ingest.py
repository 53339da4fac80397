"""`vatt ingest`: raw sources -> WebDataset-style tar shards + manifest + report + vocabulary.

OUT is the config's data.path (`vatt ingest --out DIR` is short for data.path=DIR, so the
command, the ingest flow and training name the folder by one key). Output, for a source
ingested into OUT as dataset NAME (`--name`; default: the source's name, and
`synthetic-<layout>` for the generated default dataset, one per layout):

    OUT/NAME/shards/<split>-<NNNNNN>.tar   per clip: <key>.mp4 (MJPEG video, if any), <key>.wav (mono
                                           16-bit audio, if any), <key>.json (clip record below)
    OUT/NAME/shards/<split>-<NNNNNN>.json  that shard's records, checksums and input fingerprint
    OUT/NAME/manifest.json                 source (the reader), name, ingest parameters, label
                                           names, splits, every clip (record + sha256 of each
                                           member), and for the generated dataset the generator
                                           that made it (version, seed, scale, cue)
    OUT/NAME/report.json                   quarantined rows and media with reasons, summary
    OUT/NAME/vocab.json                    word vocabulary of NAME's training captions
    OUT/vocab.json                         word vocabulary of all sources' training captions
                                           under OUT (the one the model uses)

Clip record (<key>.json): clip_id ("<NAME>/<key>"), video_id, source (the reader, e.g. kinetics),
dataset (NAME), split, media (raw path), start/end (s, in the raw media), fps, num_frames,
sample_rate, num_samples, has_video, has_audio, image (true for a still image stored as a
one-frame clip: ImageNet), captions (list, narrated sources: the `data.num_text_candidates`
narrations nearest in time), caption_times, label (class index or -1), labels (multi-label class
indices), fold (ESC-50's 1-5, else 0).

Several datasets of one source (kinetics400 and kinetics600) live side by side under OUT, each
in its own folder; an ingest refuses a folder that holds a dataset of another source.

A shard holds the clips of up to `data.ingest.media_per_shard` raw files of one split, so its
content depends on those files only: a re-run re-uses every shard whose inputs and parameters
are unchanged (same fingerprint and checksum) and rewrites only the others; encoding and tar
headers are deterministic, so rewritten shards are byte-identical too. The raw input is only read.

A raw file is decoded as a stream and each clip is encoded as soon as its end has been decoded,
so an ingest's memory does not grow with the length of its files (an hour of video decoded
whole at 224 px would take about 10 GB); the clip files wait in a spool on disk until their raw
file has decoded to its end (a truncated file gives no clip), then go into the shard's tar.
Shards are written by a pool of worker processes (`vatt.data.pool`) that survives a worker's
death: its shard is written again, or its files are quarantined if it dies twice. A decode that
goes data.ingest.decode_timeout_s without decoding anything (a stuck decoder, a hung read) has
its worker killed and its file quarantined; the shard is written again without it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tarfile
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np

from vatt.config import Config, IngestConfig, StorageConfig
from vatt.data.media import MediaDecoder, MediaError, encode_video, encode_wav, load_image
from vatt.data.pool import TimedOut, WorkerDied, map_in_processes, working_on
from vatt.data.sources import (READERS, SOURCES, ClipSpec, LayoutError, SourceIndex, UnsafePath,
                               WorkItem, inside)

# bump when the shard content changes for the same input (2: clip folds; 3: records name their
# reader and dataset and say whether they are an image, AudioSet's lists and hold-out val split)
FORMAT_VERSION = 3
# a dataset name is a folder under OUT and the first part of every clip_id
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_\-]{0,63}")
# the code that decides what an ingest writes: a change to it is a change of output
_INGEST_CODE = ("ingest.py", "sources.py", "bounds.py", "media.py", "synthetic.py")

log = logging.getLogger("vatt.data")


class IngestError(RuntimeError):
    """An ingestion run that must fail (too much bad input, an unusable layout)."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class IngestParams:
    """Everything besides the raw bytes that decides a shard's content (the manifest's
    `params`, and data.dvc's `ingest`)."""
    format_version: int
    fps: float
    short_side: int
    sample_rate: int
    clip_seconds: float  # pretraining clips are cut this long
    min_seconds: float  # a shorter segment is quarantined
    video_qmax: int
    num_text_candidates: int


def ingest_params(cfg: Config) -> IngestParams:
    """The ingest parameters of `cfg` (its data.* and data.ingest.* settings)."""
    d, ing = cfg.data, cfg.data.ingest
    return IngestParams(format_version=FORMAT_VERSION, fps=d.fps,
                        short_side=ing.short_side or d.frame_size, sample_rate=d.sample_rate,
                        clip_seconds=ing.clip_seconds or 2 * d.clip_seconds,
                        min_seconds=d.clip_seconds / 2, video_qmax=ing.video_qmax,
                        num_text_candidates=d.num_text_candidates)


@dataclass(frozen=True)
class DatasetId:
    """The dataset being ingested: `source` is the reader (e.g. kinetics), `name` its folder
    under OUT (e.g. kinetics600)."""
    source: str
    name: str


@dataclass(frozen=True)
class ShardPlan:
    """One shard to write: the raw files `items` (under `root`) of one split into `shard`."""
    root: Path
    dataset: DatasetId
    shard: Path
    items: tuple[WorkItem, ...]
    params: IngestParams
    fingerprint: str  # of the items' content and the params: equal means the shard is too


@dataclass(frozen=True)
class ShardResult:
    """A written (or reused) shard: its clip records and quarantine entries, as its sidecar
    OUT/NAME/shards/<shard>.json holds them."""
    shard: Path
    fingerprint: str
    sha256: str
    clips: list[dict]
    bad: list[dict]

    def sidecar(self) -> str:
        return json.dumps({"fingerprint": self.fingerprint, "sha256": self.sha256,
                           "clips": self.clips, "bad": self.bad}, sort_keys=True, indent=1)


def _quarantined_media(media: str, reason: str) -> dict:
    """The report's entry for a raw file that gave no clip."""
    return {"item": media, "kind": "media", "reason": reason}


def dataset_name(source: str, name: Optional[str] = None) -> str:
    """The folder an ingest of `source` writes (under OUT): `name`, checked, or the source's
    own name. The synthetic source writes one folder per layout and takes no name."""
    if source not in SOURCES:
        raise IngestError(f"unknown --source {source!r}; choose one of {', '.join(SOURCES)}")
    if source == "synthetic":
        if name is not None:
            raise IngestError("--name does not apply to --source synthetic: it writes one "
                              "folder per layout (synthetic-<layout>); leave --name out")
        return source
    if name is None:
        return source
    if not NAME_PATTERN.fullmatch(name):
        raise IngestError(f"--name {name!r} is not a valid dataset name: use 1-64 lowercase "
                          "letters, digits, '-' and '_', starting with a letter or digit "
                          "(e.g. kinetics600)")
    return name


def source_fingerprint(cfg: Config, source: str, src: Optional[str], out: str | Path,
                       name: Optional[str] = None) -> str:
    """One hash of everything that decides what `ingest(cfg, source, src, out, name=name)`
    writes: the source and the dataset name, its input files (relative path, size and mtime;
    on S3 key, size and ETag; for `synthetic` the generator's settings), the ingest parameters,
    the vocabulary size, the output folder and the ingest code itself. Equal fingerprints mean
    an ingest would write the same output (flows cache ingestion on it); computing it reads no
    media."""
    from vatt.storage import ObjectStore, is_s3_uri

    here = Path(__file__).resolve().parent
    record: dict[str, Any] = {
        "source": source, "name": dataset_name(source, name),
        "params": asdict(ingest_params(cfg)),
        "ingest": asdict(cfg.data.ingest),
        "vocab_size": cfg.data.vocab_size, "out": str(Path(out).resolve()),
        "code": [_file_sha256(here / name) for name in _INGEST_CODE],
    }
    if source == "synthetic":
        record["src"] = str(Path(src).resolve()) if src else None
    elif not src:
        raise IngestError(f"--source {source} needs --path (a local folder or s3:// prefix)")
    else:
        if not is_s3_uri(src) and not Path(src).is_dir():
            raise IngestError(f"--path {src}: no such folder")
        record["src"] = src if is_s3_uri(src) else str(Path(src).resolve())
        record["files"] = ObjectStore.from_config(cfg.storage).list_details(src)
    return _sha256(json.dumps(record, sort_keys=True, default=str).encode())


def ingested_names(source: str, name: Optional[str] = None) -> list[str]:
    """The dataset folders an ingest of `source` (as dataset `name`) writes under its output
    folder."""
    if source == "synthetic":
        from vatt.data.synthetic import LAYOUTS

        dataset_name(source, name)  # refuses a name
        return [f"synthetic-{layout}" for layout in LAYOUTS]
    return [dataset_name(source, name)]


def missing_outputs(source: str, out: str | Path, name: Optional[str] = None) -> list[str]:
    """The manifests an ingest of `source` (as dataset `name`) into `out` should have written
    and that are not there (deleted or never written): a cached ingest whose output is gone
    must run again."""
    return [str(Path(out) / folder / "manifest.json") for folder in ingested_names(source, name)
            if not (Path(out) / folder / "manifest.json").is_file()]


def _recorded_source(target: Path) -> Optional[str]:
    """The source of the dataset in folder `target`, from its manifest (or, for an ingest that
    failed its bad-share threshold, its report); None when neither is there. Manifests of
    format 2 recorded only the folder name, as `source`."""
    for file, get in (("manifest.json", lambda d: d), ("report.json", lambda d: d["summary"])):
        try:
            record = get(json.loads((target / file).read_text()))
        except FileNotFoundError:
            continue
        except (ValueError, KeyError, TypeError):
            return f"unknown (unreadable {file})"
        source = record.get("source")
        if "name" not in record and isinstance(source, str) and source.startswith("synthetic-"):
            return "synthetic"  # format 2
        return source
    return None


def _check_owner(target: Path, source: str) -> None:
    """Refuse to write into a folder that holds another source's dataset, or files that are
    no dataset at all: an ingest rewrites and deletes files in its folder."""
    if not target.exists():
        return
    recorded = _recorded_source(target)
    if recorded is not None and recorded != source:
        raise IngestError(f"{target} holds a dataset of source {recorded!r}, not {source!r}; "
                          f"ingesting would overwrite it. Choose another --name for this "
                          f"{source} dataset, or remove {target} if that data is no longer wanted")
    foreign = sorted(p.name for p in target.iterdir()
                     if p.name not in ("shards", "manifest.json", "report.json", "vocab.json")
                     and not p.name.startswith("."))
    if recorded is None and foreign:
        raise IngestError(f"{target} exists and holds files that are not an ingested dataset "
                          f"({', '.join(foreign[:3])}); choose another --name, or move them away")


def _write_atomically(path: Path, text: str) -> None:
    """Readers see the old file or the new one, never half of one (a unique temporary name,
    so concurrent writers do not write into each other's)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


@contextmanager
def _exclusive(out: Path) -> Iterator[None]:
    """One ingest at a time into `out` (an OS lock: released when the process ends, however).
    The lock file lives beside the raw-media cache, outside `out`, which DVC versions."""
    import fcntl

    folder = out.resolve().parent / ".cache" / "ingest-locks"
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / f"{out.resolve().name}.lock"
    with open(lock, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise IngestError(f"another ingest is writing into {out} (it holds {lock}); wait for "
                              "it to finish, or ingest into another --out") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _safe_key(text: str) -> str:
    # WebDataset splits a member name at its first dot: keys carry no dots or slashes
    return re.sub(r"[^A-Za-z0-9_\-]", "_", text)


def _nearest_captions(narration: list[tuple[float, float, str]], start: float, end: float,
                      count: int) -> list[tuple[float, float, str]]:
    """The `count` narrations nearest in time to [start, end], returned in time order."""
    def distance(n: tuple[float, float, str]) -> tuple[float, float]:
        return (max(0.0, n[0] - end, start - n[1]), n[0])
    return sorted(sorted(narration, key=distance)[:count], key=lambda n: n[0])


def _narrated(item: WorkItem, start: float, end: float,
              params: IngestParams) -> tuple[ClipSpec, list]:
    """A cut clip with the narrations nearest to it as captions (and their times)."""
    near = _nearest_captions(item.narration, start, end, params.num_text_candidates)
    return ClipSpec(start, end, [n[2] for n in near]), [[n[0], n[1]] for n in near]


def _cut(item: WorkItem, duration: float, params: IngestParams) -> list[tuple[ClipSpec, list]]:
    """Clip specs (with their narration windows) to cut from a media of `duration` seconds."""
    if item.clips is not None:
        return [(c, []) for c in item.clips]
    length = params.clip_seconds
    count = int(duration / length + 1e-3)  # 15.9999 s of decoded media holds five 3.2 s clips
    bounds = [(k * length, (k + 1) * length) for k in range(count)]
    if not bounds and duration >= params.min_seconds:
        bounds = [(0.0, duration)]
    return [_narrated(item, start, end, params) for start, end in bounds]


def _settled_end(item: WorkItem, index: int, params: IngestParams) -> float:
    """Once the media surely lasts this long, clip `index` of `_cut`'s list is there with its
    final bounds, whatever the media's whole duration (inf: known only at the end)."""
    if item.clips is None:
        return (index + 1) * params.clip_seconds
    if index < len(item.clips) and item.clips[index].end is not None:
        return item.clips[index].end
    return float("inf")


def _settled_clip(item: WorkItem, index: int, params: IngestParams) -> tuple[ClipSpec, list]:
    """Clip `index` of `_cut`'s list, once its end is settled (`_settled_end`)."""
    if item.clips is None:
        length = params.clip_seconds
        return _narrated(item, index * length, (index + 1) * length, params)
    return item.clips[index], []


class _Window:
    """The decoded frames and samples that clips not yet written may still need: media frame k
    is `frames[k - frame_base]`, media sample j is `audio[j - sample_base]`."""

    def __init__(self) -> None:
        self.frames: list[np.ndarray] = []
        self.frame_shape: tuple[int, ...] = (0, 0, 3)
        self.frame_base = 0
        self.pieces: list[np.ndarray] = []  # audio, joined when read
        self.sample_base = 0

    @property
    def frames_end(self) -> int:
        return self.frame_base + len(self.frames)

    @property
    def samples_end(self) -> int:
        return self.sample_base + sum(len(p) for p in self.pieces)

    def add(self, frames: list[np.ndarray], samples: Optional[np.ndarray]) -> None:
        if frames:
            self.frame_shape = frames[0].shape
        self.frames += frames
        if samples is not None and len(samples):
            self.pieces.append(samples)

    def video(self, first: int, stop: int) -> np.ndarray:
        assert first >= self.frame_base, "a clip needs frames the window has dropped"
        frames = self.frames[first - self.frame_base:max(0, stop - self.frame_base)]
        if not frames:  # a clip past the end of the video (the audio lasts longer)
            return np.zeros((0, *self.frame_shape), np.uint8)
        return np.stack(frames)  # (N, H, W, 3)

    def audio(self, first: int, stop: int) -> np.ndarray:
        if len(self.pieces) > 1:
            self.pieces = [np.concatenate(self.pieces)]
        joined = self.pieces[0] if self.pieces else np.zeros(0, np.float32)
        assert first >= self.sample_base, "a clip needs samples the window has dropped"
        return joined[first - self.sample_base:max(0, stop - self.sample_base)]

    def drop_before(self, frame: int, sample: int) -> None:
        """Forget what lies before media frame `frame` and media sample `sample`."""
        cut = min(max(0, frame - self.frame_base), len(self.frames))
        del self.frames[:cut]
        self.frame_base += cut
        if self.pieces:
            joined = self.audio(self.sample_base, self.samples_end)
            cut = min(max(0, sample - self.sample_base), len(joined))
            self.pieces = [joined[cut:]] if cut < len(joined) else []
            self.sample_base += cut


class _Spool:
    """One raw file's clip files, kept on disk until the whole file has decoded well (a file
    found truncated at its end contributes no clip), then appended to the shard's tar."""

    def __init__(self, folder: Path) -> None:
        self.file = tempfile.TemporaryFile(dir=folder)
        self.members: list[tuple[str, int, int]] = []  # name, offset, size

    def add(self, name: str, data: bytes) -> None:
        self.members.append((name, self.file.tell(), len(data)))
        self.file.write(data)

    def append_to(self, tar: tarfile.TarFile) -> None:
        for name, offset, size in self.members:
            self.file.seek(offset)
            tar.addfile(_tar_info(name, size), self.file)

    def close(self) -> None:
        self.file.close()


@dataclass(frozen=True)
class _RawFile:
    """One raw file of a shard, with what its clips' records and encoding need."""
    root: Path
    dataset: DatasetId
    item: WorkItem
    params: IngestParams

    @property
    def path(self) -> Path:
        return self.root / self.item.media


@dataclass(frozen=True)
class _Clip:
    """Clip `index` of a raw file's `_cut` list, from media time spec.start to `end`."""
    index: int
    spec: ClipSpec
    end: float
    caption_times: list


def _encode_clip(file: _RawFile, clip: _Clip, window: _Window, spool: _Spool, *,
                 has_video: bool, has_audio: bool) -> dict:
    """Encode `clip` of `file` (its frames and samples in `window`) into the spool; returns
    its record."""
    item, spec, dataset = file.item, clip.spec, file.dataset
    fps, rate = file.params.fps, file.params.sample_rate
    key = _safe_key(f"{item.key}_{clip.index:04d}")
    record: dict[str, Any] = {
        "clip_id": f"{dataset.name}/{key}", "video_id": item.key,
        "source": dataset.source, "dataset": dataset.name,
        "split": item.split, "media": item.media, "start": round(spec.start, 4),
        "end": round(clip.end, 4), "fps": fps, "sample_rate": rate,
        "captions": spec.captions, "caption_times": clip.caption_times,
        "label": spec.label, "labels": list(spec.labels), "fold": spec.fold,
        "has_video": has_video, "has_audio": has_audio, "image": item.kind == "image",
        "num_frames": 0, "num_samples": 0,
    }
    members = []
    if has_video:
        frames = window.video(int(round(spec.start * fps)), int(round(clip.end * fps)))
        record["num_frames"] = len(frames)
        members.append(("mp4", encode_video(frames, fps, file.params.video_qmax)))
    if has_audio:
        audio = window.audio(int(round(spec.start * rate)), int(round(clip.end * rate)))
        record["num_samples"] = len(audio)
        members.append(("wav", encode_wav(audio, rate)))
    members.append(("json", json.dumps(record, sort_keys=True).encode()))
    for ext, data in members:
        spool.add(f"{key}.{ext}", data)
    record["sha256"] = {ext: _sha256(data) for ext, data in members}
    return record


def _process_image(file: _RawFile, tar: tarfile.TarFile) -> tuple[list[dict], list[dict]]:
    """A still image -> one clip of one frame at the ingest's short side (the same MJPEG MP4 as
    video, so the loader reads it like any clip), no audio; (clip records, bad entries)."""
    item = file.item
    try:
        frame = load_image(file.path, short_side=file.params.short_side)
    except MediaError as err:
        return [], [_quarantined_media(item.media, str(err))]
    except Exception as err:  # a decoder fault on one file must not stop the whole run
        return [], [_quarantined_media(item.media,
                                       f"unreadable image: {type(err).__name__}: {err}")]
    window, spool = _Window(), _Spool(Path(tar.name).parent)
    try:
        window.add([frame], None)
        spec = (item.clips or [ClipSpec()])[0]
        # one frame lasts 1 / fps: the clip covers frame 0 only
        clip = _Clip(0, replace(spec, start=0.0, end=None), 1.0 / file.params.fps, [])
        record = _encode_clip(file, clip, window, spool, has_video=True, has_audio=False)
        spool.append_to(tar)
        return [record], []
    finally:
        spool.close()


def _process_item(file: _RawFile, tar: tarfile.TarFile) -> tuple[list[dict], list[dict]]:
    """Decode one raw file and append its clips to `tar`: (clip records, bad entries).

    The decode streams: a clip is encoded as soon as its end is decoded, and the window keeps
    only what the clips not yet written need, so memory does not grow with the file's length.
    The output is what cutting the whole decoded file (`load_media`) would give."""
    item, params = file.item, file.params
    if item.kind == "image":
        return _process_image(file, tar)
    fps, rate = params.fps, params.sample_rate

    def quarantined(reason: str) -> tuple[list[dict], list[dict]]:
        return [], [_quarantined_media(item.media, reason)]

    try:
        decoder = MediaDecoder(file.path, fps=fps, short_side=params.short_side,
                               sample_rate=rate, video=item.video, audio=item.audio)
    except MediaError as err:
        return quarantined(str(err))
    except Exception as err:  # a decoder fault on one file must not stop the whole run
        return quarantined(f"unreadable: {type(err).__name__}: {err}")
    window, spool = _Window(), _Spool(Path(tar.name).parent)
    records: list[dict] = []
    short: list[int] = []  # clips shorter than min_seconds: reported once the duration is known
    done = 0  # clips of `_cut`'s list settled (encoded, or in `short`), in order

    def settle(spec: ClipSpec, caption_times: list, end: float, complete: bool = False) -> bool:
        """Encode clip `done` (media time spec.start to `end`) if its frames and samples are
        all decoded (`complete`: the decode has ended); then forget what no later clip needs."""
        nonlocal done
        if not complete and decoder.has_video and window.frames_end < int(round(end * fps)):
            return False
        if not complete and decoder.has_audio and window.samples_end < int(round(end * rate)):
            return False
        if end - spec.start < params.min_seconds:
            short.append(done)
        else:
            records.append(_encode_clip(file, _Clip(done, spec, end, caption_times), window,
                                        spool, has_video=decoder.has_video,
                                        has_audio=decoder.has_audio))
        done += 1
        if item.clips is None:
            first = done * params.clip_seconds
        else:
            first = min((c.start for c in item.clips[done:]), default=float("inf"))
        if first == float("inf"):
            window.drop_before(window.frames_end, window.samples_end)
        else:
            window.drop_before(int(round(first * fps)), int(round(first * rate)))
        return True

    try:
        with decoder:
            pieces = decoder.pieces()
            while True:
                try:
                    frames, samples = next(pieces)
                except StopIteration:
                    break
                except MediaError as err:
                    return quarantined(str(err))
                except Exception as err:  # a decoder fault on one file must not stop the run
                    return quarantined(f"unreadable: {type(err).__name__}: {err}")
                working_on(item.media)  # decoded something: restarts the deadline
                window.add(frames, samples)
                while decoder.lasts_at_least >= _settled_end(item, done, params):
                    spec, caption_times = _settled_clip(item, done, params)
                    if not settle(spec, caption_times, spec.end):
                        break
            duration = decoder.duration
            final = _cut(item, duration, params)
            ends = [duration if spec.end is None else min(spec.end, duration) for spec, _ in final]
            while done < len(final):
                settle(final[done][0], final[done][1], ends[done], complete=True)
            bad = [{"item": f"{item.media}[{final[i][0].start:.2f}-{ends[i]:.2f}s]",
                    "kind": "segment", "reason": f"segment shorter than {params.min_seconds} s "
                                                 f"(media lasts {duration:.2f} s)"} for i in short]
            spool.append_to(tar)
            return records, bad
    finally:
        spool.close()


def _tar_info(name: str, size: int) -> tarfile.TarInfo:
    """Fixed headers (mtime 0, uid/gid 0, no user names): equal content gives equal bytes."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


@contextmanager
def _shard_tar(path: Path) -> Iterator[tarfile.TarFile]:
    """The shard's tar, written to a temporary name and renamed when complete, so a killed
    run leaves no half shard."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tarfile.open(tmp, "w", format=tarfile.GNU_FORMAT) as tar:
            yield tar
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def _process_shard(plan: ShardPlan) -> ShardResult:
    """Worker: ingest the raw files of one shard, write the tar and its sidecar."""
    import torch

    torch.set_num_threads(1)
    records, bad = [], []
    with _shard_tar(plan.shard) as tar:
        for item in plan.items:
            working_on(item.media)  # the deadline (data.ingest.decode_timeout_s) is this file's
            r, b = _process_item(_RawFile(plan.root, plan.dataset, item, plan.params), tar)
            records += r
            bad += b
    result = ShardResult(plan.shard, plan.fingerprint, _file_sha256(plan.shard), records, bad)
    plan.shard.with_suffix(".json").write_text(result.sidecar())
    return result


def _stuck_reason(timed_out: TimedOut) -> str:
    return (f"stuck: its decode went {timed_out.seconds:g} s without decoding anything "
            f"(data.ingest.decode_timeout_s={timed_out.seconds:g}), so its worker was killed: a "
            "decoder in a loop or a read that never returns. If the file is only slow to read, "
            "raise data.ingest.decode_timeout_s")


def _fingerprint(root: Path, items: list[WorkItem], params: IngestParams) -> str:
    parts = []
    for item in items:
        # content, not mtime: the shards and their sidecars (hence the DVC hash of data/) must
        # not depend on when or where the raw files were written
        parts.append([asdict(item), _file_sha256(root / item.media)])
    return _sha256(json.dumps([asdict(params), parts], sort_keys=True, default=str).encode())


def _reusable(shard: Path, fingerprint: str) -> Optional[ShardResult]:
    """The shard an earlier run wrote from the same input, if it is there unchanged."""
    sidecar = shard.with_suffix(".json")
    if not (shard.exists() and sidecar.exists()):
        return None
    try:
        data = json.loads(sidecar.read_text())
    except ValueError:
        return None
    if data.get("fingerprint") != fingerprint or data.get("sha256") != _file_sha256(shard):
        return None
    return ShardResult(shard, fingerprint, data["sha256"], data["clips"], data["bad"])


def _local_source(src: str, out: Path, storage: StorageConfig) -> Path:
    """A local folder for SRC: itself, or a download of an s3:// prefix into a cache folder
    beside OUT (kept out of OUT so that DVC does not version raw media)."""
    from vatt.storage import ObjectStore, is_s3_uri

    if not is_s3_uri(src):
        root = Path(src)
        if not root.is_dir():
            raise IngestError(f"--path {src}: no such folder")
        return root
    cache = out.resolve().parent / ".cache" / "raw" / _safe_key(src[len("s3://"):])
    count = ObjectStore.from_config(storage).download_dir(src, cache)  # keys: environment
    log.info("downloaded %d files from %s to %s", count, src, cache)
    return cache


def build_vocabulary(out: Path, max_size: int) -> Optional[Path]:
    """OUT/vocab.json from the training captions of every source under OUT (sorted, so the
    result does not depend on ingestion order)."""
    from vatt.text import Vocabulary

    texts: list[str] = []
    for manifest in sorted(out.glob("*/manifest.json")):
        for clip in json.loads(manifest.read_text())["clips"]:
            if clip["split"] == "train":
                texts += clip["captions"]
    if not texts:
        return None
    path = out / "vocab.json"
    words = Vocabulary.build(texts, max_size).words
    _write_atomically(path, json.dumps({"words": words}, indent=0) + "\n")
    return path


def _usable_items(items: list[WorkItem], root: Path) -> tuple[list[WorkItem], list[dict]]:
    """The items whose media is a file under `root` and whose shard key no earlier item has
    (keys become member names: `a.b` and `a_b` would both be `a_b`), and a quarantine entry
    for each other one. Readers check paths already; this holds for any SourceIndex, and runs
    before anything reads a media file (the fingerprint hashes them)."""
    usable, refused, keys = [], [], {}
    for item in items:
        try:
            inside(root, item.media)
        except UnsafePath as err:
            refused.append(_quarantined_media(item.media, str(err)))
            continue
        key = _safe_key(item.key)
        if key in keys:
            refused.append(_quarantined_media(item.media, f"duplicate key: {item.key!r} gives "
                                              f"the clip key {key!r} that {keys[key]} has "
                                              "already; rename one of the two"))
            continue
        keys[key] = item.media
        usable.append(item)
    return usable, refused


def ingest_index(cfg: Config, index: SourceIndex, root: Path, out: Path, name: str,
                 progress: bool = True, source: Optional[str] = None,
                 generator: Optional[dict] = None) -> dict:
    """Write shards, manifest, report and vocabularies for an indexed source into dataset
    folder OUT/`name`; returns the summary. `source`: what the manifest records as the source
    (default: the reader's name, index.name); `generator`: what made generated raw input (its
    record goes into the manifest, and from there into data.dvc). Raises IngestError when the
    quarantined share exceeds the threshold, or when OUT/`name` holds another source's dataset."""
    started = time.perf_counter()
    dataset, target, params = DatasetId(source or index.name, name), out / name, ingest_params(cfg)
    _check_owner(target, dataset.source)
    (target / "shards").mkdir(parents=True, exist_ok=True)
    usable, refused = _usable_items(index.items, root)
    plans, reused = _plan_shards(root, dataset, usable, params, target / "shards",
                                 cfg.data.ingest.media_per_shard)
    written, died = _write_shards(plans, cfg.data.ingest, progress, f"ingest {name}")
    results = sorted(reused + written, key=lambda r: r.shard.name)
    _delete_stale_shards(target / "shards", results)
    bad = ([{"kind": "row", **b} for b in index.bad] + refused + died
           + [entry for result in results for entry in result.bad])
    manifest = _manifest(dataset, params, index, results, generator)
    total = _counted_items(index, bad)
    summary = _summary(dataset, index, manifest, bad, total)
    _write_report(target, summary, bad, total, cfg.data.ingest.max_bad_fraction)
    _write_dataset(target, manifest, cfg.data.vocab_size)
    build_vocabulary(out, cfg.data.vocab_size)
    # what this run did stays out of report.json, which is data: re-runs must not change it
    summary |= {"shards_written": len(plans), "shards_reused": len(reused),
                "seconds": round(time.perf_counter() - started, 2)}
    log.info("%s: %d clips (%.1f min) per split %s; %d quarantined; shards: %d written, %d up "
             "to date; %s s", name, summary["clips"], summary["hours"] * 60,
             summary["per_split"], summary["quarantined"], len(plans), len(reused),
             summary["seconds"])
    return summary


def _plan_shards(root: Path, dataset: DatasetId, items: list[WorkItem], params: IngestParams,
                 shard_dir: Path, media_per_shard: int) -> tuple[list[ShardPlan], list[ShardResult]]:
    """The shards of `items`, up to `media_per_shard` raw files of one split each in key
    order: (those to write, those an earlier run wrote from the same input and params)."""
    per_shard = max(1, media_per_shard)
    items = sorted(items, key=lambda it: (it.split, it.key))
    plans, reused = [], []
    for split in sorted({it.split for it in items}):
        split_items = [it for it in items if it.split == split]
        for n, first in enumerate(range(0, len(split_items), per_shard)):
            group = tuple(split_items[first:first + per_shard])
            shard = shard_dir / f"{split}-{n:06d}.tar"
            fingerprint = _fingerprint(root, group, params)
            done = _reusable(shard, fingerprint)
            if done is not None:
                reused.append(done)
            else:
                plans.append(ShardPlan(root, dataset, shard, group, params, fingerprint))
    return plans, reused


def _write_shards(plans: list[ShardPlan], settings: IngestConfig, progress: bool,
                  desc: str) -> tuple[list[ShardResult], list[dict]]:
    """Write the planned shards in worker processes (always: a stuck decode needs a process to
    kill): (the shards written, quarantine entries of the files whose worker died twice or got
    stuck). A shard with a stuck file is written again without it."""
    from tqdm import tqdm

    bar = tqdm(total=len(plans), desc=desc, unit="shard", disable=not progress)
    written: list[ShardResult] = []
    died: list[dict] = []
    pending = plans
    while pending:
        retry = []
        for plan, outcome in zip(pending, map_in_processes(
                _process_shard, pending, min(settings.num_workers, len(pending)),
                done=bar.update, deadline_s=settings.decode_timeout_s)):
            if isinstance(outcome, WorkerDied):
                died += [_quarantined_media(item.media, outcome.reason) for item in plan.items]
                plan.shard.unlink(missing_ok=True)
            elif isinstance(outcome, TimedOut):
                stuck = [it for it in plan.items if it.media == outcome.note] or list(plan.items)
                died += [_quarantined_media(item.media, _stuck_reason(outcome)) for item in stuck]
                rest = tuple(it for it in plan.items if it not in stuck)
                plan.shard.unlink(missing_ok=True)
                if rest:  # the shard without the stuck file; a later run tries it whole again
                    retry.append(replace(plan, items=rest,
                                         fingerprint=f"{plan.fingerprint}-without-stuck-files"))
            else:
                written.append(outcome)
        bar.total += len(retry)
        pending = retry
    bar.close()
    return written, died


def _delete_stale_shards(shard_dir: Path, results: list[ShardResult]) -> None:
    """Delete the shards (and sidecars) of an earlier, different input."""
    keep = {r.shard.name for r in results} | {r.shard.with_suffix(".json").name for r in results}
    for stale in shard_dir.iterdir():
        if stale.name not in keep:
            stale.unlink()


def _manifest(dataset: DatasetId, params: IngestParams, index: SourceIndex,
              results: list[ShardResult], generator: Optional[dict]) -> dict:
    """manifest.json: every clip with its shard, and per split its shards, clips and hours."""
    clips = [{**record, "shard": f"shards/{r.shard.name}"} for r in results for record in r.clips]
    splits: dict[str, dict] = {}
    for r in results:
        entry = splits.setdefault(r.shard.name.split("-")[0],
                                  {"shards": [], "clips": 0, "hours": 0.0})
        entry["shards"].append(f"shards/{r.shard.name}")
        for record in r.clips:
            entry["clips"] += 1
            entry["hours"] += (record["end"] - record["start"]) / 3600.0
    for entry in splits.values():
        entry["hours"] = round(entry["hours"], 4)
    manifest = {"source": dataset.source, "name": dataset.name, "params": asdict(params),
                "label_names": index.label_names, "multi_label": index.multi_label,
                "splits": splits, "clips": clips}
    if generator is not None:
        manifest["generator"] = generator
    return manifest


def _counted_items(index: SourceIndex, bad: list[dict]) -> int:
    # the bad share counts rows and media files; a bad segment of a good file is one item more
    return len(index.items) + len(index.bad) + sum(1 for b in bad if b.get("kind") == "segment")


def _summary(dataset: DatasetId, index: SourceIndex, manifest: dict, bad: list[dict],
             total: int) -> dict:
    splits = manifest["splits"]
    return {"name": dataset.name, "source": dataset.source, "clips": len(manifest["clips"]),
            "hours": round(sum(s["hours"] for s in splits.values()), 4),
            "per_split": {k: v["clips"] for k, v in sorted(splits.items())},
            "media": len(index.items), "quarantined": len(bad),
            "bad_share": round(len(bad) / max(1, total), 4)}


def _write_report(target: Path, summary: dict, bad: list[dict], total: int,
                  max_bad_fraction: float) -> None:
    """report.json (the summary and every quarantined item with its reason); IngestError when
    more than `max_bad_fraction` of the `total` items were quarantined."""
    report = {"summary": summary, "quarantined": bad, "max_bad_fraction": max_bad_fraction}
    _write_atomically(target / "report.json", json.dumps(report, sort_keys=True, indent=1))
    share = len(bad) / max(1, total)
    if share > max_bad_fraction:
        # the output is not usable: no manifest (the loader refuses a dataset without one), and
        # the vocabulary is left as it was
        (target / "manifest.json").unlink(missing_ok=True)
        raise IngestError(
            f"{target.name}: {len(bad)} of {total} items ({share:.0%}) were quarantined, more "
            f"than data.ingest.max_bad_fraction={max_bad_fraction}; the reasons are in "
            f"{target / 'report.json'}. Fix or remove the bad input, or raise the threshold")


def _write_dataset(target: Path, manifest: dict, vocab_size: int) -> None:
    """The dataset's vocabulary, then its manifest: last, and in one rename, so a manifest
    exists only for a finished, usable dataset."""
    from vatt.text import Vocabulary

    train_texts = [t for c in manifest["clips"] if c["split"] == "train" for t in c["captions"]]
    if train_texts:
        Vocabulary.build(train_texts, vocab_size).save(target / "vocab.json")
    _write_atomically(target / "manifest.json", json.dumps(manifest, sort_keys=True, indent=1))


def ingest(cfg: Config, source: str, src: Optional[str], out: str | Path,
           progress: bool = True, name: Optional[str] = None) -> list[dict]:
    """Ingest SOURCE from SRC (local folder or s3:// prefix) into OUT/NAME (default NAME: the
    source's name; `synthetic` writes OUT/synthetic-<layout>); returns the summaries. One
    ingest at a time writes into OUT; a second one is refused while the first runs."""
    from vatt.storage import is_s3_uri

    folder = dataset_name(source, name)  # a bad name or source fails before anything is written
    if is_s3_uri(str(out)):
        raise IngestError(f"ingestion writes a local folder, not {out} (data.path, or --out): "
                          "ingest into a local folder, then `vatt data publish` it to "
                          "data.versions_uri for jobs elsewhere")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with _exclusive(out):
        return _ingest(cfg, source, src, out, progress, folder)


def _ingest(cfg: Config, source: str, src: Optional[str], out: Path, progress: bool,
            name: str) -> list[dict]:
    if source == "synthetic":
        from vatt.data.synthetic import LAYOUTS, generate

        raw = Path(src) if src else out.resolve().parent / ".cache" / "synthetic-raw"
        generate(cfg, raw, progress=progress)
        # the generator's own stamp of what it wrote (version, seed, scale, cue)
        generator = {"name": "vatt.data.synthetic",
                     **json.loads((raw / "generated.json").read_text())}
        return [ingest_index(cfg, READERS[layout](raw / layout, cfg.data.ingest),
                             raw / layout, out, f"synthetic-{layout}", progress, source,
                             generator)
                for layout in LAYOUTS]
    if not src:
        raise IngestError(f"--source {source} needs --path (a local folder or s3:// prefix)")
    root = _local_source(src, out, cfg.storage)
    try:
        index = READERS[source](root, cfg.data.ingest)
    except LayoutError as err:
        raise IngestError(str(err)) from None
    return [ingest_index(cfg, index, root, out, name, progress, source)]


__all__ = ["ingest", "ingest_index", "ingest_params", "build_vocabulary", "IngestError", "SOURCES",
           "dataset_name", "source_fingerprint", "ingested_names", "missing_outputs"]
