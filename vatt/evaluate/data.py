"""Evaluation data: the ingested datasets -> a flat plan of jobs for `evaluate_model`.

    jobs, skipped = plan(cfg, tasks)        # reads cfg.data.path (local or s3://)
    outcome = evaluate_checkpoint(loaded, jobs, store=store, skipped=skipped)

A job (`EvalJob`) is one task on one dataset: the task, the dataset folder, its splits by role
and the manifest's source and class names.

Which datasets feed a task: every dataset folder `vatt ingest` wrote under data.path (a
`manifest.json`) whose manifest `source` (the reader that wrote it: kinetics, ucf101, mit,
audioset, esc50, msrvtt, youcook2, imagenet, ...) the task accepts (vatt.evaluate.tasks), real
sources before generated ones: when a real dataset is there, the real ones only; else the
generated `synthetic-<layout>` folders (the embedded default). Among them, the task's order of
sources, then the folder name; the first is the one the flat `<task>.<metric>` keys mean.
`eval.datasets` ({task: [folder, ...]}) or `datasets=` names them instead, in that order.

    action_linear / action_finetune   kinetics, ucf101, mit        synthetic-ucf101
    audio_linear                      audioset, esc50               synthetic-esc50 (ESC-50:
                                                                    folds 1-4 -> fold 5)
    audio_finetune                    audioset (train list: eval.audioset_train)
    image_finetune                    imagenet (1-frame clips)
    text_video_retrieval              msrvtt (per video), youcook2 (per segment)  synthetic-msrvtt
    video_audio_retrieval             the same as text_video_retrieval

Which split a role reads: "train" the manifest's train split (AudioSet: eval.audioset_train);
"test" the first of the task's test splits (tasks.TEST_SPLITS: test, val, validation; Kinetics
val first, the split the paper reports) that is there and, for a task that needs labels, has a
labelled clip. A split passed over for lack of labels (Kinetics' test.csv publishes none) is
listed in the skipped list with the reason; a dataset left with no labelled test split is
skipped with it, and the evaluation goes on.

Each split is read through the loader in evaluation mode (`num_windows` evenly spread windows
per clip, centre crop, no augmentation, the first captions) every time it is iterated, except a
fine-tuning task's train split, which is read in training mode (one randomly placed window per
clip with the loader's training augmentation, seeded per epoch; its video stays uint8): nothing
decoded is held between batches, so a split of any size takes the memory of a few batches
(feature extraction keeps only the features; fine-tuning reads the split epoch after epoch).
The batches come in a fixed order, the loader's (manifest) order, which Ray Data is told to
preserve, so two evaluations run the model on the same batches; extraction then puts the
features in (clip, window) order, which the probes' results depend on. Only the columns a task
needs are kept (audio-only sources carry no video tensor), and a split none of whose tasks
needs video (audio_linear, audio_finetune) is read without decoding it: the loader skips the
frames and their crop and jitter, and every other column, training noise included, is what a
read with video gives (a split shared with a video task decodes it).

A split is an `EvalSplit`: re-iterable batches that know their size (`num_clips`,
`views_per_clip`) without reading them. A train role may read several manifest splits one after
the other (AudioSet balanced + unbalanced). The job carries the manifest's class names, which
the probes use instead of "largest label seen + 1".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence

import numpy as np

from vatt.config import Config
from vatt.data.loader import DataError, read_manifest
from vatt.evaluate.tasks import (TASKS, Task, check_tasks, preferred_test_splits,
                                 result_key)

GENERATED_PREFIX = "synthetic-"  # the embedded default dataset's folders: synthetic-<layout>
METADATA = ("label", "labels", "video_id", "clip_id", "fold")


def dataset_source(manifest: dict, folder: str) -> tuple[str, bool]:
    """(the reader that wrote a dataset, whether it is generated). `vatt ingest --source
    synthetic` writes one folder per layout, `synthetic-<layout>`, whose manifest's source is
    `synthetic`: the layout (the reader) is the rest of its name."""
    name = str(manifest.get("name") or folder)
    source = str(manifest.get("source") or folder)
    generated = source == "synthetic" or source.startswith(GENERATED_PREFIX) \
        or name.startswith(GENERATED_PREFIX) or bool(manifest.get("generated"))
    if source == "synthetic":
        source = name if name.startswith(GENERATED_PREFIX) else folder
    if source.startswith(GENERATED_PREFIX):
        source = source[len(GENERATED_PREFIX):]
    return source, generated


class EvalSplit:
    """One dataset split (or several, read one after the other), read through the loader each
    time it is iterated (see the module doc), with the split's size."""

    def __init__(self, cfg: Config, dataset: str, split: str | tuple[str, ...],
                 columns: Iterable[str], num_windows: int, num_crops: int, batch_size: int,
                 vocab_words: Optional[tuple[str, ...]], manifest: dict, training: bool = False):
        self.cfg, self.dataset, self.training = cfg, dataset, training
        self.splits = (split,) if isinstance(split, str) else tuple(split)
        self.split = "+".join(self.splits)
        self.columns = set(columns) | set(METADATA) | {"clip_index", "window"}
        if training and "video" in self.columns:
            self.columns.add("has_video")  # uint8 video: has_video 0 rows become zeros later
        if "text" in self.columns:
            self.columns.add("text_mask")
        self.num_windows, self.num_crops, self.batch_size = num_windows, num_crops, batch_size
        self.vocab_words = vocab_words
        shards = {s for name in self.splits for s in manifest["splits"][name]["shards"]}
        clips = [c for c in manifest["clips"] if c.get("shard") in shards]
        self.num_clips = len(clips)
        self.num_videos = len({c.get("video_id", c.get("clip_id")) for c in clips})
        # training: one window per clip and pass, its place and crop drawn by the loader
        self.views_per_clip = 1 if training else num_windows * num_crops

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self.batches()

    def shuffled(self, seed: int) -> Iterator[dict[str, Any]]:
        """The split with its shards read in `seed`'s order (a fine-tuning epoch); a training
        split's augmentation is drawn from `seed` too (the same epoch again for the same seed)."""
        return self.batches(shard_seed=seed)

    def passes(self, seeds: Sequence[int]) -> Iterator[dict[str, Any]]:
        """`shuffled(seed)` for each of `seeds`, one after the other, in one Ray Data
        execution where the split is one manifest split (a fine-tuning task's epochs: one
        execution per epoch cost a small split more than its decoding); each batch's
        `pass_seed` says which pass each of its rows belongs to (a batch may straddle two)."""
        if len(self.splits) > 1:  # one pass holds every manifest split: pass after pass
            import torch

            for seed in seeds:
                for batch in self.shuffled(seed):
                    yield {**batch, "pass_seed": torch.full((len(batch["video_id"]),), seed)}
            return
        yield from self._split_batches(self.splits[0], None, pass_seeds=tuple(seeds))

    def batches(self, shard_seed: Optional[int] = None) -> Iterator[dict[str, Any]]:
        """Batches of `batch_size` views (torch tensors; strings as lists) holding `columns`;
        a training split's video is the loader's uint8 (`video_to_float` with has_video makes
        the float), and without a seed its augmentation is fresh each time."""
        for split in self.splits:
            yield from self._split_batches(split, shard_seed)

    def _split_batches(self, split: str, shard_seed: Optional[int],
                       pass_seeds: tuple[int, ...] = ()) -> Iterator[dict[str, Any]]:
        import torch

        from vatt.data.loader import build_dataset, video_to_float

        ds = build_dataset(self.cfg, split, training=self.training, dataset=self.dataset,
                           root=str(self.cfg.data.path), num_windows=self.num_windows,
                           num_crops=self.num_crops, vocab_words=self.vocab_words,
                           shard_seed=shard_seed,
                           augment_seed=shard_seed if self.training else None,
                           pass_seeds=pass_seeds, video="video" in self.columns)
        columns = self.columns | {"pass_seed"} if pass_seeds else self.columns
        ds.context.execution_options.preserve_order = True  # the same batches every time
        empty = True
        for rows in ds.iter_batches(batch_size=self.batch_size, batch_format="numpy",
                                    prefetch_batches=1):
            batch: dict[str, Any] = {}
            for key, value in rows.items():
                if key not in columns:
                    continue
                batch[key] = [str(v) for v in value] if value.dtype == object \
                    or value.dtype.kind in "US" \
                    else torch.from_numpy(np.require(value, requirements=["C", "W"]))
            if "video" in batch and not self.training:  # rows hold uint8 pixels (the loader's)
                batch["video"] = video_to_float(batch["video"], rows["has_video"])
            empty = False
            yield batch
        if empty:
            raise DataError(f"dataset {self.dataset}, split {split}: no clip could be read")


def ingested_datasets(cfg: Config) -> dict[str, dict]:
    """Every dataset folder under data.path with a manifest.json (local or s3://): name ->
    manifest, sorted by name."""
    root = str(cfg.data.path)
    if root.startswith("s3://"):
        from vatt.storage import ObjectStore

        names = {path.split("/")[0] for path in ObjectStore.from_config(cfg.storage).list(root)
                 if path.count("/") == 1 and path.endswith("/manifest.json")}
    else:
        folder = Path(root)
        names = {p.name for p in folder.iterdir() if (p / "manifest.json").is_file()} \
            if folder.is_dir() else set()
    return {name: read_manifest(root, name, cfg.storage) for name in sorted(names)}


def default_datasets(task: Task, ingested: Mapping[str, dict]) -> list[str]:
    """The datasets a task runs on by default (see the module doc): those whose source it
    accepts, the real ones when there is one, else the generated ones; in the task's order of
    sources, then by name."""
    accepted = []
    for name, manifest in ingested.items():
        source, generated = dataset_source(manifest, name)
        if source in task.sources:
            accepted.append((generated, task.sources.index(source), name))
    real = [a for a in accepted if not a[0]]
    return [name for _, _, name in sorted(real or accepted)]


def choose_datasets(cfg: Config, tasks: Iterable[str],
                    datasets: Optional[Mapping[str, Iterable[str] | str]] = None,
                    optional: Iterable[str] = ()) -> tuple[dict[str, list[str]], dict[str, str]]:
    """({task: [dataset folder, ...]}, {task: why it was skipped}). `datasets` (default
    eval.datasets) names a task's datasets; the rest are found (see the module doc). A task
    without data is an error, except one of `optional` (eval.tasks_if_ingested), which is
    skipped with its reason."""
    root = str(cfg.data.path)
    named = {task: [names] if isinstance(names, str) else list(names)
             for task, names in dict(cfg.eval.datasets or {}).items()}
    named.update({task: [names] if isinstance(names, str) else list(names)
                  for task, names in (datasets or {}).items()})
    unknown = [task for task in named if task not in TASKS]
    if unknown:
        raise DataError(f"eval.datasets / --dataset: unknown task(s) {unknown}; tasks: "
                        f"{', '.join(TASKS)}")
    ingested = ingested_datasets(cfg)
    chosen: dict[str, list[str]] = {}
    skipped: dict[str, str] = {}
    optional = set(optional)
    for task in check_tasks(tasks):
        spec = TASKS[task]
        if named.get(task):
            for name in named[task]:
                if name not in ingested:
                    raise DataError(f"{task}: no ingested dataset {name!r} under data.path="
                                    f"{root} (no {name}/manifest.json); run `vatt ingest` for "
                                    "it first, or fix eval.datasets / --dataset")
                source, _ = dataset_source(ingested[name], name)
                if source not in spec.sources:
                    raise DataError(f"{task}: dataset {name!r} is of source {source!r}; the "
                                    f"task reads {', '.join(spec.sources)}. Name another "
                                    f"dataset in eval.datasets.{task}")
            chosen[task] = named[task]
            continue
        found = default_datasets(spec, ingested)
        if found:
            chosen[task] = found
        elif task in optional:
            skipped[task] = (f"no ingested dataset of source {' / '.join(spec.sources)} under "
                             f"data.path={root}")
        else:
            raise DataError(
                f"{task}: no ingested dataset of source {', '.join(spec.sources)} under "
                f"data.path={root}; run `vatt ingest --source synthetic` (the default dataset) "
                "or ingest one of them, or point data.path at the ingested folder")
    return chosen, skipped


@dataclass(frozen=True)
class SplitChoice:
    """The manifest splits a role reads (empty: no labelled test split, the dataset is skipped)
    and those passed over, each with the reason."""

    names: tuple[str, ...]
    passed_over: dict[str, str] = field(default_factory=dict)


def _has_labels(manifest: dict, split: str) -> bool:
    """Whether any clip of a manifest split has a label (a class id or multi-hot classes)."""
    shards = set(manifest["splits"][split]["shards"])
    return any(int(c.get("label", -1)) >= 0 or c.get("labels")
               for c in manifest["clips"] if c.get("shard") in shards)


def _split_names(manifest: dict, wanted: tuple[str, ...], role: str, dataset: str,
                 needed_by: str, needs_labels: bool = False) -> SplitChoice:
    """The manifest splits a role reads: every one of the `wanted` train splits (all must be
    there), the first present of the `wanted` test splits, passing over (with the reason) one
    without a labelled clip when `needs_labels`. A role none of whose splits is there is an
    error; test splits that are all there but unlabelled give no split to read."""
    splits = manifest["splits"]

    def present(name: str) -> bool:
        return name in splits and bool(splits[name]["shards"])

    if role == "train":
        missing = [name for name in wanted if not present(name)]
        if not missing:
            return SplitChoice(wanted)
    else:
        passed_over = {}
        for name in wanted:
            if not present(name):
                continue
            if needs_labels and not _has_labels(manifest, name):
                passed_over[name] = (f"no clip of dataset {dataset}'s split {name} has a label "
                                     "(its list publishes none, as Kinetics' test.csv); "
                                     f"{needed_by} scores labelled clips only")
                continue
            return SplitChoice((name,), passed_over)
        if passed_over:
            return SplitChoice((), passed_over)
        missing = list(wanted)
    raise DataError(f"dataset {dataset}: no {' / '.join(missing)} split with clips (it has "
                    f"{sorted(splits)}); {needed_by} needs it")


def read_split(cfg: Config, dataset: str, split: str | tuple[str, ...], columns: Iterable[str],
               num_windows: Optional[int] = None, batch_size: Optional[int] = None,
               num_crops: int = 1, vocab_words: Optional[tuple[str, ...]] = None) -> EvalSplit:
    """One split of `dataset` in evaluation mode (`num_windows` x `num_crops` views per clip),
    in batches of `batch_size` (default eval.batch_size) holding `columns` plus the metadata;
    read when iterated. `split` "train" or "test" (the first present of the source's test
    splits, tasks.preferred_test_splits), or the manifest split names to read one after the
    other."""
    manifest = read_manifest(str(cfg.data.path), dataset, cfg.storage)
    if isinstance(split, str) and split in ("train", "test"):
        source, _ = dataset_source(manifest, dataset)
        wanted = ("train",) if split == "train" else preferred_test_splits(source)
        names = _split_names(manifest, wanted, split, dataset, "evaluation").names
    else:
        names = (split,) if isinstance(split, str) else tuple(split)
    if num_crops < 1:
        raise ValueError(f"num_crops={num_crops}: evaluation needs at least one crop per window")
    return EvalSplit(cfg, dataset, names, columns, num_windows or cfg.data.eval_num_windows,
                     num_crops, batch_size or cfg.eval.batch_size, vocab_words, manifest)


@dataclass(frozen=True)
class EvalJob:
    """One task on one dataset: what the runner runs, the identity hashes and the report names.
    `splits` maps each role the task reads ("train", "test") to re-iterable batches: an
    EvalSplit, batches held in memory (a list), or extracted Features (`evaluate_features`).
    Jobs reading the same split share its object, so its features are extracted once."""

    task: Task
    dataset: str  # the dataset folder (a name of one's own for batches held in memory)
    splits: Mapping[str, Any]
    source: Optional[str] = None  # the manifest's source (the reader), None when unknown
    label_names: tuple[str, ...] = ()  # the manifest's class names

    def __post_init__(self) -> None:
        for role in self.task.splits:
            if role not in self.splits:
                raise KeyError(f"task '{self.task.name}' needs split '{role}' of {self.dataset}; "
                               f"got {sorted(self.splits)}")

    @property
    def key(self) -> str:
        """"<task>@<dataset>": the job's key in the results."""
        return result_key(self.task.name, self.dataset)

    @property
    def num_classes(self) -> Optional[int]:
        return len(self.label_names) or None


def plan(cfg: Config, tasks: Optional[Iterable[str]] = None,
         datasets: Optional[Mapping[str, Iterable[str] | str]] = None, *,
         num_windows: Optional[int] = None, vocab_words: Optional[tuple[str, ...]] = None,
         optional: Iterable[str] = ()) -> tuple[list[EvalJob], dict[str, str]]:
    """(the jobs, {what was skipped: why}) of evaluating `tasks` (default cfg.eval.tasks) on
    the datasets `choose_datasets` picks: a job per (task, dataset), in the order of `tasks`
    and then of the task's datasets (the first is the one the flat keys mean). A (dataset,
    splits, crops) read by several jobs is one EvalSplit, read with every column they need (so
    evaluate_model extracts its features once); a fine-tuning task's train split is read in
    training mode (the loader's augmentation), so it is not shared with a probe's. Captions
    are encoded with `vocab_words`, the evaluated checkpoint's vocabulary (default: the data's
    vocab.json). Skipped: a task of `optional` without data, a task's dataset without a
    labelled test split ("<task>@<dataset>"; the task itself when that was its only dataset)
    and a test split passed over for lack of labels ("<task>@<dataset> split <name>")."""
    tasks = check_tasks(tasks or cfg.eval.tasks)
    chosen, skipped = choose_datasets(cfg, tasks, datasets, optional)
    manifests = {name: read_manifest(str(cfg.data.path), name, cfg.storage)
                 for names in chosen.values() for name in names}

    def choice(spec: Task, dataset: str, role: str) -> SplitChoice:
        needed_by = spec.name + (" (eval.audioset_train picks balanced / unbalanced / both)"
                                 if spec.split_names is not None else "")
        source, _ = dataset_source(manifests[dataset], dataset)
        return _split_names(manifests[dataset], spec.manifest_splits(cfg, role, source), role,
                            dataset, needed_by, needs_labels=spec.needs_labels)

    # (task, dataset) -> {role: (dataset, manifest splits, crops, training)}: what it reads
    reads: dict[tuple[str, str], dict[str, tuple[str, tuple[str, ...], int, bool]]] = {}
    for task, names in chosen.items():
        spec, kept = TASKS[task], []
        for index, dataset in enumerate(names):
            roles = {role: choice(spec, dataset, role) for role in spec.splits}
            test = roles.get("test")
            if test is not None and not test.names:  # the task's only dataset: the task
                others = kept + names[index + 1:]
                skipped[result_key(task, dataset) if others else task] = \
                    f"no labelled test split: {'; '.join(test.passed_over.values())}"
                continue
            if test is not None:
                skipped.update({f"{result_key(task, dataset)} split {name}":
                                f"{why}; evaluated on {test.names[0]}"
                                for name, why in test.passed_over.items()})
            kept.append(dataset)
            # video fine-tuning tests on the spec's crops per window; all else on the centre
            # crop; fine-tuning trains on training windows
            reads[task, dataset] = {
                role: (dataset, found.names,
                       cfg.eval.finetune.test_crops if spec.multi_crop_test and role == "test"
                       else 1, spec.needs_model and role == "train")
                for role, found in roles.items()}
    columns: dict[tuple[str, tuple[str, ...], int, bool], set[str]] = {}
    for (task, _), roles in reads.items():
        for key in roles.values():
            columns.setdefault(key, set()).update(TASKS[task].modalities)
    read = {key: EvalSplit(cfg, key[0], key[1], cols, num_windows or cfg.data.eval_num_windows,
                           key[2], cfg.eval.batch_size, vocab_words, manifests[key[0]],
                           training=key[3])
            for key, cols in sorted(columns.items())}
    jobs = [EvalJob(TASKS[task], dataset, {role: read[key] for role, key in roles.items()},
                    source=dataset_source(manifests[dataset], dataset)[0],
                    label_names=tuple(manifests[dataset].get("label_names") or ()))
            for (task, dataset), roles in reads.items()]
    return jobs, skipped


def describe_jobs(jobs: Iterable[EvalJob]) -> list[str]:
    """One line per job: which dataset and splits feed it, how many videos and windows (an
    EvalSplit says so from its manifest; batches held in memory are counted)."""
    lines = []
    for job in jobs:
        parts = []
        for role, split in job.splits.items():
            if isinstance(split, EvalSplit):
                name, videos = split.split, split.num_videos
                windows = split.num_clips * split.views_per_clip
            else:
                name, windows = role, sum(len(b["video_id"]) for b in split)
                videos = len({v for b in split for v in b["video_id"]})
            parts.append(f"{role}={job.dataset}/{name} ({videos} videos, {windows} windows)")
        lines.append(f"{job.task.name}: {', '.join(parts)}")
    return lines


__all__ = ["plan", "EvalJob", "read_split", "choose_datasets", "default_datasets",
           "ingested_datasets", "dataset_source", "describe_jobs", "EvalSplit"]
