"""Checkpoint -> evaluation -> report -> promotion decision, the whole `vatt evaluate` job.

    store = ObjectStore.from_config(cfg.storage)
    loaded = load_checkpoint_for_eval(resolve_checkpoint("latest", storage_path, store), (), store)
    outcome = evaluate_checkpoint(loaded, data, tasks, store=store)   # data[task][split]: batches

A checkpoint is a folder or s3:// prefix written by vatt.train; vatt.checkpoints owns its format
and reads it. One evaluation reads the checkpoint's config, vocabulary and weights once: the
weights' SHA-256 (from the same read) is what the registry records and checks its copy against.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional

import torch
from omegaconf import OmegaConf

from vatt.checkpoints import (CONFIG_FILE, MODEL_FILE, CheckpointError, file_uri, read_checkpoint,
                              read_config, resolve_checkpoint)
from vatt.config import Config, ConfigError, replace, to_dict
from vatt.evaluate.identity import differences, evaluation_identity, metric_part
from vatt.evaluate.registry import ChampionMeasure, Decision, Registry, RegistryError
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

    `overrides` (dotlist) change evaluation settings only (e.g. eval.probe.epochs=20); the model
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


# builds the evaluation data of one (task, dataset) for a model: (its config, its vocabulary,
# task, dataset) -> data[task][dataset][split]
DataBuilder = Callable[[Config, Optional[tuple[str, ...]], str, str],
                       Mapping[str, Mapping[str, Any]]]


def metric_ranks(results: Mapping[str, Any], metric: str) -> Optional[list[int]]:
    """The per-query ranks behind a retrieval metric of a results dict (None for others)."""
    from vatt.evaluate.tasks import result_key, split_key

    task, dataset, _ = split_key(metric)
    dataset = dataset or next(iter((results.get("datasets") or {}).get(task) or []), None)
    body = (results.get("tasks") or {}).get(result_key(task, dataset)) if dataset else None
    return list(body["ranks"]) if body and body.get("ranks") else None


def evaluation_config(model_cfg: Config, evaluation_cfg: Config) -> Config:
    """A model's own config (its architecture and input) with another evaluation's settings:
    eval.*, storage.*, and the data settings an evaluation chooses (where the data is, windows
    and captions per clip). How the promoted model is re-measured on a candidate's data."""
    data = dataclasses.replace(model_cfg.data, path=evaluation_cfg.data.path,
                               eval_num_windows=evaluation_cfg.data.eval_num_windows,
                               num_text_candidates=evaluation_cfg.data.num_text_candidates)
    return dataclasses.replace(model_cfg, data=data, eval=evaluation_cfg.eval,
                               storage=evaluation_cfg.storage)


def remeasure_champion(promoted: Mapping[str, Any], cfg: Config, metric: str,
                       data: Mapping[str, Mapping[str, Any]], *, store: ObjectStore,
                       data_for: Optional[DataBuilder] = None,
                       vocab_words: Optional[tuple[str, ...]] = None,
                       device: Optional[str | torch.device] = None) -> ChampionMeasure:
    """The promoted model (the registry's copy of its weights) evaluated on the candidate's
    data of `metric`'s task with the candidate's evaluation settings (`cfg`), so the gate has
    two comparable numbers. Its own architecture, input and vocabulary are kept: `data_for`
    builds its data (captions in its vocabulary); without it, the candidate's `data` is reused
    when the model reads the same input and vocabulary (`vocab_words`, the candidate's). Never raises: a failure is the
    measure's `error`, which the gate records."""
    from vatt.evaluate.runner import per_dataset
    from vatt.evaluate.tasks import TASKS, split_key

    task, dataset, _ = split_key(metric)
    expected = str(promoted.get("weights_sha256"))
    try:
        if task not in data:
            raise ValueError(f"this evaluation did not run {task}")
        dataset = dataset or next(iter(per_dataset(data, [task])[task]))
        champion = load_checkpoint_for_eval(promoted["checkpoint"], (), store)
        if champion.weights_sha256 != expected:
            raise CheckpointError(f"{promoted['checkpoint']} no longer holds the promoted weights "
                                  f"(SHA-256 {champion.weights_sha256[:12]}, the registry says "
                                  f"{expected[:12]}); restore them or start a new registry")
        champion_cfg = evaluation_config(champion.config, cfg)
        if data_for is not None:
            own = data_for(champion_cfg, champion.vocab_words, task, dataset)
        else:
            frozen = [key for key in FROZEN_AT_EVALUATION if key.startswith("data.") and
                      getattr(champion_cfg.data, key[5:]) != getattr(cfg.data, key[5:])]
            if champion.vocab_words != vocab_words and "text" in TASKS[task].modalities:
                frozen.append("its vocabulary")
            if frozen:
                raise ValueError(f"it reads other input ({', '.join(frozen)}), so it needs data "
                                 "of its own: evaluate through run_evaluation")
            own = {task: {dataset: per_dataset(data, [task])[task][dataset]}}
        results = evaluate_model(champion.model, champion_cfg, [task], own, device=device)
        prefix = metric.rpartition(".")[0] + "."
        return ChampionMeasure(expected, {k: v for k, v in results["metrics"].items()
                                          if k.startswith(prefix)},
                               evaluation_identity(champion_cfg, own),
                               metric_ranks(results, metric))
    except Exception as err:  # noqa: BLE001 - recorded in the decision, not lost
        log.warning("re-measuring the promoted model %s failed", promoted.get("checkpoint"),
                    exc_info=True)
        return ChampionMeasure(expected, {}, None, error=f"{type(err).__name__}: {err}")


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
                        skipped: Optional[Mapping[str, str]] = None,
                        data_for: Optional[DataBuilder] = None) -> EvaluationOutcome:
    """Evaluate a checkpoint (a folder or s3:// prefix, loaded here with `overrides`, or one
    `load_checkpoint_for_eval` has loaded), write the report to <eval.output_path>/<run id>/
    and, if `promote`, put the result through the registry's promotion gate. `store` (built
    from cfg.storage by the caller) reads the checkpoint and writes the report and registry;
    the model runs on `device` (default: the evaluated config's eval.device). `tasks` default:
    every task of `data`; `skipped` ({task: why}) is recorded in the results and the report.
    When the promoted model's stored number of the gate metric is not comparable with this
    evaluation's, the promoted model is re-measured on this evaluation's data first
    (`remeasure_champion`, with `data_for`)."""
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
        metric = cfg.eval.promotion.metric
        champion = None
        if promoted is not None and (
                metric not in promoted.get("metrics", {})
                or differences(metric_part(identity, metric),
                               metric_part(promoted.get("evaluation"), metric))):
            log.info("the promoted model's %s is not comparable with this evaluation's: "
                     "re-measuring it on the same data", metric)
            champion = remeasure_champion(promoted, cfg, metric, data, store=store,
                                          data_for=data_for, vocab_words=loaded.vocab_words,
                                          device=device)
        try:
            decision = Registry(cfg.eval.registry_path, store).consider(
                loaded.uri, config=to_dict(cfg), data_version=loaded.data_version,
                metrics=results["metrics"], metric=metric, evaluation=identity,
                margin=cfg.eval.promotion.margin, noise_z=cfg.eval.promotion.noise_z,
                ranks=metric_ranks(results, metric), champion=champion,
                weights_sha256=loaded.weights_sha256)
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

    def data_for(model_cfg: Config, vocab_words: Optional[tuple[str, ...]], task: str,
                 dataset: str) -> Mapping[str, Mapping[str, Any]]:
        return build_eval_data_and_skipped(model_cfg, [task], {task: [dataset]},
                                           vocab_words=vocab_words)[0]

    return evaluate_checkpoint(loaded, data, list(data), promote=promote, store=store,
                               skipped=skipped, data_for=data_for)


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


def outcome_from_summary(summary: dict[str, Any]) -> EvaluationOutcome:
    """The outcome an `outcome_summary` describes (a RayJob's `vatt evaluate --outcome`), its
    results as far as the summary keeps them: `outcome_summary` of it gives `summary` back."""
    results = {**summary["results"], **{key: summary[key] for key in
                                        ("metrics", "checkpoint", "step", "data_version")}}
    decision = Decision(**summary["decision"]) if summary["decision"] is not None else None
    return EvaluationOutcome(results=results, report_uri=summary["report"], decision=decision)


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
    if decision.promoted_value is not None:
        incumbent = (f"promoted model {decision.promoted_value:.4f} "
                     f"({decision.promoted_value_source}), margin {decision.margin:.4f}")
    elif decision.reason.startswith("first model"):
        incumbent = "nothing promoted before"
    else:
        incumbent = "no comparable number of the promoted model"
    return (f"{verdict}: {decision.metric} {decision.candidate_value:.4f} vs {incumbent} "
            f"({decision.reason})")


__all__ = ["load_checkpoint_for_eval", "evaluate_checkpoint", "checkpoint_config",
           "run_evaluation", "describe_decision", "with_eval_overrides", "FROZEN_AT_EVALUATION",
           "evaluation_identity", "remeasure_champion", "evaluation_config", "metric_ranks",
           "LoadedCheckpoint", "EvaluationOutcome", "outcome_summary", "outcome_from_summary",
           "run_evaluation_on_worker"]
