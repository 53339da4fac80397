"""Checkpoint -> evaluation -> report -> promotion decision, the whole `vatt evaluate` job.

    store = ObjectStore.from_config(cfg.storage)
    loaded = load_checkpoint_for_eval(resolve_checkpoint("latest", storage_path, store), (), store)
    outcome = evaluate_checkpoint(loaded, data, tasks, store=store)   # data[task][split]: batches

A checkpoint is a folder or s3:// prefix written by vatt.train; vatt.checkpoints owns its format
and reads it. One evaluation reads the checkpoint's config, vocabulary and weights once: the
weights' SHA-256 (from the same read) is what the registry records and checks its copy against.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

import torch
from omegaconf import OmegaConf

from vatt.checkpoints import (CONFIG_FILE, MODEL_FILE, CheckpointError, file_uri, read_checkpoint,
                              read_config, resolve_checkpoint)
from vatt.config import Config, ConfigError, replace, to_dict
from vatt.evaluate.registry import Decision, Registry, RegistryError
from vatt.evaluate.report import write_report
from vatt.evaluate.runner import evaluate_model
from vatt.model import build_model
from vatt.storage import ObjectStore

log = logging.getLogger("vatt.evaluate")


# what the weights were trained for: an evaluation may not change these (spec: the model and the
# input it sees; data.path, eval.*, storage.* are the evaluation's own)
FROZEN_AT_EVALUATION = ("model", "data.num_frames", "data.fps", "data.frame_size",
                        "data.sample_rate", "data.max_text_tokens", "data.vocab_size")


def with_eval_overrides(cfg: Config, overrides: Iterable[str], where: Any) -> Config:
    """`cfg` with evaluation overrides applied; an override that would change the model or the
    input it was trained on (FROZEN_AT_EVALUATION) is refused, one equal to it is a no-op."""
    overrides = list(overrides)
    if not overrides:
        return cfg
    changed = replace(cfg, overrides)
    before, after = OmegaConf.create(to_dict(cfg)), OmegaConf.create(to_dict(changed))
    refused = []
    for key in FROZEN_AT_EVALUATION:
        if OmegaConf.select(before, key) != OmegaConf.select(after, key):
            refused += [item for item in overrides if item.split("=", 1)[0].startswith(key)]
    if refused:
        raise ConfigError(f"{', '.join(refused)}: an evaluation uses the model and input of the "
                          f"checkpoint's own config ({where}); overrides may set eval.*, "
                          "data.path and storage.*, not the model's architecture or input")
    return changed


@dataclass
class LoadedCheckpoint:
    model: torch.nn.Module  # in eval mode, on the CPU
    config: Config  # the checkpoint's own, plus the evaluation's overrides
    data_version: Any
    step: Optional[int]
    vocab_words: Optional[tuple[str, ...]]  # None: a checkpoint from before they had one
    uri: str  # the folder or s3:// prefix it was read from
    weights_sha256: str  # of the weights file the model was loaded from


def checkpoint_config(checkpoint: str | Path, overrides: Iterable[str],
                      store: ObjectStore) -> Config:
    """The config a checkpoint (folder or s3:// prefix) was trained with, plus `overrides`.
    Raises CheckpointError naming the missing or unusable config file."""
    return with_eval_overrides(read_config(checkpoint, store), overrides,
                               file_uri(checkpoint, CONFIG_FILE))


def load_checkpoint_for_eval(checkpoint: str | Path, overrides: Iterable[str],
                             store: ObjectStore) -> LoadedCheckpoint:
    """Build the model of the checkpoint's own config and load its weights (strict); each file
    of the checkpoint (folder or s3:// prefix) is read once.

    `overrides` (dotlist) change evaluation settings only (e.g. eval.probe_epochs=20); the model
    keys come from the checkpoint. Raises CheckpointError naming the missing or corrupt file.
    """
    from vatt.text import Vocabulary

    saved = read_checkpoint(checkpoint, store)
    cfg = with_eval_overrides(saved.config, overrides, file_uri(checkpoint, CONFIG_FILE))
    vocabulary = Vocabulary(saved.vocab_words) if saved.vocab_words is not None else None
    model = build_model(cfg, vocabulary)
    try:
        model.load_state_dict(saved.weights)
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint weights {file_uri(checkpoint, MODEL_FILE)} do not fit "
                              f"the model of its {CONFIG_FILE}: {str(err).splitlines()[0]}"
                              ) from None
    model.eval()
    return LoadedCheckpoint(model, cfg, saved.data_version, saved.step, saved.vocab_words,
                            saved.uri, saved.weights_sha256)


def _new_report_folder(cfg: Config, checkpoint: str, step: Optional[int],
                       store: ObjectStore) -> str:
    """<eval.output_path>/<run>-step<N>-<UTC second>, with -2, -3, ... when an evaluation in the
    same second already wrote there (a report is never replaced)."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    base = (f"{cfg.eval.output_path.rstrip('/')}/"
            f"{Path(str(checkpoint).rstrip('/')).parent.name}-step{step}-{stamp}")
    folder, attempt = base, 1
    while store.exists(f"{folder}/results.json"):
        attempt += 1
        folder = f"{base}-{attempt}"
    return folder


# the evaluation settings that change a metric's value (where the report goes does not)
# nor where it ran: eval.device (a GPU's float rounding is not another evaluation)
_SETTINGS_NOT_IN_IDENTITY = ("output_path", "registry_path", "promotion_metric", "tasks",
                             "promote_incomparable", "promotion_margin", "device",
                             "tasks_if_ingested", "datasets")


def evaluation_identity(cfg: Config, data: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """What produced an evaluation's numbers: per (task, dataset) the dataset and the SHA-256 of
    its manifest (the exact clips, by checksum) per split read, under "<task>@<dataset>" and,
    for the task's first dataset, under "<task>" (what "<task>.<metric>" means); and the
    settings that change a metric (probe and fine-tuning recipe, windows per clip, crops). Two
    values of a metric are comparable only when this is the same for it
    (vatt.evaluate.registry)."""
    from vatt.data.loader import DataError, manifest_sha256
    from vatt.evaluate.runner import per_dataset, result_key

    per_task: dict[str, Any] = {}
    for task, datasets in per_dataset(data, list(data)).items():
        for index, (dataset, splits) in enumerate(datasets.items()):
            hashes = {}
            for split_name, split in splits.items():
                name = getattr(split, "dataset", None)
                try:
                    hashes[getattr(split, "split", split_name)] = (
                        manifest_sha256(str(cfg.data.path), name, cfg.storage) if name else None)
                except DataError:
                    hashes[getattr(split, "split", split_name)] = None
            used = {"dataset": next((getattr(s, "dataset", None) for s in splits.values()), None),
                    "splits": hashes}
            per_task[result_key(task, dataset)] = used
            if index == 0:
                per_task[task] = used
    settings = {key: value for key, value in to_dict(cfg)["eval"].items()
                if key not in _SETTINGS_NOT_IN_IDENTITY}
    settings["eval_num_windows"] = cfg.data.eval_num_windows
    return {"data": per_task, "settings": settings}


@dataclass
class EvaluationOutcome:
    results: dict[str, Any]
    report_uri: str
    decision: Optional[Decision]


def evaluate_checkpoint(checkpoint: str | LoadedCheckpoint,
                        data: Mapping[str, Mapping[str, Iterable[dict]]],
                        tasks: Optional[Iterable[str]] = None, overrides: Iterable[str] = (),
                        promote: bool = True, *, store: ObjectStore,
                        device: Optional[str | torch.device] = None,
                        skipped: Optional[Mapping[str, str]] = None) -> EvaluationOutcome:
    """Evaluate a checkpoint (a folder or s3:// prefix, loaded here with `overrides`, or one
    `load_checkpoint_for_eval` has loaded), write the report to <eval.output_path>/<run id>/
    and, if `promote`, put the result through the registry's promotion gate. `store` (built
    from cfg.storage by the caller) reads the checkpoint and writes the report and registry;
    the model runs on `device` (default: the evaluated config's eval.device). `tasks` default:
    every task of `data`; `skipped` ({task: why}) is recorded in the results and the report."""
    if isinstance(checkpoint, LoadedCheckpoint):
        if list(overrides):
            raise ValueError("evaluate_checkpoint: a loaded checkpoint already has its overrides; "
                             "pass them to load_checkpoint_for_eval")
        loaded = checkpoint
    else:
        loaded = load_checkpoint_for_eval(checkpoint, overrides, store)
    cfg = loaded.config
    tasks = list(tasks or data)
    results = evaluate_model(loaded.model, cfg, tasks, data, device=device)
    identity = evaluation_identity(cfg, data)
    results.update(checkpoint=loaded.uri, step=loaded.step, config_name=cfg.name,
                   data_version=loaded.data_version, evaluation=identity,
                   skipped=dict(skipped or {}))
    try:  # the promoted model's numbers, beside this one's in the report
        promoted = Registry(cfg.eval.registry_path, store).promoted
    except RegistryError:  # the gate below says what is wrong with the registry
        promoted = None
    report_uri = write_report(results, _new_report_folder(cfg, loaded.uri, loaded.step, store),
                              store, promoted=promoted)
    decision = None
    if promote:
        try:
            decision = Registry(cfg.eval.registry_path, store).consider(
                loaded.uri, config=to_dict(cfg), data_version=loaded.data_version,
                metrics=results["metrics"], metric=cfg.eval.promotion_metric,
                evaluation=identity, promote_incomparable=cfg.eval.promote_incomparable,
                margin=cfg.eval.promotion_margin, weights_sha256=loaded.weights_sha256)
        except RegistryError as err:  # the results are kept: say where they are
            raise RegistryError(f"{err} (the evaluation itself is saved: {report_uri}; "
                                "`vatt evaluate --no-promote` skips the gate)") from None
    return EvaluationOutcome(results, report_uri, decision)


def run_evaluation(checkpoint: str, cfg: Config, overrides: Iterable[str] = (),
                   tasks: Optional[Iterable[str]] = None,
                   datasets: Optional[Mapping[str, Iterable[str] | str]] = None,
                   promote: bool = True) -> EvaluationOutcome:
    """The `vatt evaluate` job: resolve `checkpoint` ("latest" looks under cfg.train.storage_path),
    load it with its own config (+ `overrides`: eval.*, data.path, ...), build
    data[task][dataset][split] from the ingested datasets (vatt.evaluate.data) and evaluate,
    report and (if `promote`) gate it. `tasks` given: exactly those, each needing its data;
    default: eval.tasks plus those of eval.tasks_if_ingested whose data is ingested (the others
    are listed as skipped). `datasets`: {task: [folder, ...]} over eval.datasets. The
    checkpoint's files are read once, through the store `cfg.storage` configures."""
    from vatt.evaluate.data import build_eval_data_and_skipped, describe_data

    store = ObjectStore.from_config(cfg.storage)  # the endpoint, region and timeouts configured
    folder = resolve_checkpoint(checkpoint, cfg.train.storage_path, store)
    loaded = load_checkpoint_for_eval(folder, overrides, store)
    optional: list[str] = []
    if tasks:
        tasks = list(tasks)
    else:
        tasks = list(loaded.config.eval.tasks)
        optional = [t for t in loaded.config.eval.tasks_if_ingested if t not in tasks]
    log.info("evaluating checkpoint %s on %s", folder, ", ".join([*tasks, *optional]))
    from vatt.console import init_ray

    init_ray()  # the loader reads through Ray Data
    # captions encoded with the checkpoint's own vocabulary, not whatever data.path holds now
    data, skipped = build_eval_data_and_skipped(loaded.config, [*tasks, *optional], datasets,
                                                vocab_words=loaded.vocab_words,
                                                optional=optional)
    for line in describe_data(data):
        log.info("  %s", line)
    for task, why in skipped.items():
        log.info("  %s: skipped, %s", task, why)
    return evaluate_checkpoint(loaded, data, list(data), promote=promote, store=store,
                               skipped=skipped)


def outcome_summary(outcome: EvaluationOutcome) -> dict[str, Any]:
    """What the flows and the UI read of an evaluation, JSON-serialisable: the flat metrics, one
    row per (task, dataset), the report's URI, provenance and the gate's decision. The same
    whether the evaluation ran in this process or as a RayJob (`vatt evaluate --outcome`)."""
    from dataclasses import asdict

    results = outcome.results
    summary = {"config_name": results.get("config_name"),
               "tasks": {key: {k: v for k, v in body.items()
                               if k in ("task", "dataset", "source", "num_classes", "metrics")}
                         for key, body in results["tasks"].items()}}
    return {"metrics": results["metrics"], "results": summary, "report": outcome.report_uri,
            "checkpoint": results.get("checkpoint"), "step": results.get("step"),
            "data_version": results.get("data_version"),
            "decision": asdict(outcome.decision) if outcome.decision is not None else None}


def run_evaluation_on_worker(checkpoint: str, cfg: Config, overrides: Iterable[str] = (),
                             tasks: Optional[Iterable[str]] = None,
                             datasets: Optional[Mapping[str, Iterable[str] | str]] = None,
                             promote: bool = True) -> dict[str, Any]:
    """`run_evaluation` as one Ray task on a worker of the Ray cluster this process is connected
    to (a RayJob's driver runs on the head, which has no accelerator and no CPUs for work): on a
    GPU when train.use_gpu (the overlay's hardware), else on train.cpus_per_worker CPUs. Returns
    `outcome_summary` of it."""
    import ray

    from vatt.console import init_ray

    init_ray()
    resources: dict[str, Any] = {"num_cpus": max(1.0, float(cfg.train.cpus_per_worker))}
    if cfg.train.use_gpu:
        resources["num_gpus"] = 1
    elif cfg.train.use_tpu:
        resources["resources"] = {"TPU": 1}

    @ray.remote(max_retries=0)  # a failure is reported, not silently repeated (the gate!)
    def evaluate_remotely() -> dict[str, Any]:
        return outcome_summary(run_evaluation(checkpoint, cfg, list(overrides), tasks, datasets,
                                              promote=promote))

    log.info("evaluating on a Ray worker (%s)", ", ".join(f"{k}={v}" for k, v in resources.items()))
    return ray.get(evaluate_remotely.options(**resources).remote())


def describe_decision(decision: Decision) -> str:
    """The gate's decision in one line."""
    verdict = "promoted" if decision.promoted else "not promoted"
    incumbent = ("nothing promoted before" if decision.promoted_value is None
                 else f"promoted model {decision.promoted_value:.4f}")
    return (f"{verdict}: {decision.metric} {decision.candidate_value:.4f} vs {incumbent} "
            f"({decision.reason})")


__all__ = ["load_checkpoint_for_eval", "evaluate_checkpoint", "checkpoint_config",
           "run_evaluation", "describe_decision", "with_eval_overrides", "FROZEN_AT_EVALUATION",
           "evaluation_identity", "LoadedCheckpoint", "EvaluationOutcome", "outcome_summary",
           "run_evaluation_on_worker"]
