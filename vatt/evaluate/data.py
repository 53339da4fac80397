"""Evaluation data: the ingested datasets -> `data[task][split]` for `evaluate_model`.

    data = build_eval_data(cfg, tasks)                 # reads cfg.data.path (local or s3://)
    outcome = evaluate_checkpoint(loaded, data, tasks, store=store)

Which dataset feeds which task: the first of these folders that `vatt ingest` wrote under
data.path (real sources before the generated default); `datasets={task: name}` overrides it.

    action_linear          kinetics, ucf101, synthetic-ucf101          (train -> test)
    audio_linear           audioset, esc50, synthetic-esc50            (train -> test; ESC-50:
                                                                        folds 1-4 -> fold 5)
    text_video_retrieval   msrvtt, youcook2, synthetic-msrvtt          (test)
    video_audio_retrieval  the same as text_video_retrieval            (test)

Each split is read through the loader in evaluation mode (`num_windows` evenly spread windows
per clip, centre crop, no augmentation, the first captions) every time it is iterated: nothing
decoded is held between batches, so a split of any size takes the memory of a few batches
(feature extraction keeps only the features; fine-tuning reads the split epoch after epoch).
The batches come in a fixed order, the loader's (manifest) order, which Ray Data is told to
preserve, so two evaluations run the model on the same batches; extraction then puts the
features in (clip, window) order, which the probes' results depend on. Only the columns a task
needs are kept (audio-only sources carry no video tensor).

A split is an `EvalSplit`: re-iterable batches that also carry the dataset's `num_classes` and
`label_names` from its manifest, which the probes use instead of "largest label seen + 1", and
its size (`num_clips`, `views_per_clip`) without reading it.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Mapping, Optional

import numpy as np

from vatt.config import Config
from vatt.data.loader import DataError, read_manifest
from vatt.evaluate.runner import TASKS, check_tasks

# task -> datasets to look for under data.path, in order of preference
DEFAULT_DATASETS: dict[str, tuple[str, ...]] = {
    "action_linear": ("kinetics", "ucf101", "synthetic-ucf101"),
    "action_finetune": ("kinetics", "ucf101", "synthetic-ucf101"),
    "audio_linear": ("audioset", "esc50", "synthetic-esc50"),
    "text_video_retrieval": ("msrvtt", "youcook2", "synthetic-msrvtt"),
    "video_audio_retrieval": ("msrvtt", "youcook2", "synthetic-msrvtt"),
}
# the split names a test split may have in a manifest, in order of preference
TEST_SPLITS = ("test", "val", "validation")
METADATA = ("label", "labels", "video_id", "clip_id", "fold")


class EvalSplit:
    """One dataset split, read through the loader each time it is iterated (see the module
    doc), with the manifest's class vocabulary and the split's size."""

    def __init__(self, cfg: Config, dataset: str, split: str, columns: Iterable[str],
                 num_windows: int, num_crops: int, batch_size: int,
                 vocab_words: Optional[tuple[str, ...]], manifest: dict):
        self.cfg, self.dataset, self.split = cfg, dataset, split
        self.columns = set(columns) | set(METADATA) | {"clip_index", "window"}
        if "text" in self.columns:
            self.columns.add("text_mask")
        self.num_windows, self.num_crops, self.batch_size = num_windows, num_crops, batch_size
        self.vocab_words = vocab_words
        self.label_names = list(manifest.get("label_names") or [])
        shards = set(manifest["splits"][split]["shards"])
        clips = [c for c in manifest["clips"] if c.get("shard") in shards]
        self.num_clips = len(clips)
        self.num_videos = len({c.get("video_id", c.get("clip_id")) for c in clips})
        self.views_per_clip = num_windows * num_crops

    @property
    def num_classes(self) -> Optional[int]:
        return len(self.label_names) or None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self.batches()

    def shuffled(self, seed: int) -> Iterator[dict[str, Any]]:
        """The split with its shards read in `seed`'s order (a fine-tuning epoch)."""
        return self.batches(shard_seed=seed)

    def batches(self, shard_seed: Optional[int] = None) -> Iterator[dict[str, Any]]:
        """Batches of `batch_size` views (torch tensors; strings as lists) holding `columns`."""
        import torch

        from vatt.data.loader import build_dataset

        ds = build_dataset(self.cfg, self.split, training=False, dataset=self.dataset,
                           root=str(self.cfg.data.path), num_windows=self.num_windows,
                           num_crops=self.num_crops, vocab_words=self.vocab_words,
                           shard_seed=shard_seed)
        ds.context.execution_options.preserve_order = True  # the same batches every time
        empty = True
        for rows in ds.iter_batches(batch_size=self.batch_size, batch_format="numpy",
                                    prefetch_batches=1):
            batch: dict[str, Any] = {}
            for key, value in rows.items():
                if key not in self.columns:
                    continue
                batch[key] = [str(v) for v in value] if value.dtype == object \
                    or value.dtype.kind in "US" \
                    else torch.from_numpy(np.require(value, requirements=["C", "W"]))
            empty = False
            yield batch
        if empty:
            raise DataError(f"dataset {self.dataset}, split {self.split}: no clip could be read")


def _has_manifest(root: str, dataset: str, storage=None) -> bool:
    try:
        read_manifest(root, dataset, storage)
    except DataError:
        return False
    return True


def choose_datasets(cfg: Config, tasks: Iterable[str],
                    datasets: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    """task -> dataset folder under data.path (see the module doc)."""
    root = str(cfg.data.path)
    chosen: dict[str, str] = {}
    for task in check_tasks(tasks):
        if datasets and task in datasets:
            if not _has_manifest(root, datasets[task], cfg.storage):
                raise DataError(f"{task}: no ingested dataset {datasets[task]!r} under data.path="
                                f"{root} (no manifest.json); run `vatt ingest` for it first")
            chosen[task] = datasets[task]
            continue
        found = [name for name in DEFAULT_DATASETS[task] if _has_manifest(root, name, cfg.storage)]
        if not found:
            raise DataError(
                f"{task}: none of {', '.join(DEFAULT_DATASETS[task])} is ingested under "
                f"data.path={root}; run `vatt ingest --source synthetic` (the default dataset) "
                "or ingest one of them, or point data.path at the ingested folder")
        chosen[task] = found[0]
    return chosen


def _split_name(manifest: dict, wanted: str, dataset: str) -> str:
    splits = manifest["splits"]
    names = (wanted,) if wanted == "train" else TEST_SPLITS
    for name in names:
        if name in splits and splits[name]["shards"]:
            return name
    raise DataError(f"dataset {dataset}: no {' / '.join(names)} split with clips (it has "
                    f"{sorted(splits)}); evaluation needs it")


def read_split(cfg: Config, dataset: str, split: str, columns: Iterable[str],
               num_windows: Optional[int] = None, batch_size: Optional[int] = None,
               num_crops: int = 1, vocab_words: Optional[tuple[str, ...]] = None) -> EvalSplit:
    """One split of `dataset` in evaluation mode (`num_windows` x `num_crops` views per clip),
    in batches of `batch_size` (default eval.batch_size) holding `columns` plus the metadata;
    read when iterated."""
    manifest = read_manifest(str(cfg.data.path), dataset, cfg.storage)
    name = _split_name(manifest, split, dataset)
    if num_crops < 1:
        raise ValueError(f"num_crops={num_crops}: evaluation needs at least one crop per window")
    return EvalSplit(cfg, dataset, name, columns, num_windows or cfg.data.eval_num_windows,
                     num_crops, batch_size or cfg.eval.batch_size, vocab_words, manifest)


def build_eval_data(cfg: Config, tasks: Optional[Iterable[str]] = None,
                    datasets: Optional[Mapping[str, str]] = None,
                    num_windows: Optional[int] = None,
                    vocab_words: Optional[tuple[str, ...]] = None) -> dict[str, dict[str, EvalSplit]]:
    """data[task][split] for `tasks` (default cfg.eval.tasks). A (dataset, split) used by
    several tasks is read once, with every column they need, and shared (so evaluate_model
    extracts its features once). Captions are encoded with `vocab_words`, the evaluated
    checkpoint's vocabulary (default: the data's vocab.json)."""
    tasks = check_tasks(tasks or cfg.eval.tasks)
    chosen = choose_datasets(cfg, tasks, datasets)

    def key(task: str, split: str) -> tuple[str, str, int]:
        # fine-tuning tests on the spec's crops per window; everything else on the centre crop
        crops = cfg.eval.finetune_test_crops if task == "action_finetune" and split == "test" else 1
        return chosen[task], split, crops

    columns: dict[tuple[str, str, int], set[str]] = {}
    for task in tasks:
        modalities, splits = TASKS[task]
        for split in splits:
            columns.setdefault(key(task, split), set()).update(modalities)
    read = {k: read_split(cfg, k[0], k[1], cols, num_windows, num_crops=k[2],
                          vocab_words=vocab_words)
            for k, cols in sorted(columns.items())}
    return {task: {split: read[key(task, split)] for split in TASKS[task][1]} for task in tasks}


def describe_data(data: Mapping[str, Mapping[str, Iterable[dict]]]) -> list[str]:
    """One line per task: which dataset and split feed it, how many videos and windows (an
    EvalSplit says so from its manifest; batches held in memory are counted)."""
    lines = []
    for task, splits in data.items():
        parts = []
        for split, source in splits.items():
            if isinstance(source, EvalSplit):
                videos, windows = source.num_videos, source.num_clips * source.views_per_clip
            else:
                windows = sum(len(b["video_id"]) for b in source)
                videos = len({v for b in source for v in b["video_id"]})
            parts.append(f"{split}={getattr(source, 'dataset', '?')}/{getattr(source, 'split', split)}"
                         f" ({videos} videos, {windows} windows)")
        lines.append(f"{task}: {', '.join(parts)}")
    return lines


__all__ = ["build_eval_data", "read_split", "choose_datasets", "describe_data", "EvalSplit",
           "DEFAULT_DATASETS"]
