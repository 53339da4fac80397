"""Evaluate a model on the downstream tasks (spec section 7) and collect one results dict.

    evaluate_features(features, cfg, tasks)   protocols on extracted features
    evaluate_model(model, cfg, tasks, data)   extract features with the model, then the above

`data[task][split]` (split "train" / "test") is an iterable of batches (see
vatt.evaluate.features). Tasks:

    action_linear           linear probe on pooled video features, top-1/top-5 (train -> test)
    action_finetune         the video backbone fine-tuned with a linear layer (vatt.evaluate.
                            finetune; needs the model, not only features), top-1/top-5
    audio_linear            linear probe on pooled audio features: mAP/AUC/d-prime when the
                            batches carry multi-hot `labels`; top-1 averaged over folds when they
                            carry a `fold` (ESC-50 style: leave one fold out over the train and
                            test splits together); else top-1/top-5
    text_video_retrieval    zero-shot, test split: captions (S_vt) -> videos (S_vt)
    video_audio_retrieval   zero-shot, test split: videos (S_va) -> audio (S_va)

The results dict: {"metrics": {"<task>.<metric>": float}, "tasks": {task: {"metrics", ...}}}.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Optional

import numpy as np
import torch

from vatt.config import Config, ConfigError
from vatt.evaluate import finetune, probes, retrieval
from vatt.evaluate.features import Features, extract_features, resolve_device

# task -> (modalities its batches must carry, splits it reads)
TASKS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "action_linear": (("video",), ("train", "test")),
    "action_finetune": (("video",), ("train", "test")),
    "audio_linear": (("audio",), ("train", "test")),
    "text_video_retrieval": (("video", "text"), ("test",)),
    "video_audio_retrieval": (("video", "audio"), ("test",)),
}


# tasks that train (a copy of) the model instead of reading extracted features
MODEL_TASKS = ("action_finetune",)


def check_tasks(tasks: Iterable[str]) -> list[str]:
    tasks = list(tasks)
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise ConfigError(f"eval.tasks: unknown or no task(s) {unknown}; allowed: "
                          f"{', '.join(TASKS)}")
    return tasks


def _labelled(features: Features, task: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows with a label, their labels, their video ids); clips with label -1 are left out."""
    labels = features.require("label", task).astype(np.int64)
    keep = labels >= 0
    if not keep.any():
        raise ValueError(f"{task}: no clip of this split has a label (all -1)")
    return keep, labels[keep], features.require("video_id", task)[keep]


def _num_classes(task: str, train_labels: np.ndarray, test_labels: np.ndarray,
                 *features: Features) -> int:
    """The dataset's class count (its manifest's label names) when the source says it, else
    the largest class id seen + 1 (classes are numbered 0..C-1)."""
    seen = int(max(train_labels.max(), test_labels.max())) + 1
    declared = {n for n in (getattr(f, "num_classes", None) for f in features) if n}
    if not declared:
        return seen
    if len(declared) > 1:
        raise ValueError(f"{task}: train and test splits declare different class counts "
                         f"{sorted(declared)}; they must come from the same dataset")
    (count,) = declared
    if seen > count:
        raise ValueError(f"{task}: label {seen - 1} is outside the dataset's {count} classes "
                         "(manifest label_names); re-ingest the dataset")
    return count


def _folds(train: Features, test: Features) -> Optional[np.ndarray]:
    """The fold of every train then test window when the source defines folds (ESC-50: each
    clip's fold 1-5; 0 means none) and there are at least two, else None."""
    if "fold" not in train.windows or "fold" not in test.windows:
        return None
    folds = np.concatenate([train.windows["fold"], test.windows["fold"]]).astype(np.int64)
    if (folds <= 0).any() or len(np.unique(folds)) < 2:
        return None
    return folds


def _classification(task: str, modality: str, train: Features, test: Features,
                    settings: probes.ProbeSettings) -> probes.ClassificationResult:
    key = f"{modality}_pooled"
    if "labels" in test.windows and "labels" in train.windows:  # multi-label (AudioSet style)
        train_targets, test_targets = train.windows["labels"], test.windows["labels"]
        return probes.linear_probe(
            train.require(key, task), train_targets, train.require("video_id", task),
            test.require(key, task), test_targets, test.require("video_id", task),
            int(test_targets.shape[1]), multilabel=True, settings=settings, task=task)
    folds = _folds(train, test)
    if folds is not None:  # ESC-50 style: leave one fold out, over train and test together
        both = Features({name: np.concatenate([train.require(name, task), test.require(name, task)])
                         for name in (key, "label", "video_id")}, num_classes=test.num_classes)
        keep, labels, ids = _labelled(both, task)
        return probes.cross_validated_probe(
            both.windows[key][keep], labels, ids, folds[keep],
            _num_classes(task, labels, labels, train, test), settings=settings, task=task)
    train_keep, train_labels, train_ids = _labelled(train, task)
    test_keep, test_labels, test_ids = _labelled(test, task)
    num_classes = _num_classes(task, train_labels, test_labels, train, test)
    return probes.linear_probe(
        train.require(key, task)[train_keep], train_labels, train_ids,
        test.require(key, task)[test_keep], test_labels, test_ids, num_classes,
        settings=settings, task=task)


def run_task(task: str, features: Mapping[str, Features], cfg: Config) -> dict[str, Any]:
    """One task on its extracted features ({"train": ..., "test": ...}); a JSON-ready dict."""
    if task in MODEL_TASKS:
        raise ValueError(f"{task} trains the video backbone: run it through evaluate_model "
                         "(with the model), not on extracted features")
    test = features["test"]
    if task in ("action_linear", "audio_linear"):
        modality = "video" if task == "action_linear" else "audio"
        settings = probes.ProbeSettings.from_config(cfg.eval)
        result = _classification(task, modality, features["train"], test, settings)
        return {"metrics": result.metrics, "per_class": result.per_class,
                "confusion": result.confusion}
    if task == "text_video_retrieval":
        if "text_vt" not in test.captions:
            raise ValueError(f"{task}: the test split has no caption (text_mask is 0 everywhere)")
        found = retrieval.text_to_video(test.require("video_vt", task),
                                        test.require("video_id", task),
                                        test.captions["text_vt"], test.captions["video_id"])
    elif task == "video_audio_retrieval":
        found = retrieval.video_to_audio(test.require("video_va", task),
                                         test.require("audio_va", task),
                                         test.require("video_id", task))
    else:
        check_tasks([task])
        raise AssertionError(task)
    return {"metrics": found.metrics, "ranks": found.ranks}


def evaluate_features(features: Mapping[str, Mapping[str, Features]], cfg: Config,
                      tasks: Optional[Iterable[str]] = None) -> dict[str, Any]:
    """Run `tasks` (default cfg.eval.tasks) on features[task][split]."""
    results: dict[str, Any] = {"metrics": {}, "tasks": {}}
    for task in check_tasks(tasks or cfg.eval.tasks):
        _add_result(results, task, run_task(task, features[task], cfg))
    return results


def _add_result(results: dict[str, Any], task: str, body: dict[str, Any]) -> None:
    """Put one task's JSON-ready body into the results dict, its numbers also flat."""
    results["tasks"][task] = body
    for name, value in body["metrics"].items():
        if isinstance(value, (int, float)):
            results["metrics"][f"{task}.{name}"] = float(value)


def _run_model_task(task: str, model: torch.nn.Module, splits: Mapping[str, Iterable[dict]],
                    cfg: Config, device: torch.device) -> dict[str, Any]:
    """A task of MODEL_TASKS on the raw batches of its splits; a JSON-ready dict."""
    train, test = splits["train"], splits["test"]
    declared = {n for n in (getattr(s, "num_classes", None) for s in (train, test)) if n}
    if len(declared) == 1:  # the manifest's count; fine-tuning checks every label against it
        (num_classes,) = declared
    else:  # batches held in memory: their labels are at hand
        labels = {name: np.concatenate([np.asarray(b["label"]) for b in split])
                  for name, split in (("train", train), ("test", test))}
        num_classes = _num_classes(task, labels["train"], labels["test"], train, test)
    found = finetune.finetune_action(model, train, test, num_classes,
                                     finetune.FinetuneSettings.from_config(cfg.eval),
                                     device=device, task=task)
    return {"metrics": found.metrics, "per_class": found.per_class, "confusion": found.confusion}


def evaluate_model(model: torch.nn.Module, cfg: Config, tasks: Optional[Iterable[str]] = None,
                   data: Optional[Mapping[str, Mapping[str, Iterable[dict]]]] = None,
                   device: Optional[str | torch.device] = None) -> dict[str, Any]:
    """Extract features with `model` (eval mode) from data[task][split] and run the tasks.

    A source object shared by several tasks is read once for its features, so sources must be
    re-iterable (lists of batches, vatt.evaluate.data.EvalSplit), not one-shot generators.
    Extraction and fine-tuning run on `device` (default eval.device); the model is back where
    it was afterwards. Deterministic: the model runs without DropToken or dropout and the
    probes are seeded.
    """
    device = resolve_device(device if device is not None else cfg.eval.device)
    tasks = check_tasks(tasks or cfg.eval.tasks)
    if data is None:
        raise ValueError("evaluate_model needs data[task][split] batches; build them with the "
                         "evaluation loader")
    # one pass per distinct source, with every modality the tasks reading it need
    needs: dict[int, tuple[Iterable[dict], set[str]]] = {}
    for task in tasks:
        modalities, splits = TASKS[task]
        if task not in data:
            raise KeyError(f"no data for task '{task}'; data has {sorted(data)}")
        for split in splits:
            if split not in data[task]:
                raise KeyError(f"task '{task}' needs split '{split}'; got {sorted(data[task])}")
            if task not in MODEL_TASKS:  # those read the batches themselves
                source = data[task][split]
                needs.setdefault(id(source), (source, set()))[1].update(modalities)
    home = next(model.parameters()).device
    try:
        model.to(device)
        extracted = {key: extract_features(model, source, sorted(modalities), device=device)
                     for key, (source, modalities) in needs.items()}
    finally:
        model.to(home)
    for key, (source, _) in needs.items():  # e.g. vatt.evaluate.data.EvalSplit: the manifest's
        extracted[key].num_classes = getattr(source, "num_classes", None)
    feature_tasks = [task for task in tasks if task not in MODEL_TASKS]
    features = {task: {split: extracted[id(data[task][split])] for split in TASKS[task][1]}
                for task in feature_tasks}
    results = evaluate_features(features, cfg, feature_tasks) if feature_tasks \
        else {"metrics": {}, "tasks": {}}
    for task in tasks:
        if task in MODEL_TASKS:
            _add_result(results, task, _run_model_task(task, model, data[task], cfg, device))
    results["seed"] = cfg.eval.seed
    return results


__all__ = ["TASKS", "check_tasks", "run_task", "evaluate_features", "evaluate_model"]
