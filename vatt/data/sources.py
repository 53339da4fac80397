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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from vatt.config import IngestConfig

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
    """Media files under `root` by file stem (first in sorted order wins) -> relative path."""
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
    testlist0N.txt ("<Class>/<file>") for N = ingest.ucf101_split; videos found by file name.
    The val split holds out whole groups of the train list (v_<Class>_gGG_cCC: the clips of a
    group come from one long video, so a clip-wise hold-out would leak near-duplicates)."""
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
            stem = Path(file_name).stem
            group = stem.rsplit("_c", 1)[0]  # v_<Class>_gGG
            item_split = _train_or_val(group, cfg) if split == "train" else split
            items.append(WorkItem(stem, media[file_name], item_split,
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
    annotated segment; label = recipe type. The paper reports YouCook2 on its validation
    subset, which is the test split here; val is held out of the training subset by video."""
    path = _find(root, "youcookii_annotations_trainval.json", "youcook2", "the annotations")[0]
    try:
        database = json.loads(path.read_text())["database"]
    except (ValueError, KeyError, TypeError) as err:
        raise LayoutError(f"{path}: expected JSON with a 'database' object: {err}") from None
    media = media_index(root)
    recipes = sorted({str(v.get("recipe_type")) for v in database.values() if isinstance(v, dict)})
    index = {r: i for i, r in enumerate(recipes)}
    splits = {"training": "train", "validation": "test"}
    items, bad = [], []
    for vid in sorted(database):
        entry = database[vid]
        where = f"{_rel(root, path)}[{vid!r}]"
        try:
            split = splits[entry["subset"]]
            split = _train_or_val(vid, cfg) if split == "train" else split
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
    mids = {row["mid"]: int(row["index"]) for _, row in classes}
    label_names = [row["display_name"] for _, row in sorted(classes, key=lambda r: int(r[1]["index"]))]
    media = media_index(root)
    items, seen = [], set()
    for path in _find(root, "*segments*.csv", "audioset", "the segment CSVs"):
        if path.name not in AUDIOSET_LISTS:
            raise LayoutError(f"{path}: not one of AudioSet's segment lists "
                              f"({', '.join(AUDIOSET_LISTS)}), so its split is unknown; rename "
                              "it to the published name or move it out of the source folder")
        split = AUDIOSET_LISTS[path.name]
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
    for line_no, line in enumerate(categories.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        name, _, number = line.rpartition(",")
        if not name or not number.strip().isdigit():
            raise LayoutError(f"{categories}:{line_no}: expected '<name>,<index>', got {line!r}")
        names[int(number)] = name.strip()
    if sorted(names) != list(range(len(names))):
        raise LayoutError(f"{categories}: class indices must be 0..{len(names) - 1}, each once")
    label_names = [names[i] for i in range(len(names))]
    index = {n: i for i, n in enumerate(label_names)}
    items: list[WorkItem] = []
    bad: list[dict] = []
    for list_name, folder, split in (("trainingSet.csv", "training", "train"),
                                     ("validationSet.csv", "validation", "test")):
        list_file = base / list_name
        if not list_file.is_file():
            raise LayoutError(f"mit: no {list_name} beside {categories} (the {folder} list); is "
                              "--path the Moments_in_Time_Raw folder in its published layout?")
        with open(list_file, newline="") as fh:
            for line_no, row in enumerate(csv.reader(fh), start=1):
                if not row:
                    continue
                where = f"{_rel(root, list_file)}:{line_no}"
                cells = [c.strip() for c in row]
                if (len(cells) != 4 or cells[1] not in index or "/" not in cells[0]
                        or not cells[2].isdigit() or not cells[3].isdigit()):
                    bad.append({"item": where, "reason": "malformed row: expected '<class>/<file>,"
                                "<class>,<agreement>,<disagreement>' with a class of "
                                f"{categories.name} and integer counts, got {row}"})
                    continue
                media = base / folder / cells[0]
                if not media.is_file():
                    bad.append({"item": where, "reason": f"row names video {cells[0]!r} but "
                                f"{_rel(root, media)} does not exist"})
                    continue
                key = f"{folder}/{Path(cells[0]).with_suffix('').as_posix()}"
                items.append(WorkItem(key, _rel(root, media),
                                      _train_or_val(key, cfg) if split == "train" else split,
                                      [ClipSpec(label=index[cells[1]])], audio="optional"))
    return SourceIndex("mit", items, bad, label_names)


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


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
    for line_no, line in enumerate(mapping.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        wnid, _, names = line.strip().partition(" ")
        if not wnid or not names.strip():
            raise LayoutError(f"{mapping}:{line_no}: expected '<wnid> <name>, <other names>', "
                              f"got {line!r}")
        wnids.append(wnid)
        label_names.append(names.split(",")[0].strip())
    index = {w: i for i, w in enumerate(wnids)}
    places = [mapping.parent, root, *root.glob("*")]
    data = [d for place in places for d in (place / "ILSVRC" / "Data" / "CLS-LOC",
                                            place / "Data" / "CLS-LOC", place / "CLS-LOC")
            if (d / "train").is_dir()]
    if not data:
        raise LayoutError(f"imagenet: no ILSVRC/Data/CLS-LOC/train folder under {root}; is "
                          "--path the ILSVRC2012 localisation download in its published layout?")
    data_dir = data[0]
    items: list[WorkItem] = []
    bad: list[dict] = []

    def class_folders(folder: Path, split_of: Callable[[str], str]) -> None:
        for class_dir in sorted(d for d in folder.iterdir() if d.is_dir()):
            for image in _images(class_dir):
                if class_dir.name not in index:
                    bad.append({"item": _rel(root, image), "reason": f"class folder "
                                f"{class_dir.name!r} is not a wnid of {mapping.name}"})
                    continue
                items.append(WorkItem(image.stem, _rel(root, image), split_of(image.stem),
                                      [ClipSpec(label=index[class_dir.name])], audio="optional",
                                      kind="image"))

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
        labelled = set()
        for line, row in _read_csv(solution[0], root, ["ImageId", "PredictionString"], bad):
            where = f"{_rel(root, solution[0])}:{line}"
            image_id, first = row["ImageId"], (row["PredictionString"].split() or [""])[0]
            if first not in index:
                bad.append({"item": where, "reason": "malformed row: PredictionString must start "
                            f"with a wnid of {mapping.name}, got {row['PredictionString']!r}"})
                continue
            labelled.add(image_id)
            if image_id not in loose:
                bad.append({"item": where, "reason": f"row names image {image_id!r} but "
                            f"{_rel(root, val_dir)}/{image_id}.JPEG does not exist"})
                continue
            items.append(WorkItem(image_id, _rel(root, loose[image_id]), "test",
                                  [ClipSpec(label=index[first])], audio="optional", kind="image"))
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
