"""Checkpoint -> evaluation -> report -> promotion decision, the whole `vatt evaluate` job.

    store = ObjectStore.from_config(cfg.storage)
    loaded = load_checkpoint_for_eval(resolve_checkpoint("latest", storage_path, store), store, cfg)
    jobs, skipped = plan(loaded.config, tasks, vocab_words=loaded.vocab_words)
    outcome = evaluate_checkpoint(loaded, jobs, store=store, skipped=skipped)

A checkpoint is a folder or s3:// prefix written by vatt.train; vatt.checkpoints owns its format
and reads it. One evaluation reads the checkpoint's config, vocabulary and weights once: the
weights' SHA-256 (from the same read) is what the registry records and checks its copy against.

What is evaluated with which config: the checkpoint's config decides the model and the input
it was trained on, the evaluation's config (the command's preset and overrides) everything the
evaluation chooses (`evaluation_config`: eval.*, storage.*, and where the data is, windows and
captions per clip). The same rule measures the candidate and the promoted model it is compared
with.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional

import torch

from vatt.checkpoints import (CONFIG_FILE, MODEL_FILE, CheckpointError, file_uri, read_checkpoint,
                              resolve_checkpoint)
from vatt.config import Config, to_dict
from vatt.evaluate.data import EvalJob
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


# the data settings an evaluation chooses (beside eval.* and storage.*): where the data is,
# windows and captions per clip; the rest of data.* is the input the model was trained on
EVALUATION_DATA = ("path", "eval_num_windows", "num_text_candidates")


def note_unused_overrides(overrides: Iterable[str]) -> list[str]:
    """The dotlist overrides of an evaluation that set what the checkpoint decides (the model
    and the input it was trained on, which `evaluation_config` takes from it), said in a
    warning: they are not applied (a retraining's overrides are the checkpoint's already)."""
    unused = [item for item in overrides if item.startswith("model.") or (
        item.startswith("data.") and item.split("=", 1)[0][5:] not in EVALUATION_DATA)]
    if unused:
        log.warning("%s: not applied; an evaluation uses the model and input of the "
                    "checkpoint's own config, and takes eval.*, storage.*, %s", ", ".join(unused),
                    ", ".join("data." + key for key in EVALUATION_DATA))
    return unused


@dataclass
class LoadedCheckpoint:
    model: torch.nn.Module  # in eval mode, on the CPU
    config: Config  # the checkpoint's own, with the evaluation's settings (evaluation_config)
    data_version: Any
    step: Optional[int]
    vocab_words: Optional[tuple[str, ...]]  # None: a checkpoint from before they had one
    uri: str  # the folder or s3:// prefix it was read from
    weights_sha256: str  # of the weights file the model was loaded from


def load_checkpoint_for_eval(checkpoint: str | Path, store: ObjectStore,
                             settings: Optional[Config] = None) -> LoadedCheckpoint:
    """Build the model of the checkpoint's own config and load its weights (strict); each file
    of the checkpoint (folder or s3:// prefix) is read once. Its config is the checkpoint's with
    the evaluation's `settings` (`evaluation_config`; None: the checkpoint's own). Raises
    CheckpointError naming the missing or corrupt file."""
    from vatt.text import Vocabulary

    saved = read_checkpoint(checkpoint, store)
    cfg = saved.config if settings is None else evaluation_config(saved.config, settings)
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


# plans the evaluation of one (task, dataset) for a model: (its config, its vocabulary, task,
# dataset) -> its jobs
DataBuilder = Callable[[Config, Optional[tuple[str, ...]], str, str], list[EvalJob]]


def metric_ranks(results: Mapping[str, Any], metric: str) -> Optional[list[int]]:
    """The per-query ranks behind a retrieval metric of a results dict (None for others)."""
    from vatt.evaluate.tasks import result_key, split_key

    task, dataset, _ = split_key(metric)
    dataset = dataset or next(iter((results.get("datasets") or {}).get(task) or []), None)
    body = (results.get("tasks") or {}).get(result_key(task, dataset)) if dataset else None
    return list(body["ranks"]) if body and body.get("ranks") else None


def evaluation_config(model_cfg: Config, evaluation_cfg: Config) -> Config:
    """A model's own config (its architecture and input) with an evaluation's settings:
    eval.*, storage.*, and the data settings an evaluation chooses (EVALUATION_DATA). How a
    candidate is evaluated, and the promoted model re-measured on the candidate's data."""
    data = dataclasses.replace(model_cfg.data, **{key: getattr(evaluation_cfg.data, key)
                                                  for key in EVALUATION_DATA})
    return dataclasses.replace(model_cfg, data=data, eval=evaluation_cfg.eval,
                               storage=evaluation_cfg.storage)


def remeasure_champion(promoted: Mapping[str, Any], cfg: Config, metric: str,
                       jobs: Iterable[EvalJob], *, store: ObjectStore,
                       data_for: Optional[DataBuilder] = None,
                       vocab_words: Optional[tuple[str, ...]] = None,
                       device: Optional[str | torch.device] = None) -> ChampionMeasure:
    """The promoted model (the registry's copy of its weights) evaluated on the candidate's
    job of `metric`'s task with the candidate's evaluation settings (`cfg`), so the gate has
    two comparable numbers. Its own architecture, input and vocabulary are kept: `data_for`
    plans its job (captions in its vocabulary); without it, the candidate's job is reused when
    the model reads the same input and vocabulary (`vocab_words`, the candidate's). Never
    raises: a failure is the measure's `error`, which the gate records."""
    from vatt.evaluate.tasks import split_key

    task, dataset, _ = split_key(metric)
    expected = str(promoted.get("weights_sha256"))
    try:
        job = next((j for j in jobs if j.task.name == task and dataset in (None, j.dataset)),
                   None)
        if job is None:
            raise ValueError(f"this evaluation did not run {task}"
                             + (f" on {dataset}" if dataset else ""))
        champion = load_checkpoint_for_eval(promoted["checkpoint"], store, cfg)
        if champion.weights_sha256 != expected:
            raise CheckpointError(f"{promoted['checkpoint']} no longer holds the promoted weights "
                                  f"(SHA-256 {champion.weights_sha256[:12]}, the registry says "
                                  f"{expected[:12]}); restore them or start a new registry")
        if data_for is not None:
            own = data_for(champion.config, champion.vocab_words, task, job.dataset)
        else:
            frozen = [key for key in FROZEN_AT_EVALUATION if key.startswith("data.") and
                      getattr(champion.config.data, key[5:]) != getattr(cfg.data, key[5:])]
            if champion.vocab_words != vocab_words and "text" in job.task.modalities:
                frozen.append("its vocabulary")
            if frozen:
                raise ValueError(f"it reads other input ({', '.join(frozen)}), so it needs data "
                                 "of its own: evaluate through run_evaluation")
            own = [job]
        results = evaluate_model(champion.model, champion.config, own, device=device)
        prefix = metric.rpartition(".")[0] + "."
        return ChampionMeasure(expected, {k: v for k, v in results["metrics"].items()
                                          if k.startswith(prefix)},
                               evaluation_identity(champion.config, own),
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


def evaluate_checkpoint(loaded: LoadedCheckpoint, jobs: Iterable[EvalJob], promote: bool = True,
                        *, store: ObjectStore, device: Optional[str | torch.device] = None,
                        skipped: Optional[Mapping[str, str]] = None,
                        data_for: Optional[DataBuilder] = None) -> EvaluationOutcome:
    """Evaluate a loaded checkpoint (`load_checkpoint_for_eval`) on `jobs` with its config,
    write the report to <eval.output_path>/<run id>/ and, if `promote`, put the result
    through the registry's promotion gate. `store` (built from cfg.storage by the caller) reads
    the checkpoint and writes the report and registry; the model runs on `device` (default:
    the evaluated config's eval.device). `skipped` ({what: why}) is recorded in the results
    and the report. When the promoted model's stored number of the gate metric is not
    comparable with this evaluation's, the promoted model is re-measured on this evaluation's
    job first (`remeasure_champion`, with `data_for`)."""
    cfg, jobs = loaded.config, list(jobs)
    results = evaluate_model(loaded.model, cfg, jobs, device=device)
    identity = evaluation_identity(cfg, jobs)
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
            champion = remeasure_champion(promoted, cfg, metric, jobs, store=store,
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


def run_evaluation(checkpoint: str, cfg: Config, tasks: Optional[Iterable[str]] = None,
                   datasets: Optional[Mapping[str, Iterable[str] | str]] = None,
                   promote: bool = True) -> EvaluationOutcome:
    """The `vatt evaluate` job: resolve `checkpoint` ("latest" looks under cfg.train.storage_path),
    load it with its own config and the evaluation's settings of `cfg` (`evaluation_config`),
    plan its jobs from the ingested datasets (vatt.evaluate.data.plan) and evaluate, report and
    (if `promote`) gate it. `tasks` given: exactly those, each needing its data; default:
    eval.tasks plus those of eval.tasks_if_ingested whose data is ingested (the others are
    listed as skipped). `datasets`: {task: [folder, ...]} over eval.datasets. The
    checkpoint's files are read once, through the store `cfg.storage` configures."""
    from vatt.evaluate.data import describe_jobs, plan

    store = ObjectStore.from_config(cfg.storage)  # the endpoint, region and timeouts configured
    folder = resolve_checkpoint(checkpoint, cfg.train.storage_path, store)
    loaded = load_checkpoint_for_eval(folder, store, cfg)
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
    jobs, skipped = plan(loaded.config, [*tasks, *optional], datasets,
                         vocab_words=loaded.vocab_words, optional=optional)
    for line in describe_jobs(jobs):
        log.info("  %s", line)
    for task, why in skipped.items():
        log.info("  %s: skipped, %s", task, why)

    def data_for(model_cfg: Config, vocab_words: Optional[tuple[str, ...]], task: str,
                 dataset: str) -> list[EvalJob]:
        return plan(model_cfg, [task], {task: [dataset]}, vocab_words=vocab_words)[0]

    return evaluate_checkpoint(loaded, jobs, promote=promote, store=store, skipped=skipped,
                               data_for=data_for)


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


def run_evaluation_on_worker(checkpoint: str, cfg: Config,
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
        return outcome_summary(run_evaluation(checkpoint, cfg, tasks, datasets,
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


__all__ = ["load_checkpoint_for_eval", "evaluate_checkpoint", "note_unused_overrides",
           "run_evaluation", "describe_decision", "EVALUATION_DATA", "FROZEN_AT_EVALUATION",
           "evaluation_identity", "remeasure_champion", "evaluation_config", "metric_ranks",
           "LoadedCheckpoint", "EvaluationOutcome", "outcome_summary", "outcome_from_summary",
           "run_evaluation_on_worker"]
