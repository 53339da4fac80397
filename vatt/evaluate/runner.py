"""Evaluate a model on the downstream tasks (spec section 7) and collect one results dict.

    evaluate_features(features, cfg, tasks)   feature tasks on extracted features
    evaluate_model(model, cfg, tasks, data)   extract features with the model, then the above,
                                              and the fine-tuning tasks on the raw batches

The tasks, what they read and how they run are vatt.evaluate.tasks' registry. `data[task]` is
{dataset: {split: batches}} (vatt.evaluate.data.build_eval_data), one entry per dataset the task
runs on, or {split: batches} for one dataset (batches held in memory; named by their `dataset`
attribute, else "batches"). A split ("train" / "test") is an iterable of batches (see
vatt.evaluate.features).

The results dict:
    {"metrics": {"<task>.<metric>": float,             the task's FIRST dataset: what the
                                                       promotion gate, the learning-signal check
                                                       and older readers use
                 "<task>@<dataset>.<metric>": float},  every dataset
     "tasks": {"<task>@<dataset>": {"task", "dataset", "source", "num_classes", "class_names",
                                    "metrics", "per_class", "confusion", "ranks", ...}},
     "datasets": {task: [dataset, ...]}}               in order, the first one first
Metric names hold no "." (the flat key splits at its last one).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Iterable, Mapping, Optional

import torch

from vatt.config import Config
from vatt.evaluate.features import Features, extract_features, resolve_device
from vatt.evaluate.tasks import TASKS, TaskRun, check_tasks, result_key, split_key

log = logging.getLogger("vatt.evaluate")

UNNAMED = "batches"  # the dataset name of batches held in memory that carry none


def _is_split_mapping(value: Mapping[str, Any]) -> bool:
    """{split: batches} (one dataset) rather than {dataset: {split: batches}}."""
    return bool(value) and all(not isinstance(v, Mapping) for v in value.values())


def per_dataset(data: Mapping[str, Mapping[str, Any]], tasks: Iterable[str]
                ) -> dict[str, dict[str, Mapping[str, Any]]]:
    """data[task] as {dataset: {split: batches}} (see the module doc)."""
    out: dict[str, dict[str, Mapping[str, Any]]] = {}
    for task in tasks:
        if task not in data:
            raise KeyError(f"no data for task '{task}'; data has {sorted(data)}")
        given = data[task]
        if _is_split_mapping(given):
            name = next((getattr(s, "dataset", None) for s in given.values()), None) or UNNAMED
            given = {name: given}
        if not given:
            raise KeyError(f"no dataset for task '{task}'")
        for dataset, splits in given.items():
            for split in TASKS[task].splits:
                if split not in splits:
                    raise KeyError(f"task '{task}' needs split '{split}' of {dataset}; got "
                                   f"{sorted(splits)}")
        out[task] = dict(given)
    return out


def _source(splits: Mapping[str, Any]) -> Optional[str]:
    return next((getattr(s, "source", None) for s in splits.values()), None)


def _add_result(results: dict[str, Any], task: str, dataset: str, body: dict[str, Any],
                first: bool) -> None:
    """Put one (task, dataset)'s JSON-ready body into the results dict, its numbers also flat."""
    results["tasks"][result_key(task, dataset)] = body
    results["datasets"].setdefault(task, []).append(dataset)
    for name, value in body["metrics"].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            results["metrics"][f"{result_key(task, dataset)}.{name}"] = float(value)
            if first:
                results["metrics"][f"{task}.{name}"] = float(value)


def _describe(body: dict[str, Any], task: str, dataset: str, splits: Mapping[str, Any]) -> None:
    """The row's identity beside its numbers: the dataset's source and class names."""
    test = splits.get("test")
    names = list(getattr(test, "label_names", None) or [])
    body.update(task=task, dataset=dataset, source=_source(splits),
                num_classes=getattr(test, "num_classes", None) or (len(names) or None),
                class_names=names)


def evaluate_features(features: Mapping[str, Mapping[str, Any]], cfg: Config,
                      tasks: Optional[Iterable[str]] = None) -> dict[str, Any]:
    """Run the feature tasks `tasks` (default cfg.eval.tasks) on features[task][dataset][split]
    (or features[task][split]) of Features."""
    tasks = check_tasks(tasks or cfg.eval.tasks)
    for task in tasks:
        if TASKS[task].needs_model:
            raise ValueError(f"{task} trains a backbone: run it through evaluate_model (with the "
                             "model), not on extracted features")
    results: dict[str, Any] = {"metrics": {}, "tasks": {}, "datasets": {}}
    for task, datasets in per_dataset(features, tasks).items():
        for index, (dataset, splits) in enumerate(datasets.items()):
            ctx = TaskRun(TASKS[task], dataset, cfg, features=splits, source=_source(splits))
            body = TASKS[task].run(ctx)
            _describe(body, task, dataset, splits)
            _add_result(results, task, dataset, body, first=index == 0)
    return results


def evaluate_model(model: torch.nn.Module, cfg: Config, tasks: Optional[Iterable[str]] = None,
                   data: Optional[Mapping[str, Mapping[str, Any]]] = None,
                   device: Optional[str | torch.device] = None) -> dict[str, Any]:
    """Extract features with `model` (eval mode) from data[task][dataset][split] and run the
    tasks on every dataset given for them.

    A source object shared by several tasks is read once for its features, so sources must be
    re-iterable (lists of batches, vatt.evaluate.data.EvalSplit), not one-shot generators.
    Extraction and fine-tuning run on `device` (default eval.device); the model is back where
    it was afterwards. Deterministic: the model runs without DropToken or dropout and the
    probes are seeded.
    """
    device = resolve_device(device if device is not None else cfg.eval.device)
    tasks = check_tasks(tasks or cfg.eval.tasks)
    if data is None:
        raise ValueError("evaluate_model needs data[task][dataset][split] batches; build them "
                         "with vatt.evaluate.data.build_eval_data")
    data = per_dataset(data, tasks)
    # one pass per distinct source, with every modality the tasks reading it need
    needs: dict[int, tuple[Iterable[dict], set[str]]] = {}
    for task in tasks:
        if TASKS[task].needs_model:  # those read the batches themselves
            continue
        for splits in data[task].values():
            for split in TASKS[task].splits:
                needs.setdefault(id(splits[split]), (splits[split], set()))[1].update(
                    TASKS[task].modalities)
    home = next(model.parameters()).device
    started = time.perf_counter()
    try:
        model.to(device)
        extracted: dict[int, Features] = {
            key: extract_features(model, source, sorted(modalities), device=device)
            for key, (source, modalities) in needs.items()}
    finally:
        model.to(home)
    if needs:
        log.info("features of %d split(s) extracted in %.0f s", len(needs),
                 time.perf_counter() - started)
    for key, (source, _) in needs.items():  # e.g. vatt.evaluate.data.EvalSplit: the manifest's
        extracted[key].num_classes = getattr(source, "num_classes", None)
    results: dict[str, Any] = {"metrics": {}, "tasks": {}, "datasets": {}}
    for task in tasks:
        spec = TASKS[task]
        for index, (dataset, splits) in enumerate(data[task].items()):
            if spec.needs_model:
                ctx = TaskRun(spec, dataset, cfg, batches=splits, model=model, device=device,
                              source=_source(splits))
            else:
                ctx = TaskRun(spec, dataset, cfg, source=_source(splits),
                              features={s: extracted[id(splits[s])] for s in spec.splits})
            started = time.perf_counter()
            body = spec.run(ctx)
            log.info("%s on %s: %.0f s", task, dataset, time.perf_counter() - started)
            _describe(body, task, dataset, splits)
            _add_result(results, task, dataset, body, first=index == 0)
    results["seed"] = cfg.eval.seed
    return results


__all__ = ["evaluate_features", "evaluate_model", "per_dataset", "result_key", "split_key"]
