"""Run a sweep: a Ray Tune `Tuner` whose trials each pretrain one configuration with Ray Train.

    vatt sweep tuning/droptoken_sharing.yaml --preset tiny --out sweeps/droptoken
    run_sweep("droptoken_sharing", preset="tiny", out="sweeps/droptoken")      # the same, in Python

Ray 2.60's Train V2 pattern: each trial runs `_trial`, a driver function that calls
`vatt.train.pretrain.pretrain` (so a trial trains exactly as `vatt pretrain` does) with
`TuneReportCallback` in its run config, which forwards every training row of the first worker
to Tune. The rows carry the held-out validation scores (`train.validation`, switched on here
when the config has it off), and `step` is the scheduler's time attribute, so ASHA compares
trials at the same training step. The trial driver itself asks for no CPU (the trial's workers
ask for theirs) and `max_concurrent_trials` is what the cluster fits at its largest: on 2 CPUs
one trial at a time, each with its configured workers and a CPU left to its data pipeline.

On a Ray cluster (RAY_ADDRESS; `vatt sweep` run as a Ray job on it): "its largest" is what its
autoscaler may grow it to, read as Ray Train and Ray Data read it
(`vatt.train.preflight.cluster_capacity`), so a cluster whose head has no CPU and whose
workers scale from zero accepts the sweep; trials beyond what is up wait for their workers,
which is the demand that makes the autoscaler add nodes. The preflight (one trial must fit
that maximum) runs before anything is written to the output: a refused sweep leaves nothing.

The output (`--out`, a folder or s3://bucket/prefix) holds `sweep.json` (the arguments), `tune/`
(Tune's experiment state), `runs/trial-<trial id>/` (each trial's Train run: checkpoints,
history) and the results (vatt_tuning.results): `results.csv`, `results.md`, `tradeoff.png`,
`best.yaml`. Other nodes of a cluster cannot see a local folder: there the output is s3://, and
a local copy of the results and Tune's console output (`tune.log`) is kept in the temp folder.

Resuming: `vatt sweep` on an output that holds a sweep restores it (`Tuner.restore`, reading
Tune's state from there, from any machine and folder): finished trials are not run again;
unfinished and failed ones start again, and as each trial's Train run is named after its trial
id, it resumes from its last checkpoint. What resume does not promise is the same early
stopping: Ray 2.60 saves the search algorithm's state with the experiment but not the
scheduler's, so the restored ASHA starts with empty rungs. Trials it stopped before the
interruption stay stopped (they are finished); a restored trial's first report is compared at
the highest rung at or below its step, and only with the scores reported after the resume.
ASHA's cutoff at a rung is a quantile of the scores recorded there so far, so with a different
set of scores a resumed sweep may stop a trial that an uninterrupted one would have kept, or
keep one it would have stopped.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

from ray.tune import Callback

from vatt.config import (DEFAULT_PRESET, Config, ConfigError, load_config, replace, to_dict,
                         with_absolute_paths)
from vatt.train.preflight import ClusterCapacity
from vatt_tuning.space import SCHEDULERS, Space, SpaceError, check_space, dotlist, load_space

SWEEP_JSON = "sweep.json"
TUNE_DIR = "tune"
TUNE_LOG = "tune.log"
RUNS_DIR = "runs"

log = logging.getLogger("vatt.sweep")


class SweepError(ValueError):
    """A sweep that cannot start or resume; the message says why and what to do."""


@dataclass
class SweepResult:
    out: Path  # the local copy of the results (for s3:// a cache in the temp folder)
    uri: str  # where the sweep lives (--out: a folder or s3://bucket/prefix)
    rows: list[dict[str, Any]]  # one per trial (vatt_tuning.results.trial_row)
    best: Optional[dict[str, Any]]  # the selected row, None when no trial reported the metric
    resumed: bool
    files: dict[str, Path]  # results.csv, results.md, tradeoff.png, best.yaml (local copies)
    space: Space
    base: Config


def sweep_base(cfg: Config) -> Config:
    """The base config of the trials: validation on (every log_every-aligned tenth of the run,
    unless the config sets its own), as the scheduler needs a score at every report."""
    if cfg.train.validation.every > 0:
        return cfg
    train = cfg.train
    every = max(train.log_every, train.optim.total_steps // 10)
    every = math.ceil(every / train.log_every) * train.log_every
    return replace(cfg, [f"train.validation.every={every}"])


def trial_config(base: dict[str, Any], assignment: dict[str, Any], run_name: str,
                 storage_path: str) -> Config:
    """One trial's config: the base with the trial's values, its own run name and run folder."""
    from vatt.config import from_dict

    return replace(from_dict(base), dotlist(assignment) + [f"train.run_name={run_name}",
                                                           f"train.storage_path={storage_path}"])


def _trial(config: dict[str, Any], *, base: dict[str, Any], tied: dict[str, str],
           storage_path: str) -> None:
    """The Tune trainable: pretrain one configuration; Train's rows go to Tune."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from vatt.train.pretrain import pretrain

    assignment = dict(config) | {key: config[source] for key, source in tied.items()}
    run_name = f"trial-{ray.tune.get_context().get_trial_id()}"
    cfg = trial_config(base, assignment, run_name, storage_path)
    pretrain(cfg, callbacks=[TuneReportCallback()], progress=False)


def max_concurrent_trials(cfg: Config, resources: dict[str, float]) -> int:
    """Trials that fit at once: each needs its workers' CPUs (GPUs) and one CPU for its data."""
    train = cfg.train
    per_trial_cpus = train.num_workers * train.cpus_per_worker + 1.0
    fits = int(resources.get("CPU", 0) // per_trial_cpus)
    if train.use_gpu:
        fits = min(fits, int(resources.get("GPU", 0) // (train.num_workers * train.gpus_per_worker)))
    return max(1, fits)


def trial_label(space: Space, values: dict[str, Any]) -> str:
    """'drop_rate=0.25 sharing=agnostic': the swept values by their last key part (the tied
    ones left out, they repeat another)."""
    names = [key.rsplit(".", 1)[-1] for key in space.params]
    short = len(set(names)) == len(names)
    return " ".join(f"{key.rsplit('.', 1)[-1] if short else key}={values.get(key)}"
                    for key in space.params)


def release_stranded_placement_groups(trials: list, ended) -> list[str]:
    """Remove the worker placement groups of Train runs whose trial was stopped.

    When ASHA stops a trial, Tune kills the trial's actor, and with it the Train controller it
    owns, before the controller can release its workers' placement group. Ray Train's own
    cleaner for that case asks Ray's state API whether the controller lives, which needs the
    dashboard (off here: it costs a CPU's worth of processes) and one Ray per machine; without
    it the group keeps its CPUs for the rest of the sweep and the next trial's data pipeline
    waits for them forever. So when a trial ends and no other trial runs, every placement group
    that is not a trial's own (those hold the trial's `memory` request) and has nothing
    scheduled in it is a stranded Train group, and is removed. With other trials running, a
    group might be one that was just created for them, and nothing is removed then."""
    import ray
    from ray.tune.experiment import Trial
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    if any(t.status == Trial.RUNNING and t is not ended for t in trials):
        return []
    total, free = ray.cluster_resources(), ray.available_resources()
    removed = []
    for pg_id, info in ray.util.placement_group_table().items():
        bundles = list((info.get("bundles") or {}).values())
        if info.get("state") != "CREATED" or not bundles or any("memory" in b for b in bundles):
            continue
        keys = {f"{name}_group_{pg_id}" for b in bundles for name in b}
        if all(abs(free.get(key, 0.0) - total.get(key, -1.0)) < 1e-9 for key in keys):
            remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(pg_id))))
            removed.append(pg_id)
    if removed:
        log.debug("released %d stranded Train placement group(s) after %s", len(removed), ended)
    return removed


class SweepProgress(Callback):
    """One log line per reported row and per finished trial (Tune's own tables stay off)."""

    def __init__(self, space: Space, total_steps: int, num_trials: int):
        self.space, self.total_steps, self.num_trials = space, total_steps, num_trials

    def _name(self, trial) -> str:
        # Tune numbers a sweep's trials <experiment>_00000, _00001, ... (kept across a resume)
        number = trial.trial_id.rsplit("_", 1)[-1]
        index = int(number) + 1 if number.isdigit() else trial.trial_id
        return f"trial {index}/{self.num_trials} [{trial_label(self.space, trial.config)}]"

    def on_trial_result(self, iteration, trials, trial, result, **info):
        text = (f"{self._name(trial)} step {result.get('step')}/{self.total_steps} "
                f"loss {result.get('loss_total', float('nan')):.3f}")
        if self.space.metric in result:
            text += f", {self.space.metric} {result[self.space.metric]:.3f}"
        log.info(text)

    def on_trial_complete(self, iteration, trials, trial, **info):
        release_stranded_placement_groups(trials, trial)
        last = trial.last_result or {}
        step = last.get("step")
        how = "finished" if step == self.total_steps else f"stopped early at step {step}"
        metric = self.space.metric
        log.info("%s %s: %s %s", self._name(trial), how, metric,
                 f"{last[metric]:.3f}" if metric in last else "not reported")

    def on_trial_error(self, iteration, trials, trial, **info):
        release_stranded_placement_groups(trials, trial)
        log.warning("%s failed; its error is in %s", self._name(trial),
                    Path(trial.local_path or ".") / "error.txt")


def _scheduler(space: Space, total_steps: int):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    options = dict(space.scheduler)
    kind = options.pop("type")
    if kind == "fifo":
        return FIFOScheduler()
    grace = int(options.pop("grace_period", max(1, total_steps // 4)))
    factor = float(options.pop("reduction_factor", 2))
    if options:
        raise SpaceError(f"{space.path}: unknown ASHA option(s) {sorted(options)}; allowed: "
                         "grace_period, reduction_factor")
    if not 0 < grace < total_steps:
        raise SpaceError(f"{space.path}: scheduler.grace_period={grace} must be within the run's "
                         f"train.optim.total_steps={total_steps} (it is counted in steps)")
    # max_t one past the last step: ASHA stops a trial that reaches max_t, and a trial stopped
    # by Tune is killed mid-teardown; a trial that completes should end on its own
    return ASHAScheduler(time_attr="step", max_t=total_steps + 1, grace_period=grace,
                         reduction_factor=factor)


def _arguments(space: Space, preset: str, overrides: list[str], samples: int) -> dict[str, Any]:
    return {"space": str(space.path.resolve()), "space_text": space.path.read_text(),
            "preset": preset, "overrides": list(overrides), "samples": samples}


@dataclass(frozen=True)
class SweepPlace:
    """Where a sweep lives: `uri`, a local folder or s3://bucket/prefix, holds sweep.json, Tune's
    experiment (tune/), the trials' Train runs (runs/) and the results, and is what a resume
    reads; `local` holds the local copy of the results and tune.log (the folder itself, or for
    s3:// a cache in the temp folder that nothing reads back)."""

    uri: str
    local: Path

    @property
    def is_s3(self) -> bool:
        from vatt.storage import is_s3_uri

        return is_s3_uri(self.uri)

    def join(self, name: str) -> str:
        return f"{self.uri.rstrip('/')}/{name}"

    @classmethod
    def of(cls, out: Optional[str | Path], space: Space) -> "SweepPlace":
        import tempfile

        from vatt.storage import is_s3_uri, parse_uri

        if out is not None and is_s3_uri(str(out)):
            location = parse_uri(str(out))
            if not location.key.strip("/"):
                raise SweepError(f"--out {out}: give a prefix in the bucket for the sweep, e.g. "
                                 f"s3://{location.bucket}/sweeps/{space.path.stem}")
            cache = Path(tempfile.gettempdir()) / "vatt-sweeps" / location.bucket / location.key
            return cls(uri=str(out).rstrip("/"), local=cache)
        folder = Path(out or Path("sweeps") / space.path.stem).resolve()
        return cls(uri=str(folder), local=folder)


def _check_cluster(base: Config, address: str) -> tuple[ClusterCapacity, str]:
    """The connected cluster's capacity and its description, refused when one trial cannot fit
    its maximum."""
    from vatt.train.preflight import PreflightError, check_resources, cluster_capacity

    capacity = cluster_capacity()
    where = capacity.describe(address)
    try:
        check_resources(base, capacity.maximum, where)
    except PreflightError as err:
        if capacity.autoscaled:
            hint = ("; or let the cluster grow larger (more nodes or bigger ones in the worker "
                    "group of its autoscaler: the RayCluster's workerGroupSpecs maxReplicas)")
        elif os.environ.get("RAY_ADDRESS"):
            hint = ("; or, on a cluster whose maximum was not found (no autoscaler report, "
                    "and not a KubeRay pod that may read its RayCluster), start the sweep once "
                    "enough worker nodes are up, e.g. with the worker group's replicas >= 1")
        else:
            hint = ""
        raise SweepError(f"{err}{hint}. Nothing was written to the sweep's --out") from None
    return capacity, where


def run_sweep(space: str | Path, preset: str = DEFAULT_PRESET, overrides: Iterable[str] = (),
              samples: int = 1, out: Optional[str | Path] = None,
              scheduler: Optional[str] = None) -> SweepResult:
    """Run (or resume) the sweep of `space` over `preset` + `overrides`; write the results.
    `scheduler` ("asha" or "fifo") replaces the space's (fifo: every trial runs to the end).
    `out` is a folder or s3://bucket/prefix (default sweeps/<space name>)."""
    from ray import tune

    from vatt_tuning.results import trials_from_grid, write_results
    from vatt.console import init_ray
    from vatt.storage import ObjectStore, StorageError

    overrides = list(overrides)
    parsed = load_space(space)
    if scheduler is not None:
        if scheduler not in SCHEDULERS:
            raise SweepError(f"--scheduler {scheduler}: use one of {', '.join(SCHEDULERS)}")
        if scheduler != parsed.scheduler["type"]:
            parsed.scheduler = {"type": scheduler}
    if samples < 1:
        raise SweepError(f"--samples {samples}: at least one sample of the space")
    base = sweep_base(load_config(preset, overrides))
    check_space(parsed, base)
    total_steps = base.train.optim.total_steps
    scheduler = _scheduler(parsed, total_steps)
    place = SweepPlace.of(out, parsed)
    store = ObjectStore.from_config(base.storage)
    arguments = _arguments(parsed, preset, overrides, samples) | {"scheduler": parsed.scheduler}
    try:
        if place.is_s3:
            store.check_bucket(place.uri)
        before_text = (store.read_text(place.join(SWEEP_JSON))
                       if store.exists(place.join(SWEEP_JSON)) else None)
    except StorageError as err:
        raise SweepError(f"--out {place.uri}: {err}") from None
    resumed = before_text is not None
    if resumed:
        before = json.loads(before_text)
        changed = [k for k in ("space_text", "preset", "overrides", "samples", "scheduler")
                   if before.get(k) != arguments[k]]
        if changed:
            raise SweepError(
                f"{place.uri} holds a sweep started with other arguments ({', '.join(changed)} "
                f"differ: it was {before['space']} --preset {before['preset']} --samples "
                f"{before['samples']} {' '.join(before['overrides'])}); resume it with the same "
                "arguments, or give another --out")

    # Tune saves its experiment state at most every 10 s by default; a sweep killed within
    # that time after a trial finished would run the trial again on resume
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    where = init_ray()
    # one trial must fit in the most the cluster may grow to, or nothing would ever run; only
    # then is anything written to --out, so a refused sweep leaves nothing to trip its rerun
    capacity, where = _check_cluster(base, where)
    # trials beyond what is up now wait for their workers: that demand is what makes an
    # autoscaler add nodes, and the next trials start as they join
    concurrent = max_concurrent_trials(base, capacity.maximum)
    try:
        store.write_text(place.join(SWEEP_JSON), json.dumps(arguments, indent=1) + "\n")
    except StorageError as err:
        raise SweepError(f"--out {place.uri}: {err}") from None
    place.local.mkdir(parents=True, exist_ok=True)
    filesystem, storage_path = store.pyarrow_filesystem(place.uri)
    if not place.is_s3:
        filesystem = None  # a local folder: Tune's own default, as for any local path
    experiment = f"{storage_path}/{TUNE_DIR}"
    num_trials = parsed.grid_size() * samples
    trainable = tune.with_resources(
        # a trial runs in Tune's trial folder: relative paths resolve here, in the driver
        tune.with_parameters(_trial, base=to_dict(with_absolute_paths(base)), tied=parsed.tied,
                             storage_path=place.join(RUNS_DIR)),
        # the trial only drives its Train run; "memory": 1 byte gives Tune a non-empty request
        {"CPU": 0, "memory": 1})
    callback = SweepProgress(parsed, total_steps, num_trials)
    if resumed and tune.Tuner.can_restore(experiment, storage_filesystem=filesystem):
        tuner = tune.Tuner.restore(experiment, trainable, resume_unfinished=True,
                                   resume_errored=True, storage_filesystem=filesystem)
        # finished as the results table says it: no error, the last step reached
        finished = [r for r in tuner.get_results() if r.error is None
                    and (r.metrics or {}).get("step") == total_steps]
        log.info("resuming the sweep in %s: %d of %d trial(s) finished and are not run again; "
                 "unfinished ones continue from their last checkpoint", place.uri, len(finished),
                 num_trials)
    else:
        resumed = False
        tuner = tune.Tuner(
            trainable, param_space=parsed.tune_space(),
            tune_config=tune.TuneConfig(metric=parsed.metric, mode=parsed.mode,
                                        scheduler=scheduler, num_samples=samples,
                                        max_concurrent_trials=concurrent, reuse_actors=False),
            run_config=tune.RunConfig(name=TUNE_DIR, storage_path=storage_path,
                                      storage_filesystem=filesystem, verbose=0,
                                      callbacks=[callback],
                                      failure_config=tune.FailureConfig(max_failures=1)))
        log.info("sweep of %s: %d trial(s) of %d steps, up to %d at a time on %s; results in %s",
                 parsed.path.name, num_trials, total_steps, concurrent, where, place.uri)
    # Tune prints its own banner and tables on stdout whatever its verbosity: into a log file
    with open(place.local / TUNE_LOG, "a") as tune_log, contextlib.redirect_stdout(tune_log):
        grid = tuner.fit()
    rows, best, files = write_results(place.local, parsed, base,
                                      trials_from_grid(parsed, base, grid))
    if place.is_s3:
        store.upload_files([(path, place.join(name)) for name, path in files.items()])
    return SweepResult(out=place.local, uri=place.uri, rows=rows, best=best, resumed=resumed,
                       files=files, space=parsed, base=base)


__all__ = ["run_sweep", "SweepResult", "SweepPlace", "SweepError", "SpaceError", "ConfigError",
           "max_concurrent_trials", "trial_config", "sweep_base", "trial_label"]
