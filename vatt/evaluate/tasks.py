"""The downstream tasks of `vatt evaluate`, defined once, here (spec section 7).

A `Task` says everything the rest of the evaluation needs to know about it: which modalities its
batches carry, which ingested datasets it accepts (by the manifest's `source`, the reader that
wrote it, so a `kinetics600` folder of source `kinetics` is found), which splits it reads, its
protocol, its metrics, its kind of label, what a retrieval item is, and the function that runs
it. vatt.evaluate.data picks the datasets from it, vatt.evaluate.runner runs it, the report, the
CLI and the flows list it. Adding a task is one `register(Task(...))` and its function.

    linear      a low-rank linear probe on frozen pooled features (vatt.evaluate.probes)
    finetune    the backbone fine-tuned end to end with a linear layer (vatt.evaluate.finetune);
                reads the raw batches and needs the model, not only extracted features
    zero-shot   retrieval in the common spaces (vatt.evaluate.retrieval)

A task's function takes a `TaskRun` (its dataset's features or batches, the config, the model)
and returns a JSON-ready body {"metrics": {...}, and any of "per_class", "confusion", "ranks"}.
This module imports no torch: the functions import what they run when they run, so listing the
tasks (CLI help, config checks) stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Optional

import numpy as np

from vatt.config import AudiosetTrain

if TYPE_CHECKING:
    from vatt.config import Config
    from vatt.evaluate.features import Features



class Protocol(str, Enum):
    """How a task measures a model (see the module doc)."""

    linear = "linear"
    finetune = "finetune"
    zero_shot = "zero-shot"


class Labels(str, Enum):
    """A task's kind of label: one class per clip, several (multi-hot), or none (retrieval)."""

    single = "single"
    multi = "multi"
    none = "none"


ITEMS = ("video", "clip")  # a retrieval item: a video (its clips averaged) or one clip/segment
# the split names a test split may have in a manifest, in order of preference (MiT, ImageNet
# and YouCook2 evaluate on their official validation set, which ingest writes as `test`)
TEST_SPLITS = ("test", "val", "validation")
# where a source's reported split is not its test split: the paper reports Kinetics on val
# (its test.csv publishes no labels); test only when a labelled one is all there is
TEST_SPLITS_BY_SOURCE = {"kinetics": ("val", "validation", "test")}
# eval.audioset_train -> the AudioSet train splits fine-tuning reads
AUDIOSET_TRAIN = {AudiosetTrain.balanced: ("train",),
                  AudiosetTrain.unbalanced: ("train_unbalanced",),
                  AudiosetTrain.both: ("train", "train_unbalanced")}


@dataclass
class TaskRun:
    """What a task's function gets for one dataset."""

    task: "Task"
    dataset: str  # the dataset folder (or a name for batches held in memory)
    cfg: "Config"
    features: Mapping[str, "Features"] = field(default_factory=dict)  # split -> (not finetune)
    batches: Mapping[str, Iterable[dict]] = field(default_factory=dict)  # split -> raw batches
    model: Any = None  # the model (finetune tasks; left untouched)
    device: Any = "cpu"
    source: Optional[str] = None  # the manifest's source (reader), None when unknown
    num_classes: Optional[int] = None  # the manifest's class count, None when unknown

    @property
    def name(self) -> str:
        return self.task.name

    @property
    def item(self) -> str:
        """What one retrieval item is on this dataset (per video, or per clip / segment)."""
        return self.task.items.get(self.source or "", self.task.item)


@dataclass(frozen=True, kw_only=True)
class Task:
    name: str
    description: str  # one line, for the CLI and the report
    modalities: tuple[str, ...]  # what its batches must carry
    sources: tuple[str, ...]  # manifest sources it accepts, in order of preference
    splits: tuple[str, ...]  # the roles it reads: "train" and/or "test"
    protocol: Protocol
    metrics: tuple[str, ...]  # the headline metrics (a report row), in order
    labels: Labels
    run: Callable[[TaskRun], dict[str, Any]]
    item: str = "video"  # default retrieval item (ITEMS)
    items: Mapping[str, str] = field(default_factory=dict)  # source -> item where it differs
    # the manifest splits a role reads, when not the default ("train"; TEST_SPLITS for test)
    split_names: Optional[Callable[["Config", str], tuple[str, ...]]] = None
    # tested on eval.finetune.test_crops crops per window (the spec's video fine-tuning test);
    # audio has no crops, and an image is one view
    multi_crop_test: bool = False

    def __post_init__(self) -> None:
        bad = [i for i in (self.item, *self.items.values()) if i not in ITEMS]
        if bad or not set(self.splits) <= {"train", "test"}:
            raise ValueError(f"task {self.name}: items {bad} not in {ITEMS}, or splits "
                             f"{self.splits} not train/test")

    @property
    def needs_model(self) -> bool:
        """Trains (a copy of) the model on raw batches instead of reading extracted features."""
        return self.protocol is Protocol.finetune

    def manifest_splits(self, cfg: "Config", role: str,
                        source: Optional[str] = None) -> tuple[str, ...]:
        """The manifest split names `role` reads on a dataset of `source`: all of them for
        train (several are read one after the other), the first present (and, for a labelled
        task, labelled) of them for test."""
        if self.split_names is not None:
            return tuple(self.split_names(cfg, role))
        return ("train",) if role == "train" else preferred_test_splits(source)

    @property
    def needs_labels(self) -> bool:
        return self.labels is not Labels.none


def preferred_test_splits(source: Optional[str]) -> tuple[str, ...]:
    """A source's test splits in order of preference (TEST_SPLITS unless it reports another)."""
    return TEST_SPLITS_BY_SOURCE.get(source or "", TEST_SPLITS)


TASKS: dict[str, Task] = {}


def register(task: Task) -> Task:
    """Add a task to the registry (a name already taken is an error, not a replacement)."""
    if task.name in TASKS:
        raise ValueError(f"task {task.name!r} is already registered")
    if "@" in task.name or "." in task.name:
        raise ValueError(f"task {task.name!r}: '@' and '.' separate task, dataset and metric in "
                         "result keys; pick a name without them")
    TASKS[task.name] = task
    return task


def check_tasks(tasks: Iterable[str]) -> list[str]:
    from vatt.config import ConfigError

    tasks = list(tasks)
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise ConfigError(f"eval.tasks: unknown or no task(s) {unknown}; allowed: "
                          f"{', '.join(TASKS)}")
    return tasks


def result_key(task: str, dataset: str) -> str:
    """The key of one (task, dataset) in the results: "<task>@<dataset>"."""
    return f"{task}@{dataset}"


def split_key(name: str) -> tuple[str, Optional[str], str]:
    """A flat metric key -> (task, dataset or None for the task's first, metric). Metric
    names hold no ".", so the key splits at its last one."""
    head, _, metric = name.rpartition(".")
    task, _, dataset = head.partition("@")
    return task, dataset or None, metric


def describe_tasks() -> list[str]:
    """One line per registered task: name, protocol, datasets (sources), metrics."""
    return [f"{t.name:22s} {t.protocol.value:9s} on {', '.join(t.sources)}: {', '.join(t.metrics)}"
            f" ({t.description})" for t in TASKS.values()]


# ---------------------------------------------------------------------------------------------
# The tasks' functions


def _labelled(features: "Features", task: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows with a label, their labels, their video ids); clips with label -1 are left out."""
    labels = features.require("label", task).astype(np.int64)
    keep = labels >= 0
    if not keep.any():
        raise ValueError(f"{task}: no clip of this split has a label (all -1)")
    return keep, labels[keep], features.require("video_id", task)[keep]


def num_classes(task: str, train_labels: np.ndarray, test_labels: np.ndarray,
                declared: Optional[int]) -> int:
    """The dataset's class count `declared` by its manifest's label names when it has them,
    else the largest class id seen + 1 (classes are numbered 0..C-1)."""
    seen = int(max(train_labels.max(), test_labels.max())) + 1
    if not declared:
        return seen
    if seen > declared:
        raise ValueError(f"{task}: label {seen - 1} is outside the dataset's {declared} classes "
                         "(manifest label_names); re-ingest the dataset")
    return declared


def _folds(train: "Features", test: "Features") -> Optional[np.ndarray]:
    """The fold of every train then test window when the source defines folds (ESC-50: each
    clip's fold 1-5; 0 means none) and there are at least two, else None."""
    if "fold" not in train.windows or "fold" not in test.windows:
        return None
    folds = np.concatenate([train.windows["fold"], test.windows["fold"]]).astype(np.int64)
    if (folds <= 0).any() or len(np.unique(folds)) < 2:
        return None
    return folds


def _body(result: Any) -> dict[str, Any]:
    return {"metrics": result.metrics, "per_class": result.per_class,
            "confusion": result.confusion}


def linear_probe_task(modality: str) -> Callable[[TaskRun], dict[str, Any]]:
    """A linear probe on `modality`'s pooled features: multi-label (mAP/AUC/d-prime) when the
    batches carry multi-hot `labels`; leave-one-fold-out when they carry folds (ESC-50); else
    train -> test top-1/top-5."""

    def run(ctx: TaskRun) -> dict[str, Any]:
        from vatt.evaluate import probes
        from vatt.evaluate.features import Features

        task, (train, test) = ctx.name, (ctx.features["train"], ctx.features["test"])
        key = f"{modality}_pooled"
        if "labels" in test.windows and "labels" in train.windows:  # multi-label (AudioSet)
            train_targets, test_targets = train.windows["labels"], test.windows["labels"]
            return _body(probes.linear_probe(
                train.require(key, task), train_targets, train.require("video_id", task),
                test.require(key, task), test_targets, test.require("video_id", task),
                int(test_targets.shape[1]), multilabel=True, settings=ctx.cfg.eval.probe,
                seed=ctx.cfg.eval.seed, task=task))
        folds = _folds(train, test)
        if folds is not None:  # ESC-50 style: leave one fold out, over train and test together
            both = Features({name: np.concatenate([train.require(name, task),
                                                   test.require(name, task)])
                             for name in (key, "label", "video_id")})
            keep, labels, ids = _labelled(both, task)
            return _body(probes.cross_validated_probe(
                both.windows[key][keep], labels, ids, folds[keep],
                num_classes(task, labels, labels, ctx.num_classes), settings=ctx.cfg.eval.probe,
                seed=ctx.cfg.eval.seed, task=task))
        train_keep, train_labels, train_ids = _labelled(train, task)
        test_keep, test_labels, test_ids = _labelled(test, task)
        count = num_classes(task, train_labels, test_labels, ctx.num_classes)
        return _body(probes.linear_probe(
            train.require(key, task)[train_keep], train_labels, train_ids,
            test.require(key, task)[test_keep], test_labels, test_ids, count,
            settings=ctx.cfg.eval.probe, seed=ctx.cfg.eval.seed, task=task))

    return run


def finetune_task(modality: str, multilabel: bool = False,
                  image: bool = False) -> Callable[[TaskRun], dict[str, Any]]:
    """Fine-tune `modality`'s backbone (vatt.evaluate.finetune): single-label (cross-entropy
    with label smoothing, top-1/top-5) or multi-label (binary cross-entropy, mAP/AUC/d-prime).
    `image`: each clip is one image, which fills one temporal patch of the video backbone."""

    def run(ctx: TaskRun) -> dict[str, Any]:
        from vatt.evaluate import finetune

        train, test = ctx.batches["train"], ctx.batches["test"]
        if multilabel:
            first = next(iter(test))
            if "labels" not in first:
                raise KeyError(f"{ctx.name}: the batches carry no multi-hot 'labels'; it needs "
                               "a multi-label dataset (AudioSet)")
            count = int(np.asarray(first["labels"]).shape[1])
        else:  # the manifest's count (fine-tuning checks every label), else the labels'
            count = ctx.num_classes or num_classes(
                ctx.name, *(np.concatenate([np.asarray(b["label"]) for b in split])
                            for split in (train, test)), None)
        prepare = None
        if image:
            prepare = finetune.ImageToPatch(int(ctx.cfg.model.video.patch_size[0]), ctx.name)
        found = finetune.finetune_classifier(
            ctx.model, train, test, count, ctx.cfg.eval.finetune, seed=ctx.cfg.eval.seed,
            modality=modality, multilabel=multilabel, prepare=prepare, device=ctx.device,
            task=ctx.name)
        return _body(found)

    return run


def text_video_retrieval(ctx: TaskRun) -> dict[str, Any]:
    """Captions (S_vt) -> videos (S_vt), or -> clips where the dataset's item is a clip
    (YouCook2: every annotated segment, its clip and its caption, is one item)."""
    from vatt.evaluate import retrieval

    test, task = ctx.features["test"], ctx.name
    if "text_vt" not in test.captions:
        raise ValueError(f"{task}: the test split has no caption (text_mask is 0 everywhere)")
    key = "clip_id" if ctx.item == "clip" else "video_id"
    if key not in test.captions:
        raise KeyError(f"{task}: retrieval per {ctx.item} on {ctx.dataset} needs each batch's "
                       f"'{key}'; the loader's batches carry it")
    found = retrieval.text_to_video(test.require("video_vt", task), test.require(key, task),
                                    test.captions["text_vt"], test.captions[key],
                                    caption_keys=test.captions.get("text_key"))
    return {"metrics": {**found.metrics, "item": ctx.item}, "ranks": found.ranks}


def video_audio_retrieval(ctx: TaskRun) -> dict[str, Any]:
    """Each video's S_va -> every video's audio S_va (or per clip where the item is a clip)."""
    from vatt.evaluate import retrieval

    test, task = ctx.features["test"], ctx.name
    key = "clip_id" if ctx.item == "clip" else "video_id"
    found = retrieval.video_to_audio(test.require("video_va", task),
                                     test.require("audio_va", task), test.require(key, task))
    return {"metrics": {**found.metrics, "item": ctx.item}, "ranks": found.ranks}


def _audioset_train(cfg: "Config", role: str) -> tuple[str, ...]:
    if role != "train":
        return TEST_SPLITS
    return AUDIOSET_TRAIN[cfg.eval.audioset_train]


# in order of preference: a task's first dataset gives its flat `<task>.<metric>` keys (the
# gate's, the learning-signal check's); the paper probes UCF101 linearly and fine-tunes on
# Kinetics, probes ESC-50 linearly and fine-tunes on AudioSet
ACTION_SOURCES = ("ucf101", "kinetics", "mit")
CLASSIFICATION = ("top1", "top5")
MULTILABEL = ("mAP", "AUC", "d_prime")
RETRIEVAL = ("R@1", "R@5", "R@10", "MedR")

TRAIN_TEST = ("train", "test")
register(Task(name="action_linear", description="linear probe on pooled video features",
              modalities=("video",), sources=ACTION_SOURCES, splits=TRAIN_TEST,
              protocol=Protocol.linear, metrics=CLASSIFICATION, labels=Labels.single,
              run=linear_probe_task("video")))
register(Task(name="action_finetune",
              description="the video backbone fine-tuned with a linear layer",
              modalities=("video",), sources=("kinetics", "ucf101", "mit"), splits=TRAIN_TEST,
              protocol=Protocol.finetune, metrics=CLASSIFICATION, labels=Labels.single,
              run=finetune_task("video"), multi_crop_test=True))
register(Task(name="audio_linear",
              description="linear probe on pooled audio features (AudioSet multi-label; "
              "ESC-50 leave-one-fold-out)",
              modalities=("audio",), sources=("esc50", "audioset"), splits=TRAIN_TEST,
              protocol=Protocol.linear, metrics=(*MULTILABEL, *CLASSIFICATION),
              labels=Labels.single, run=linear_probe_task("audio")))
register(Task(name="audio_finetune",
              description="the audio backbone fine-tuned on AudioSet (multi-label, BCE; "
              "train list eval.audioset_train)",
              modalities=("audio",), sources=("audioset",), splits=TRAIN_TEST,
              protocol=Protocol.finetune, metrics=MULTILABEL, labels=Labels.multi,
              run=finetune_task("audio", multilabel=True), split_names=_audioset_train))
register(Task(name="image_finetune",
              description="the video backbone fine-tuned on images, each one frame filling "
              "one temporal patch",
              modalities=("video",), sources=("imagenet",), splits=TRAIN_TEST,
              protocol=Protocol.finetune, metrics=CLASSIFICATION, labels=Labels.single,
              run=finetune_task("video", image=True)))
register(Task(name="text_video_retrieval",
              description="zero-shot captions (S_vt) -> videos (S_vt); YouCook2 per annotated "
              "segment",
              modalities=("video", "text"), sources=("msrvtt", "youcook2"), splits=("test",),
              protocol=Protocol.zero_shot, metrics=RETRIEVAL, labels=Labels.none,
              run=text_video_retrieval, items={"youcook2": "clip"}))
register(Task(name="video_audio_retrieval",
              description="zero-shot videos (S_va) -> audio (S_va)",
              modalities=("video", "audio"), sources=("msrvtt", "youcook2"), splits=("test",),
              protocol=Protocol.zero_shot, metrics=RETRIEVAL, labels=Labels.none,
              run=video_audio_retrieval, items={"youcook2": "clip"}))


# ---------------------------------------------------------------------------------------------
# The paper's numbers (spec section 8), shown beside a paper preset's rows; fractions like ours.
# (preset, task, dataset source, classes or None, metric) -> value. K400 is source kinetics
# with 400 classes (Kinetics-600 has 600); the paper fine-tunes for K400 and AudioSet.
PAPER_RESULTS: dict[tuple[str, str, str, Optional[int], str], float] = {
    ("bbs", "action_finetune", "kinetics", 400, "top1"): 0.796,
    ("mbs", "action_finetune", "kinetics", 400, "top1"): 0.811,
    ("lbs", "action_finetune", "kinetics", 400, "top1"): 0.821,
    ("ma-medium", "action_finetune", "kinetics", 400, "top1"): 0.799,
    ("bbs", "audio_finetune", "audioset", None, "mAP"): 0.394,
    ("mbs", "text_video_retrieval", "youcook2", None, "R@10"): 0.455,
    ("mbs", "text_video_retrieval", "msrvtt", None, "R@10"): 0.297,
}


def paper_result(preset: Optional[str], task: str, source: Optional[str],
                 classes: Optional[int]) -> Optional[tuple[str, float]]:
    """(metric, the paper's value) for a row, or None where the paper reports none."""
    for (p, t, s, c, metric), value in PAPER_RESULTS.items():
        if (p, t, s) == (preset, task, source) and c in (None, classes):
            return metric, value
    return None


__all__ = ["Task", "TaskRun", "Protocol", "Labels", "TASKS", "register", "check_tasks", "describe_tasks",
           "paper_result", "PAPER_RESULTS", "result_key", "split_key", "TEST_SPLITS",
           "TEST_SPLITS_BY_SOURCE", "preferred_test_splits",
           "AUDIOSET_TRAIN", "num_classes"]
