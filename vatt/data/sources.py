"""Readers for the published dataset layouts (../shared/PLATFORM.md, "Data path").

Each reader turns a source folder into a `SourceIndex`: one `WorkItem` per media file (the file,
its split and the clips to cut from it with captions and labels) plus the rows that could not be
used (malformed rows, rows naming a missing media file), each with its reason. Readers only read
the folder; nothing under it is modified.

Splits: `train`, `val` (what validation and sweeps tune on) and `test` (what papers report on:
reports and the promotion gate only). A source without an official val split holds out
`data.ingest.holdout_fraction` of its training items as `val` (`held_out`: a stable hash of the
item key, so the same items are held out on every machine and every re-run).
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterator, Optional

from vatt.config import IngestConfig
from vatt.data import bounds

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")
MEDIA_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".flv",
                    ".wav", ".flac", ".ogg", ".mp3", ".m4a", ".opus")


@dataclass
class ClipSpec:
    start: float = 0.0
    end: Optional[float] = None  # None: to the end of the media
    captions: list[str] = field(default_factory=list)
    label: int = -1  # class index, -1 when the source has none for this clip
    labels: list[int] = field(default_factory=list)  # multi-label sources (AudioSet)
    fold: int = 0  # cross-validation fold of sources that define them (ESC-50: 1-5), else 0


@dataclass
class WorkItem:
    key: str  # video id, unique within the source
    media: str  # path relative to the source folder
    split: str
    clips: Optional[list[ClipSpec]]  # None: cut consecutive clips, captions from `narration`
    narration: list[tuple[float, float, str]] = field(default_factory=list)
    video: str = "required"  # "required" | "optional" | "none"
    audio: str = "required"  # "required" | "optional"
    kind: str = "media"  # "media": a video or audio file; "image": a still image (one frame)


@dataclass
class SourceIndex:
    name: str
    items: list[WorkItem]
    bad: list[dict]  # {"item": ..., "reason": ...}
    label_names: list[str] = field(default_factory=list)
    multi_label: bool = False


class LayoutError(ValueError):
    """The source folder does not have the published layout (a required file is missing)."""


def media_index(root: Path) -> dict[str, str]:
    """Media files under `root` by file stem (first in sorted order wins) -> relative path.
    Symlinks are listed as they are; `_checked` refuses one that leads outside `root`."""
    found: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() in MEDIA_EXTENSIONS and path.is_file():
            found.setdefault(path.stem, path.relative_to(root).as_posix())
    return found


def held_out(key: str, fraction: float) -> bool:
    """Whether the training item `key` belongs to the held-out val split: the first 8 bytes of
    sha256(key) as a number in [0, 1) below `fraction`. Stable across machines, runs and Python
    versions (unlike hash()), and independent of which other items exist."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2.0 ** 64 < fraction


def _train_or_val(key: str, cfg: IngestConfig) -> str:
    return "val" if held_out(key, cfg.holdout_fraction) else "train"


class UnsafePath(ValueError):
    """A path or file name from the input that would read outside the source folder."""


# ---------------------------------------------------------------------------------------------
# what every reader shares: paths that stay under --path, rows that are text of a sane size,
# JSON objects whose keys are unique, one form of quarantine entry


def relative_path(text: str) -> PurePosixPath:
    """A media path as an annotation writes it, relative to its folder; UnsafePath when it is
    absolute or has a '..' component (it would name a file outside the source folder)."""
    if not text or "\0" in text:
        raise UnsafePath(f"path {text!r} is empty or holds a NUL byte")
    path = PurePosixPath(text)
    if path.is_absolute() or text.startswith("\\"):
        raise UnsafePath(f"path {text!r} is absolute; media paths must be relative to --path")
    if ".." in path.parts:
        raise UnsafePath(f"path {text!r} has a '..' component; media paths must stay under --path")
    return path


def file_name(text: str, field: str) -> str:
    """A name an annotation gives a media file by (video id, file name): no folders in it."""
    if text in ("", ".", "..") or any(c in text for c in "/\\\0"):
        raise UnsafePath(f"{field} {text!r} is not a file name (a path, '..' or empty); media "
                         "are looked up by name under --path")
    return text


def inside(root: Path, relative: str) -> Path:
    """The file `relative` (a path under `root`) names, resolved through any symlinks; UnsafePath
    when it is absolute, has a '..' component, or resolves to a place outside `root`. Every
    reader checks every media file (and annotation file) with this before it is used."""
    relative_path(relative)
    base = root.resolve()
    try:
        target = (base / relative).resolve()
    except (OSError, RuntimeError) as err:  # a symlink loop
        raise UnsafePath(f"path {relative!r} cannot be resolved: {err}") from None
    if not target.is_relative_to(base):
        raise UnsafePath(f"{relative!r} leads outside --path (a symlink to {target}); the "
                         "ingest reads nothing outside the source folder")
    return target


def _missing_media(where: str, bad: list[dict], named: str, looked_for: str) -> None:
    """Quarantine the row `where`, which names a media file (`named`, e.g. "video 'abc'") that
    is not there: none matches `looked_for` (a path or pattern under the source folder)."""
    bad.append({"item": where, "reason": f"{named}: no media file {looked_for} exists under "
                                         "the source folder"})


def _checked(root: Path, rel: Optional[str], where: str, bad: list[dict], named: str,
             looked_for: str) -> Optional[str]:
    """The media a row names, as a path relative to `root`, once it is known to be a file under
    `root`; None after quarantining the row (`where`): `_missing_media` when `rel` is None or
    no file, the path's fault when it leads outside."""
    if rel is not None:
        try:
            if inside(root, rel).is_file():
                return rel
        except UnsafePath as err:
            bad.append({"item": where, "reason": str(err)})
            return None
    _missing_media(where, bad, named, looked_for)
    return None


def _annotation(root: Path, path: Path) -> Path:
    """An annotation file under `root`, refused when a symlink takes it outside."""
    try:
        inside(root, _rel(root, path))
    except UnsafePath as err:
        raise LayoutError(f"{path}: {err}") from None
    return path


def _lines(path: Path, root: Path, bad: Optional[list[dict]]) -> Iterator[tuple[int, str]]:
    """(line number, text) of a text file, a line at a time. A line that is not UTF-8 or is
    longer than bounds.MAX_ROW_BYTES is quarantined in `bad` and skipped (read in pieces: it
    is never held whole); with `bad` None (a class list, where a lost line would shift every
    index after it) it is a LayoutError."""
    where = _rel(root, path)
    with open(_annotation(root, path), "rb") as fh:
        line_no = 0
        while raw := fh.readline(bounds.MAX_ROW_BYTES + 1):
            line_no += 1
            reason = None
            if len(raw) > bounds.MAX_ROW_BYTES:
                size = len(raw)
                while not raw.endswith(b"\n") and (raw := fh.readline(1 << 20)):
                    size += len(raw)
                reason = (f"row of {size} bytes, more than the {bounds.MAX_ROW_BYTES} an "
                          "annotation row may have")
            else:
                try:
                    text = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
                except UnicodeDecodeError as err:
                    reason = f"row is not UTF-8 text ({err.reason} at byte {err.start})"
            if reason is None:
                yield line_no, text
            elif bad is None:
                raise LayoutError(f"{path}:{line_no}: {reason}")
            else:
                bad.append({"item": f"{where}:{line_no}", "reason": reason})


def _csv_rows(path: Path, root: Path, bad: list[dict],
              skip_initial_space: bool = False) -> Iterator[tuple[int, list[str]]]:
    """(line number, cells) of a CSV file whose rows are single lines (all published lists)."""
    for line_no, text in _lines(path, root, bad):
        row = next(csv.reader([text], skipinitialspace=skip_initial_space), [])
        if row:
            yield line_no, row


class _JsonObject(dict):
    """A JSON object that remembers which keys it held more than once (json.loads keeps the
    last silently)."""

    duplicates: list[str]


def _json_object(pairs: list[tuple[str, Any]]) -> _JsonObject:
    obj = _JsonObject(pairs)
    obj.duplicates = sorted(k for k, n in Counter(k for k, _ in pairs).items() if n > 1)
    return obj


def _load_json(path: Path, root: Path) -> Any:
    """An annotation JSON file, its objects as _JsonObject; LayoutError when it is not UTF-8
    JSON (the whole file is one document: no row of it can be used alone)."""
    data = _annotation(root, path).read_bytes()
    try:
        return json.loads(data.decode("utf-8-sig"), object_pairs_hook=_json_object)
    except UnicodeDecodeError as err:
        raise LayoutError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except ValueError as err:
        raise LayoutError(f"{path}: not valid JSON: {err}") from None


def _no_duplicates(value: Any, where: str) -> None:
    """ValueError when any object nested in `value` held a key twice (which one is meant is
    unknown)."""
    if isinstance(value, _JsonObject):
        if value.duplicates:
            raise ValueError(f"{where}: key {value.duplicates[0]!r} appears more than once")
        for item in value.values():
            _no_duplicates(item, where)
    elif isinstance(value, list):
        for item in value:
            _no_duplicates(item, where)


def _duplicate(seen: dict[str, str], key: str, where: str, bad: list[dict], what: str) -> bool:
    """Whether `key` was seen before (then the row `where` is quarantined, naming the first)."""
    if key in seen:
        bad.append({"item": where, "reason": f"duplicate: {what} {key!r} is already at "
                                             f"{seen[key]}; remove one of the two rows"})
        return True
    seen[key] = where
    return False


def _seconds(start: Any, end: Any, where: str,
             fields: tuple[str, str] = ("start", "end")) -> tuple[float, float]:
    """A segment's bounds (named `fields` in the annotation), within a raw file's length and in
    order."""
    first = bounds.number(start, fields[0], 0.0, bounds.MAX_MEDIA_SECONDS, where)
    last = bounds.number(end, fields[1], 0.0, bounds.MAX_MEDIA_SECONDS, where)
    if last < first:
        raise bounds.OutOfBounds(f"{where}: {fields[1]}={end!r} is before {fields[0]}={start!r}")
    return first, last


def _find(root: Path, pattern: str, source: str, what: str) -> list[Path]:
    hits = sorted(root.rglob(pattern))
    if not hits:
        raise LayoutError(f"{source}: no {pattern} under {root} ({what}); is --path the "
                          f"{source} folder in its published layout?")
    return [_annotation(root, hit) for hit in hits]


def _rel(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


# ---------------------------------------------------------------------------------------------


def read_howto100m(root: Path, cfg: IngestConfig) -> SourceIndex:
    """caption.json: {video_id: {"start": [...], "end": [...], "text": [...]}}; videos anywhere
    under the folder named <video_id>.<ext>. All clips are for pretraining (split train)."""
    path = _find(root, "caption.json", "howto100m", "the narration file")[0]
    captions = _load_json(path, root)
    if not isinstance(captions, dict):
        raise LayoutError(f"{path}: expected a JSON object of video ids, got "
                          f"{type(captions).__name__}")
    media = media_index(root)
    items, bad = [], []
    for vid in sorted(captions):
        entry = captions[vid]
        where = f"{_rel(root, path)}[{vid!r}]"
        if vid in captions.duplicates:
            bad.append({"item": where, "reason": f"video id {vid!r} appears more than once in "
                                                 f"{path.name}; which entry is meant is unknown"})
            continue
        try:
            file_name(vid, "video id")
            _no_duplicates(entry, where)
            starts, ends, texts = entry["start"], entry["end"], entry["text"]
            if not all(isinstance(x, list) for x in (starts, ends, texts)):
                raise ValueError("start/end/text must be lists")
            if not len(starts) == len(ends) == len(texts):
                raise ValueError(f"start/end/text have lengths {len(starts)}/{len(ends)}/{len(texts)}")
            narration = [(*_seconds(s, e, f"{where}[{i}]"),
                          bounds.text(t, "text", f"{where}[{i}]"))
                         for i, (s, e, t) in enumerate(zip(starts, ends, texts))]
        except (KeyError, TypeError, ValueError) as err:
            bad.append({"item": where, "reason": f"malformed caption entry: {err}"})
            continue
        rel = _checked(root, media.get(vid), where, bad, f"video {vid!r}", f"{vid}.*")
        if rel is not None:
            items.append(WorkItem(vid, rel, "train", None, narration))
    return SourceIndex("howto100m", items, bad)


def _read_csv(path: Path, root: Path, required: list[str], bad: list[dict]) -> list[tuple[int, dict]]:
    """Rows of a CSV with a header as (line number, dict); rows with a wrong field count, not
    UTF-8 or too long go to `bad`. A header without the required columns is a layout error."""
    rows_of = _csv_rows(path, root, bad)
    _, header = next(rows_of, (0, None))
    if header is None or not set(required) <= set(h.strip() for h in header):
        raise LayoutError(f"{path}: expected a header with columns {', '.join(required)}, "
                          f"got {header}")
    header = [h.strip() for h in header]
    rows = []
    for line_no, row in rows_of:
        if len(row) != len(header):
            bad.append({"item": f"{_rel(root, path)}:{line_no}",
                        "reason": f"malformed row: {len(row)} fields, the header has "
                                  f"{len(header)}"})
            continue
        rows.append((line_no, dict(zip(header, (c.strip() for c in row)))))
    return rows


def read_kinetics(root: Path, cfg: IngestConfig) -> SourceIndex:
    """CSV files (label,youtube_id,time_start,time_end,split) anywhere under the folder; clips
    named by the common downloaders <youtube_id>_<time_start:06d>_<time_end:06d>.<ext>."""
    paths = [p for p in _find(root, "*.csv", "kinetics", "the annotation CSVs")]
    media = media_index(root)
    bad: list[dict] = []
    rows = []
    for path in paths:
        for line, row in _read_csv(path, root, ["youtube_id", "time_start", "time_end", "split"], bad):
            rows.append((path, line, row))
    names = sorted({r["label"] for _, _, r in rows if r.get("label")})
    index = {n: i for i, n in enumerate(names)}
    splits = {"train": "train", "val": "val", "validate": "val", "valid": "val", "test": "test"}
    items, seen = [], {}
    for path, line, row in rows:
        where = f"{_rel(root, path)}:{line}"
        try:
            file_name(row["youtube_id"], "youtube_id")
            start, end = _seconds(row["time_start"], row["time_end"], where,
                                  ("time_start", "time_end"))
            start, end = int(start), int(end)
            split = splits[row["split"]]
        except KeyError:
            bad.append({"item": where, "reason": f"malformed row: split must be one of "
                                                 f"{sorted(splits)}, got {row['split']!r}"})
            continue
        except ValueError as err:
            bad.append({"item": where, "reason": f"malformed row: {err}"})
            continue
        key = f"{row['youtube_id']}_{start:06d}_{end:06d}"
        if _duplicate(seen, key, where, bad, "clip"):
            continue
        rel = _checked(root, media.get(key), where, bad, f"clip {key!r}", f"{key}.*")
        if rel is None:
            continue
        label = index.get(row.get("label", ""), -1)
        items.append(WorkItem(key, rel, split, [ClipSpec(label=label)], audio="optional"))
    return SourceIndex("kinetics", items, bad, names)


def read_ucf101(root: Path, cfg: IngestConfig) -> SourceIndex:
    """classInd.txt ("<index> <Class>"), trainlist0N.txt ("<Class>/<file> <index>") and
    testlist0N.txt ("<Class>/<file>") for N = ingest.ucf101_split; videos found by file name.
    The val split holds out whole groups of the train list (v_<Class>_gGG_cCC: the clips of a
    group come from one long video, so a clip-wise hold-out would leak near-duplicates)."""
    class_file = _find(root, "classInd.txt", "ucf101", "the class list")[0]
    bad: list[dict] = []
    names: dict[int, str] = {}
    for line_no, line in _lines(class_file, root, None):
        parts = line.split()
        if not parts:
            continue
        where = f"{class_file}:{line_no}"
        if len(parts) != 2:
            raise LayoutError(f"{where}: expected '<index> <ClassName>', got {line!r}")
        try:
            number = bounds.number(parts[0], "index", 1, bounds.MAX_CLASSES, where, integer=True)
        except ValueError as err:
            raise LayoutError(str(err)) from None
        if number in names:
            raise LayoutError(f"{where}: class index {number} is also {names[number]!r}; each "
                              "index must appear once")
        names[number] = parts[1]
    label_names = [names[i] for i in sorted(names)]
    index = {n: i for i, n in enumerate(label_names)}
    media = {Path(rel).name: rel for rel in media_index(root).values()}
    items, seen = [], {}
    n = cfg.ucf101_split
    for split, pattern in (("train", f"trainlist0{n}.txt"), ("test", f"testlist0{n}.txt")):
        list_file = _find(root, pattern, "ucf101", f"the {split} list of split {n}")[0]
        for line_no, line in _lines(list_file, root, bad):
            parts = line.split()
            if not parts:
                continue
            where = f"{_rel(root, list_file)}:{line_no}"
            try:
                path_parts = relative_path(parts[0]).parts
            except UnsafePath as err:
                bad.append({"item": where, "reason": str(err)})
                continue
            class_name = path_parts[0]
            if len(parts) > 2 or len(path_parts) != 2 or class_name not in index or (
                    len(parts) == 2 and not parts[1].isdecimal()):
                bad.append({"item": where, "reason": f"malformed row {line.strip()!r}: expected "
                                                     "'<Class>/<file> [<index>]' with a known class"})
                continue
            file = path_parts[1]
            if _duplicate(seen, file, where, bad, "video"):
                continue
            rel = _checked(root, media.get(file), where, bad, f"video {file!r}", file)
            if rel is None:
                continue
            stem = Path(file).stem
            group = stem.rsplit("_c", 1)[0]  # v_<Class>_gGG
            item_split = _train_or_val(group, cfg) if split == "train" else split
            items.append(WorkItem(stem, rel, item_split,
                                  [ClipSpec(label=index[class_name])], audio="optional"))
    return SourceIndex("ucf101", items, bad, label_names)


def read_esc50(root: Path, cfg: IngestConfig) -> SourceIndex:
    """meta/esc50.csv (filename,fold,target,category,esc10,src_file,take), audio/<filename>;
    fold ingest.esc50_test_fold is the test split."""
    meta = _find(root, "esc50.csv", "esc50", "meta/esc50.csv")[0]
    bad: list[dict] = []
    rows = _read_csv(meta, root, ["filename", "fold", "target", "category"], bad)
    media = {Path(rel).name: rel for rel in media_index(root).values()}
    names: dict[int, str] = {}
    items, seen = [], {}
    for line, row in rows:
        where = f"{_rel(root, meta)}:{line}"
        try:
            file_name(row["filename"], "filename")
            fold = bounds.number(row["fold"], "fold", 1, bounds.MAX_FOLD, where, integer=True)
            target = bounds.number(row["target"], "target", 0, bounds.MAX_CLASSES - 1, where,
                                   integer=True)
            if names.setdefault(target, row["category"]) != row["category"]:
                raise ValueError(f"target {target} is category {names[target]!r} in an earlier "
                                 f"row but {row['category']!r} here")
        except ValueError as err:
            bad.append({"item": where, "reason": f"malformed row: {err}"})
            continue
        if _duplicate(seen, row["filename"], where, bad, "file"):
            continue
        rel = _checked(root, media.get(row["filename"]), where, bad,
                       f"file {row['filename']!r}", row["filename"])
        if rel is None:
            continue
        split = "test" if fold == cfg.esc50_test_fold else "train"
        items.append(WorkItem(Path(row["filename"]).stem, rel, split,
                              [ClipSpec(label=target, fold=fold)], video="none"))
    label_names = [names.get(i, f"class_{i}") for i in range(max(names) + 1)] if names else []
    return SourceIndex("esc50", items, bad, label_names)


def read_msrvtt(root: Path, cfg: IngestConfig) -> SourceIndex:
    """MSRVTT_data.json ({"videos": [{video_id, split}], "sentences": [{video_id, caption}]});
    when the 1k-A test CSV (MSRVTT_JSFUSION_test.csv: key,vid_key,video_id,sentence) is present,
    its videos with its one sentence each are the test split, the videos annotated `validate`
    the val split (what sweeps tune on) and all other videos train."""
    path = _find(root, "MSRVTT_data.json", "msrvtt", "the annotation file")[0]
    data = _load_json(path, root)
    try:
        if data.duplicates:
            raise ValueError(f"key {data.duplicates[0]!r} appears more than once")
        videos, sentences = data["videos"], data["sentences"]
        if not (isinstance(videos, list) and isinstance(sentences, list)):
            raise TypeError("'videos' and 'sentences' must be lists")
    except (AttributeError, ValueError, KeyError, TypeError) as err:
        raise LayoutError(f"{path}: expected JSON with 'videos' and 'sentences' lists: {err}") from None
    bad: list[dict] = []
    captions: dict[str, list[str]] = {}
    for i, sent in enumerate(sentences):
        where = f"{_rel(root, path)}:sentences[{i}]"
        try:
            _no_duplicates(sent, where)
            captions.setdefault(str(sent["video_id"]), []).append(
                bounds.text(sent["caption"], "caption", where))
        except (KeyError, TypeError, ValueError) as err:
            bad.append({"item": where, "reason": f"malformed sentence: needs video_id and "
                                                 f"caption: {err}"})
    test_csv = [_annotation(root, p) for p in sorted(root.rglob("MSRVTT_JSFUSION_test.csv"))]
    test_caption: dict[str, str] = {}
    if test_csv:
        tested: dict[str, str] = {}
        for line, row in _read_csv(test_csv[0], root, ["video_id", "sentence"], bad):
            where = f"{_rel(root, test_csv[0])}:{line}"
            try:
                sentence = bounds.text(row["sentence"], "sentence", where)
            except ValueError as err:
                bad.append({"item": where, "reason": str(err)})
                continue
            if not _duplicate(tested, row["video_id"], where, bad, "video"):
                test_caption[row["video_id"]] = sentence
    splits = {"train": "train", "validate": "val", "val": "val", "test": "test"}
    media = media_index(root)
    items, seen = [], {}
    for i, video in enumerate(videos):
        where = f"{_rel(root, path)}:videos[{i}]"
        try:
            _no_duplicates(video, where)
            vid = file_name(str(video["video_id"]), "video_id")
            split = splits[video["split"]]
        except (KeyError, TypeError, ValueError) as err:
            bad.append({"item": where, "reason": f"malformed video entry {str(video)[:200]}: "
                        f"needs video_id and split in {sorted(splits)} ({err})"})
            continue
        if _duplicate(seen, vid, where, bad, "video_id"):
            continue
        if test_csv:
            split = "test" if vid in test_caption else "val" if split == "val" else "train"
        texts = [test_caption[vid]] if vid in test_caption else captions.get(vid, [])
        rel = _checked(root, media.get(vid), where, bad, f"video {vid!r}", f"{vid}.*")
        if rel is not None:
            items.append(WorkItem(vid, rel, split, [ClipSpec(captions=texts)], audio="optional"))
    return SourceIndex("msrvtt", items, bad)


def read_youcook2(root: Path, cfg: IngestConfig) -> SourceIndex:
    """youcookii_annotations_trainval.json ({"database": {vid: {subset, recipe_type,
    annotations: [{segment: [s, e], sentence}]}}}); videos under
    raw_videos/<subset>/<recipe_type>/<vid>.<ext> (or anywhere, by name). One clip per
    annotated segment; label = recipe type. The paper reports YouCook2 on its validation
    subset, which is the test split here; val is held out of the training subset by video."""
    path = _find(root, "youcookii_annotations_trainval.json", "youcook2", "the annotations")[0]
    try:
        database = _load_json(path, root)["database"]
        if not isinstance(database, dict):
            raise TypeError(f"'database' is a {type(database).__name__}")
    except (KeyError, TypeError) as err:
        raise LayoutError(f"{path}: expected JSON with a 'database' object: {err!r}") from None
    media = media_index(root)
    recipes = sorted({str(v.get("recipe_type")) for v in database.values() if isinstance(v, dict)})
    index = {r: i for i, r in enumerate(recipes)}
    splits = {"training": "train", "validation": "test"}
    items, bad = [], []
    for vid in sorted(database):
        entry = database[vid]
        where = f"{_rel(root, path)}[{vid!r}]"
        if vid in database.duplicates:
            bad.append({"item": where, "reason": f"video id {vid!r} appears more than once in "
                                                 f"{path.name}; which entry is meant is unknown"})
            continue
        try:
            file_name(vid, "video id")
            _no_duplicates(entry, where)
            split = splits[entry["subset"]]
            split = _train_or_val(vid, cfg) if split == "train" else split
            clips = []
            for n, a in enumerate(entry["annotations"]):
                start, end = _seconds(a["segment"][0], a["segment"][1], f"{where}[{n}]",
                                      ("segment[0]", "segment[1]"))
                clips.append(ClipSpec(start, end, [bounds.text(a["sentence"], "sentence",
                                                               f"{where}[{n}]")],
                                      index[str(entry["recipe_type"])]))
        except (KeyError, TypeError, ValueError, IndexError) as err:
            bad.append({"item": where, "reason": f"malformed entry: {err!r}"})
            continue
        rel = _checked(root, media.get(vid), where, bad, f"video {vid!r}", f"{vid}.*")
        if rel is not None:
            items.append(WorkItem(vid, rel, split, clips, audio="optional"))
    return SourceIndex("youcook2", items, bad, recipes)


AUDIOSET_LISTS = {"balanced_train_segments.csv": "train",
                  "unbalanced_train_segments.csv": "train_unbalanced",
                  "eval_segments.csv": "test"}


def read_audioset(root: Path, cfg: IngestConfig) -> SourceIndex:
    """Segment CSVs (# comment lines, then YTID, start_seconds, end_seconds, positive_labels)
    and class_labels_indices.csv (index,mid,display_name); media named <YTID>_<start_seconds as
    in the CSV>.<ext> or Y<YTID>.<ext>. Multi-label. Splits by list (AUDIOSET_LISTS):
    balanced_train_segments.csv is `train` less the held-out `val`, unbalanced_train_segments.csv
    `train_unbalanced` (the ~2M clips; a training recipe picks the lists it trains on) and
    eval_segments.csv `test`."""
    class_file = _find(root, "class_labels_indices.csv", "audioset", "the class list")[0]
    bad: list[dict] = []
    classes = _read_csv(class_file, root, ["index", "mid", "display_name"], bad)
    if bad:  # a class lost would shift or drop labels of every segment
        raise LayoutError(f"{class_file}: {bad[0]['item']}: {bad[0]['reason']}")
    mids: dict[str, int] = {}
    for line, row in classes:
        try:
            number = bounds.number(row["index"], "index", 0, bounds.MAX_CLASSES - 1,
                                   f"{class_file}:{line}", integer=True)
        except ValueError as err:
            raise LayoutError(str(err)) from None
        if row["mid"] in mids:
            raise LayoutError(f"{class_file}:{line}: mid {row['mid']!r} appears more than once")
        mids[row["mid"]] = number
    if sorted(mids.values()) != list(range(len(mids))):
        raise LayoutError(f"{class_file}: class indices must be 0..{len(mids) - 1}, each once")
    label_names = [row["display_name"] for _, row in sorted(classes, key=lambda r: int(r[1]["index"]))]
    media = media_index(root)
    items, seen = [], {}
    for path in _find(root, "*segments*.csv", "audioset", "the segment CSVs"):
        if path.name not in AUDIOSET_LISTS:
            raise LayoutError(f"{path}: not one of AudioSet's segment lists "
                              f"({', '.join(AUDIOSET_LISTS)}), so its split is unknown; rename "
                              "it to the published name or move it out of the source folder")
        split = AUDIOSET_LISTS[path.name]
        for line_no, row in _csv_rows(path, root, bad, skip_initial_space=True):
            if row[0].startswith("#"):
                continue
            where = f"{_rel(root, path)}:{line_no}"
            try:
                if len(row) != 4:
                    raise ValueError(f"{len(row)} fields")
                ytid, start_text = file_name(row[0], "YTID"), row[1]
                _seconds(start_text, row[2], where, ("start_seconds", "end_seconds"))
                labels = sorted(mids[m] for m in row[3].split(","))
            except (ValueError, KeyError) as err:
                bad.append({"item": where, "reason": "malformed row: expected YTID, "
                            "start_seconds, end_seconds, \"positive_labels\" with known "
                            f"label ids, got {str(row)[:200]} ({err})"})
                continue
            if _duplicate(seen, ytid, where, bad, "segment"):
                continue
            rel = _checked(root, media.get(f"{ytid}_{start_text}") or media.get(f"Y{ytid}"),
                           where, bad, f"segment {ytid!r}", f"{ytid}_{start_text}.* or Y{ytid}.*")
            if rel is None:
                continue
            item_split = _train_or_val(ytid, cfg) if split == "train" else split
            items.append(WorkItem(ytid, rel, item_split, [ClipSpec(labels=labels)],
                                  video="optional"))
    return SourceIndex("audioset", items, bad, label_names, multi_label=True)


def read_mit(root: Path, cfg: IngestConfig) -> SourceIndex:
    """Moments in Time (Moments_in_Time_Raw/): moments_categories.txt ("<name>,<index>" lines:
    the labels), trainingSet.csv and validationSet.csv (no header; rows
    "<class>/<file>,<class>,<agreement>,<disagreement>"), videos at training/<class>/<file> and
    validation/<class>/<file>. training is `train` less the held-out `val`; validation is `test`
    (the paper reports MiT on it). Audio is optional (some videos are silent)."""
    categories = _find(root, "moments_categories.txt", "mit", "the class list")[0]
    base = categories.parent  # Moments_in_Time_Raw/
    names: dict[int, str] = {}
    for line_no, line in _lines(categories, root, None):
        if not line.strip():
            continue
        name, _, number = line.rpartition(",")
        if not name:
            raise LayoutError(f"{categories}:{line_no}: expected '<name>,<index>', got {line!r}")
        try:
            index_of = bounds.number(number.strip(), "index", 0, bounds.MAX_CLASSES - 1,
                                     f"{categories}:{line_no}", integer=True)
        except ValueError as err:
            raise LayoutError(str(err)) from None
        names[index_of] = name.strip()
    if sorted(names) != list(range(len(names))):
        raise LayoutError(f"{categories}: class indices must be 0..{len(names) - 1}, each once")
    label_names = [names[i] for i in range(len(names))]
    index = {n: i for i, n in enumerate(label_names)}
    items: list[WorkItem] = []
    bad: list[dict] = []
    seen: dict[str, str] = {}
    for list_name, folder, split in (("trainingSet.csv", "training", "train"),
                                     ("validationSet.csv", "validation", "test")):
        list_file = base / list_name
        if not list_file.is_file():
            raise LayoutError(f"mit: no {list_name} beside {categories} (the {folder} list); is "
                              "--path the Moments_in_Time_Raw folder in its published layout?")
        for line_no, row in _csv_rows(list_file, root, bad):
            where = f"{_rel(root, list_file)}:{line_no}"
            cells = [c.strip() for c in row]
            try:
                if len(cells) != 4 or cells[1] not in index or "/" not in cells[0]:
                    raise ValueError(f"got {str(row)[:200]}")
                relative_path(cells[0])
                for name, count in (("agreement", cells[2]), ("disagreement", cells[3])):
                    bounds.number(count, name, 0, 1000, where, integer=True)
            except UnsafePath as err:
                bad.append({"item": where, "reason": str(err)})
                continue
            except ValueError as err:
                bad.append({"item": where, "reason": "malformed row: expected '<class>/<file>,"
                            "<class>,<agreement>,<disagreement>' with a class of "
                            f"{categories.name} and integer counts: {err}"})
                continue
            rel = f"{_rel(root, base / folder)}/{cells[0]}"
            if _duplicate(seen, rel, where, bad, "video"):
                continue
            if _checked(root, rel, where, bad, f"video {cells[0]!r}", rel) is None:
                continue
            key = f"{folder}/{PurePosixPath(cells[0]).with_suffix('').as_posix()}"
            items.append(WorkItem(key, rel,
                                  _train_or_val(key, cfg) if split == "train" else split,
                                  [ClipSpec(label=index[cells[1]])], audio="optional"))
    return SourceIndex("mit", items, bad, label_names)


def _images(folder: Path) -> list[Path]:
    """Image files of `folder`, symlinks included (`_checked` refuses those leading outside)."""
    return sorted(p for p in folder.iterdir()
                  if p.suffix.lower() in IMAGE_EXTENSIONS and not p.is_dir())


def _folder_inside(root: Path, folder: Path, bad: list[dict]) -> bool:
    """Whether `folder` (a class folder) stays under `root`; quarantined, unlisted, if not."""
    try:
        inside(root, _rel(root, folder))
        return True
    except UnsafePath as err:
        bad.append({"item": _rel(root, folder), "reason": f"class folder: {err}"})
        return False


def read_imagenet(root: Path, cfg: IngestConfig) -> SourceIndex:
    """ILSVRC2012 as distributed for the localisation challenge: LOC_synset_mapping.txt
    ("<wnid> <name>, <other names>" lines; label = line order, label name = the first name),
    ILSVRC/Data/CLS-LOC/train/<wnid>/*.JPEG and ILSVRC/Data/CLS-LOC/val/*.JPEG labelled by
    LOC_val_solution.csv (ImageId,PredictionString "<wnid> x1 y1 x2 y2 ..."; the label is the
    first wnid), or val/<wnid>/*.JPEG (class folders, no CSV needed). train is `train` less the
    held-out `val`; val is `test` (the paper's ImageNet numbers are on it). The unlabelled
    test/ images are not read. Each image becomes a one-frame clip (WorkItem.kind "image")."""
    # the published places first: a walk of the whole tree reads 1.3M names
    mapping = root / "LOC_synset_mapping.txt"
    if not mapping.is_file():
        mapping = _find(root, "LOC_synset_mapping.txt", "imagenet", "the class list")[0]
    wnids: list[str] = []
    label_names: list[str] = []
    for line_no, line in _lines(mapping, root, None):
        if not line.strip():
            continue
        wnid, _, names = line.strip().partition(" ")
        if not wnid or not names.strip():
            raise LayoutError(f"{mapping}:{line_no}: expected '<wnid> <name>, <other names>', "
                              f"got {line!r}")
        wnids.append(wnid)
        label_names.append(names.split(",")[0].strip())
    index = {w: i for i, w in enumerate(wnids)}
    if len(index) != len(wnids):
        raise LayoutError(f"{mapping}: a wnid appears more than once; each class once")
    places = [mapping.parent, root, *root.glob("*")]
    data = [d for place in places for d in (place / "ILSVRC" / "Data" / "CLS-LOC",
                                            place / "Data" / "CLS-LOC", place / "CLS-LOC")
            if (d / "train").is_dir()]
    if not data:
        raise LayoutError(f"imagenet: no ILSVRC/Data/CLS-LOC/train folder under {root}; is "
                          "--path the ILSVRC2012 localisation download in its published layout?")
    data_dir = data[0]
    for folder in (data_dir / "train", data_dir / "val"):
        _annotation(root, folder)  # not a symlink out of --path
    items: list[WorkItem] = []
    bad: list[dict] = []

    def image_item(image: Path, label: int, split: str) -> None:
        rel = _checked(root, _rel(root, image), _rel(root, image), bad, "image",
                       _rel(root, image))
        if rel is not None:
            items.append(WorkItem(image.stem, rel, split, [ClipSpec(label=label)],
                                  audio="optional", kind="image"))

    def class_folders(folder: Path, split_of: Callable[[str], str]) -> None:
        for class_dir in sorted(d for d in folder.iterdir() if d.is_dir()):
            if not _folder_inside(root, class_dir, bad):
                continue
            for image in _images(class_dir):
                if class_dir.name not in index:
                    bad.append({"item": _rel(root, image), "reason": f"class folder "
                                f"{class_dir.name!r} is not a wnid of {mapping.name}"})
                    continue
                image_item(image, index[class_dir.name], split_of(image.stem))

    class_folders(data_dir / "train", lambda key: _train_or_val(key, cfg))
    val_dir = data_dir / "val"
    if not val_dir.is_dir():
        raise LayoutError(f"imagenet: no val folder beside {data_dir / 'train'}")
    loose = {p.stem: p for p in _images(val_dir)}
    solution = [p for p in (mapping.parent / "LOC_val_solution.csv",) if p.is_file()] or sorted(
        root.rglob("LOC_val_solution.csv"))
    if loose and not solution:
        raise LayoutError(f"imagenet: {val_dir} holds images but there is no LOC_val_solution.csv "
                          "to label them; add it (it comes with the localisation download) or "
                          "sort the images into val/<wnid>/ class folders")
    if solution:
        labelled: dict[str, str] = {}
        for line, row in _read_csv(solution[0], root, ["ImageId", "PredictionString"], bad):
            where = f"{_rel(root, solution[0])}:{line}"
            image_id, first = row["ImageId"], (row["PredictionString"].split() or [""])[0]
            if first not in index:
                bad.append({"item": where, "reason": "malformed row: PredictionString must start "
                            f"with a wnid of {mapping.name}, got "
                            f"{row['PredictionString'][:200]!r}"})
                continue
            if _duplicate(labelled, image_id, where, bad, "ImageId"):
                continue
            looked_for = f"{_rel(root, val_dir)}/{image_id}.JPEG"
            if image_id not in loose:
                _missing_media(where, bad, f"image {image_id!r}", looked_for)
                continue
            rel = _checked(root, _rel(root, loose[image_id]), where, bad, f"image {image_id!r}",
                           looked_for)
            if rel is not None:
                items.append(WorkItem(image_id, rel, "test", [ClipSpec(label=index[first])],
                                      audio="optional", kind="image"))
        bad += [{"item": _rel(root, path), "reason": f"image has no row in {solution[0].name}, "
                 "so no label"} for stem, path in loose.items() if stem not in labelled]
    class_folders(val_dir, lambda key: "test")
    return SourceIndex("imagenet", items, bad, label_names)


READERS: dict[str, Callable[[Path, IngestConfig], SourceIndex]] = {
    "howto100m": read_howto100m,
    "audioset": read_audioset,
    "kinetics": read_kinetics,
    "ucf101": read_ucf101,
    "esc50": read_esc50,
    "msrvtt": read_msrvtt,
    "youcook2": read_youcook2,
    "mit": read_mit,
    "imagenet": read_imagenet,
}
SOURCES = sorted(READERS) + ["synthetic"]  # what `vatt ingest --source` accepts
