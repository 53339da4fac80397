"""Evaluate a model on the downstream tasks (spec section 7) and collect one results dict.

    evaluate_features(jobs, cfg)          feature tasks on extracted features
    evaluate_model(model, cfg, jobs)      extract features with the model, then the above, and
                                          the fine-tuning tasks on the raw batches

The tasks, what they read and how they run are vatt.evaluate.tasks' registry. A job
(vatt.evaluate.data.EvalJob, `plan` makes them) is one task on one dataset with its splits by
role ("train" / "test"), each an iterable of batches (see vatt.evaluate.features) or, for
`evaluate_features`, Features. A task's first job is its first dataset.

The results dict:
    {"metrics": {"<task>.<metric>": float,             the task's FIRST dataset: what the
                                                       promotion gate, the learning-signal
                                                       check and older readers use
                 "<task>@<dataset>.<metric>": float},  every dataset
     "tasks": {"<task>@<dataset>": {"task", "dataset", "source", "num_classes", "class_names",
                                    "metrics", "per_class", "confusion", "ranks", ...}},
     "datasets": {task: [dataset, ...]}}               in order, the first one first
Metric names hold no "." (the flat key splits at its last one).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Iterable, Optional

import torch

from vatt.config import Config
from vatt.evaluate.features import Features, extract_features, resolve_device
from vatt.evaluate.tasks import TaskRun, result_key, split_key

if TYPE_CHECKING:
    from vatt.evaluate.data import EvalJob

log = logging.getLogger("vatt.evaluate")


def _add_result(results: dict[str, Any], job: "EvalJob", body: dict[str, Any]) -> None:
    """Put one job's JSON-ready body into the results dict, its numbers also flat (under the
    task's own name too for its first job), beside the job's identity: the dataset's source
    and class names."""
    task = job.task.name
    first = task not in results["datasets"]
    body.update(task=task, dataset=job.dataset, source=job.source, num_classes=job.num_classes,
                class_names=list(job.label_names))
    results["tasks"][job.key] = body
    results["datasets"].setdefault(task, []).append(job.dataset)
    for name, value in body["metrics"].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            results["metrics"][f"{job.key}.{name}"] = float(value)
            if first:
                results["metrics"][f"{task}.{name}"] = float(value)


def _no_results() -> dict[str, Any]:
    return {"metrics": {}, "tasks": {}, "datasets": {}}


def evaluate_features(jobs: Iterable["EvalJob"], cfg: Config) -> dict[str, Any]:
    """Run the feature tasks of `jobs`, whose splits are Features."""
    jobs = list(jobs)
    for job in jobs:
        if job.task.needs_model:
            raise ValueError(f"{job.task.name} trains a backbone: run it through evaluate_model "
                             "(with the model), not on extracted features")
    results = _no_results()
    for job in jobs:
        _add_result(results, job, job.task.run(TaskRun(
            job.task, job.dataset, cfg, features=job.splits, source=job.source,
            num_classes=job.num_classes)))
    return results


def evaluate_model(model: torch.nn.Module, cfg: Config, jobs: Iterable["EvalJob"],
                   device: Optional[str | torch.device] = None) -> dict[str, Any]:
    """Extract features with `model` (eval mode) from the splits of `jobs` and run each job.

    A split object shared by several jobs is read once for its features, so splits must be
    re-iterable (lists of batches, vatt.evaluate.data.EvalSplit), not one-shot generators.
    Extraction and fine-tuning run on `device` (default eval.device); the model is back where
    it was afterwards. Deterministic: the model runs without DropToken or dropout and the
    probes are seeded.
    """
    device = resolve_device(device if device is not None else cfg.eval.device)
    jobs = list(jobs)
    # one pass per distinct split, with every modality the jobs reading it need (fine-tuning
    # reads the batches itself)
    needs: dict[int, tuple[Iterable[dict], set[str]]] = {}
    for job in jobs:
        if not job.task.needs_model:
            for role in job.task.splits:
                split = job.splits[role]
                needs.setdefault(id(split), (split, set()))[1].update(job.task.modalities)
    home = next(model.parameters()).device
    started = time.perf_counter()
    try:
        model.to(device)
        extracted: dict[int, Features] = {
            key: extract_features(model, split, sorted(modalities), device=device)
            for key, (split, modalities) in needs.items()}
    finally:
        model.to(home)
    if needs:
        log.info("features of %d split(s) extracted in %.0f s", len(needs),
                 time.perf_counter() - started)
    results = _no_results()
    for job in jobs:
        spec = job.task
        if spec.needs_model:
            ctx = TaskRun(spec, job.dataset, cfg, batches=job.splits, model=model, device=device,
                          source=job.source, num_classes=job.num_classes)
        else:
            ctx = TaskRun(spec, job.dataset, cfg, source=job.source, num_classes=job.num_classes,
                          features={role: extracted[id(job.splits[role])]
                                    for role in spec.splits})
        started = time.perf_counter()
        body = spec.run(ctx)
        log.info("%s on %s: %.0f s", spec.name, job.dataset, time.perf_counter() - started)
        _add_result(results, job, body)
    results["seed"] = cfg.eval.seed
    return results


__all__ = ["evaluate_features", "evaluate_model", "result_key", "split_key"]
