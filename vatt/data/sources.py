"""Readers for the published dataset layouts (../shared/PLATFORM.md, "Data path").

Each reader turns a source folder into a `SourceIndex`: one `WorkItem` per media file (the file,
its split and the clips to cut from it with captions and labels) plus the rows that could not be
used (malformed rows, rows naming a missing media file), each with its reason. Readers only read
the folder; nothing under it is modified.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from vatt.config import IngestConfig

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
    """Media files under `root` by file stem (first in sorted order wins) -> relative path."""
    found: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() in MEDIA_EXTENSIONS and path.is_file():
            found.setdefault(path.stem, path.relative_to(root).as_posix())
    return found


def _find(root: Path, pattern: str, source: str, what: str) -> list[Path]:
    hits = sorted(root.rglob(pattern))
    if not hits:
        raise LayoutError(f"{source}: no {pattern} under {root} ({what}); is --path the "
                          f"{source} folder in its published layout?")
    return hits


def _rel(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


# ---------------------------------------------------------------------------------------------


def read_howto100m(root: Path, cfg: IngestConfig) -> SourceIndex:
    """caption.json: {video_id: {"start": [...], "end": [...], "text": [...]}}; videos anywhere
    under the folder named <video_id>.<ext>. All clips are for pretraining (split train)."""
    path = _find(root, "caption.json", "howto100m", "the narration file")[0]
    try:
        captions = json.loads(path.read_text())
    except ValueError as err:
        raise LayoutError(f"{path}: not valid JSON: {err}") from None
    media = media_index(root)
    items, bad = [], []
    for vid in sorted(captions):
        entry = captions[vid]
        where = f"{_rel(root, path)}[{vid!r}]"
        try:
            starts, ends, texts = entry["start"], entry["end"], entry["text"]
            if not len(starts) == len(ends) == len(texts):
                raise ValueError(f"start/end/text have lengths {len(starts)}/{len(ends)}/{len(texts)}")
            narration = [(float(s), float(e), str(t)) for s, e, t in zip(starts, ends, texts)]
        except (KeyError, TypeError, ValueError) as err:
            bad.append({"item": where, "reason": f"malformed caption entry: {err}"})
            continue
        if vid not in media:
            bad.append({"item": where, "reason": f"captions name video {vid!r} but no media file "
                                                 f"{vid}.* exists under the source folder"})
            continue
        items.append(WorkItem(vid, media[vid], "train", None, narration))
    return SourceIndex("howto100m", items, bad)


def _read_csv(path: Path, root: Path, required: list[str], bad: list[dict]) -> list[tuple[int, dict]]:
    """Rows of a CSV with a header as (line number, dict); rows with a wrong field count go to
    `bad`. A header without the required columns is a layout error."""
    with open(path, newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None or not set(required) <= set(h.strip() for h in header):
            raise LayoutError(f"{path}: expected a header with columns {', '.join(required)}, "
                              f"got {header}")
        header = [h.strip() for h in header]
        rows = []
        for row in reader:
            if not row:
                continue
            if len(row) != len(header):
                bad.append({"item": f"{_rel(root, path)}:{reader.line_num}",
                            "reason": f"malformed row: {len(row)} fields, the header has "
                                      f"{len(header)}"})
                continue
            rows.append((reader.line_num, dict(zip(header, (c.strip() for c in row)))))
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
    items, seen = [], set()
    for path, line, row in rows:
        where = f"{_rel(root, path)}:{line}"
        try:
            start, end = int(float(row["time_start"])), int(float(row["time_end"]))
            split = splits[row["split"]]
        except (ValueError, KeyError):
            bad.append({"item": where, "reason": f"malformed row: time_start/time_end must be "
                        f"numbers and split one of {sorted(splits)}, got {row}"})
            continue
        key = f"{row['youtube_id']}_{start:06d}_{end:06d}"
        if key in seen:
            continue
        seen.add(key)
        if key not in media:
            bad.append({"item": where, "reason": f"row names clip {key!r} but no media file "
                                                 f"{key}.* exists under the source folder"})
            continue
        label = index.get(row.get("label", ""), -1)
        items.append(WorkItem(key, media[key], split, [ClipSpec(label=label)], audio="optional"))
    return SourceIndex("kinetics", items, bad, names)


def read_ucf101(root: Path, cfg: IngestConfig) -> SourceIndex:
    """classInd.txt ("<index> <Class>"), trainlist0N.txt ("<Class>/<file> <index>") and
    testlist0N.txt ("<Class>/<file>") for N = ingest.ucf101_split; videos found by file name."""
    class_file = _find(root, "classInd.txt", "ucf101", "the class list")[0]
    bad: list[dict] = []
    names: dict[int, str] = {}
    for line_no, line in enumerate(class_file.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or not parts[0].isdigit():
            raise LayoutError(f"{class_file}:{line_no}: expected '<index> <ClassName>', got {line!r}")
        names[int(parts[0])] = parts[1]
    label_names = [names[i] for i in sorted(names)]
    index = {n: i for i, n in enumerate(label_names)}
    media = {Path(rel).name: rel for rel in media_index(root).values()}
    items = []
    n = cfg.ucf101_split
    for split, pattern in (("train", f"trainlist0{n}.txt"), ("test", f"testlist0{n}.txt")):
        list_file = _find(root, pattern, "ucf101", f"the {split} list of split {n}")[0]
        for line_no, line in enumerate(list_file.read_text().splitlines(), start=1):
            parts = line.split()
            if not parts:
                continue
            where = f"{_rel(root, list_file)}:{line_no}"
            class_name = parts[0].split("/")[0]
            if len(parts) > 2 or "/" not in parts[0] or class_name not in index or (
                    len(parts) == 2 and not parts[1].isdigit()):
                bad.append({"item": where, "reason": f"malformed row {line!r}: expected "
                                                     "'<Class>/<file> [<index>]' with a known class"})
                continue
            file_name = parts[0].split("/")[-1]
            if file_name not in media:
                bad.append({"item": where, "reason": f"row names video {file_name!r} but it does "
                                                     "not exist under the source folder"})
                continue
            items.append(WorkItem(Path(file_name).stem, media[file_name], split,
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
    items = []
    for line, row in rows:
        where = f"{_rel(root, meta)}:{line}"
        try:
            fold, target = int(row["fold"]), int(row["target"])
        except ValueError:
            bad.append({"item": where, "reason": f"malformed row: fold and target must be "
                                                 f"integers, got {row}"})
            continue
        names.setdefault(target, row["category"])
        if row["filename"] not in media:
            bad.append({"item": where, "reason": f"row names {row['filename']!r} but it does not "
                                                 "exist under the source folder"})
            continue
        split = "test" if fold == cfg.esc50_test_fold else "train"
        items.append(WorkItem(Path(row["filename"]).stem, media[row["filename"]], split,
                              [ClipSpec(label=target, fold=fold)], video="none"))
    label_names = [names.get(i, f"class_{i}") for i in range(max(names) + 1)] if names else []
    return SourceIndex("esc50", items, bad, label_names)


def read_msrvtt(root: Path, cfg: IngestConfig) -> SourceIndex:
    """MSRVTT_data.json ({"videos": [{video_id, split}], "sentences": [{video_id, caption}]});
    when the 1k-A test CSV (MSRVTT_JSFUSION_test.csv: key,vid_key,video_id,sentence) is present,
    its videos with its one sentence each are the test split, the videos annotated `validate`
    the val split (what sweeps tune on) and all other videos train."""
    path = _find(root, "MSRVTT_data.json", "msrvtt", "the annotation file")[0]
    try:
        data = json.loads(path.read_text())
        videos, sentences = data["videos"], data["sentences"]
    except (ValueError, KeyError, TypeError) as err:
        raise LayoutError(f"{path}: expected JSON with 'videos' and 'sentences' lists: {err}") from None
    bad: list[dict] = []
    captions: dict[str, list[str]] = {}
    for i, sent in enumerate(sentences):
        try:
            captions.setdefault(str(sent["video_id"]), []).append(str(sent["caption"]))
        except (KeyError, TypeError):
            bad.append({"item": f"{_rel(root, path)}:sentences[{i}]",
                        "reason": "malformed sentence: needs video_id and caption"})
    test_csv = sorted(root.rglob("MSRVTT_JSFUSION_test.csv"))
    test_caption: dict[str, str] = {}
    if test_csv:
        for _, row in _read_csv(test_csv[0], root, ["video_id", "sentence"], bad):
            test_caption[row["video_id"]] = row["sentence"]
    splits = {"train": "train", "validate": "val", "val": "val", "test": "test"}
    media = media_index(root)
    items = []
    for i, video in enumerate(videos):
        where = f"{_rel(root, path)}:videos[{i}]"
        try:
            vid = str(video["video_id"])
            split = splits[video["split"]]
        except (KeyError, TypeError):
            bad.append({"item": where, "reason": f"malformed video entry {video}: needs video_id "
                                                 f"and split in {sorted(splits)}"})
            continue
        if test_csv:
            split = "test" if vid in test_caption else "val" if split == "val" else "train"
        texts = [test_caption[vid]] if vid in test_caption else captions.get(vid, [])
        if vid not in media:
            bad.append({"item": where, "reason": f"annotation names video {vid!r} but no media "
                                                 f"file {vid}.* exists under the source folder"})
            continue
        items.append(WorkItem(vid, media[vid], split, [ClipSpec(captions=texts)], audio="optional"))
    return SourceIndex("msrvtt", items, bad)


def read_youcook2(root: Path, cfg: IngestConfig) -> SourceIndex:
    """youcookii_annotations_trainval.json ({"database": {vid: {subset, recipe_type,
    annotations: [{segment: [s, e], sentence}]}}}); videos under
    raw_videos/<subset>/<recipe_type>/<vid>.<ext> (or anywhere, by name). One clip per
    annotated segment; label = recipe type."""
    path = _find(root, "youcookii_annotations_trainval.json", "youcook2", "the annotations")[0]
    try:
        database = json.loads(path.read_text())["database"]
    except (ValueError, KeyError, TypeError) as err:
        raise LayoutError(f"{path}: expected JSON with a 'database' object: {err}") from None
    media = media_index(root)
    recipes = sorted({str(v.get("recipe_type")) for v in database.values() if isinstance(v, dict)})
    index = {r: i for i, r in enumerate(recipes)}
    splits = {"training": "train", "validation": "val", "testing": "test"}
    items, bad = [], []
    for vid in sorted(database):
        entry = database[vid]
        where = f"{_rel(root, path)}[{vid!r}]"
        try:
            split = splits[entry["subset"]]
            clips = [ClipSpec(float(a["segment"][0]), float(a["segment"][1]),
                              [str(a["sentence"])], index[str(entry["recipe_type"])])
                     for a in entry["annotations"]]
        except (KeyError, TypeError, ValueError, IndexError) as err:
            bad.append({"item": where, "reason": f"malformed entry: {err!r}"})
            continue
        if vid not in media:
            bad.append({"item": where, "reason": f"annotations name video {vid!r} but no media "
                                                 f"file {vid}.* exists under the source folder"})
            continue
        items.append(WorkItem(vid, media[vid], split, clips, audio="optional"))
    return SourceIndex("youcook2", items, bad, recipes)


def read_audioset(root: Path, cfg: IngestConfig) -> SourceIndex:
    """Segment CSVs (# comment lines, then YTID, start_seconds, end_seconds, positive_labels)
    and class_labels_indices.csv (index,mid,display_name); media named <YTID>_<start_seconds as
    in the CSV>.<ext> or Y<YTID>.<ext>. eval_segments.csv is the test split. Multi-label."""
    class_file = _find(root, "class_labels_indices.csv", "audioset", "the class list")[0]
    bad: list[dict] = []
    classes = _read_csv(class_file, root, ["index", "mid", "display_name"], bad)
    mids = {row["mid"]: int(row["index"]) for _, row in classes}
    label_names = [row["display_name"] for _, row in sorted(classes, key=lambda r: int(r[1]["index"]))]
    media = media_index(root)
    items, seen = [], set()
    for path in _find(root, "*segments*.csv", "audioset", "the segment CSVs"):
        split = "test" if "eval" in path.name else "train"
        with open(path, newline="") as fh:
            for line_no, row in enumerate(csv.reader(fh, skipinitialspace=True), start=1):
                if not row or row[0].startswith("#"):
                    continue
                where = f"{_rel(root, path)}:{line_no}"
                try:
                    ytid, start_text = row[0], row[1]
                    float(start_text), float(row[2])
                    labels = sorted(mids[m] for m in row[3].split(","))
                    if len(row) != 4:
                        raise ValueError
                except (ValueError, IndexError, KeyError):
                    bad.append({"item": where, "reason": "malformed row: expected YTID, "
                                "start_seconds, end_seconds, \"positive_labels\" with known "
                                f"label ids, got {row}"})
                    continue
                if ytid in seen:
                    continue
                seen.add(ytid)
                rel = media.get(f"{ytid}_{start_text}") or media.get(f"Y{ytid}")
                if rel is None:
                    bad.append({"item": where, "reason": f"row names segment {ytid!r} but no media "
                                f"file {ytid}_{start_text}.* or Y{ytid}.* exists under the source folder"})
                    continue
                items.append(WorkItem(ytid, rel, split, [ClipSpec(labels=labels)], video="optional"))
    return SourceIndex("audioset", items, bad, label_names, multi_label=True)


READERS: dict[str, Callable[[Path, IngestConfig], SourceIndex]] = {
    "howto100m": read_howto100m,
    "audioset": read_audioset,
    "kinetics": read_kinetics,
    "ucf101": read_ucf101,
    "esc50": read_esc50,
    "msrvtt": read_msrvtt,
    "youcook2": read_youcook2,
}
