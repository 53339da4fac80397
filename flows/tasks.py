"""The tasks the flows are made of; each is one call into the library.

Retries are declared here, on the decorators: tasks that talk to an object store, a DVC remote
or an API retry transient faults (vatt.faults.is_transient) with exponential backoff and
jitter; a bad config, missing data or a failed training is not retried. Each task returns the
library's result (`PretrainResult`, `EvaluationOutcome`, `VersionRecord`, ...); how long each
took is Prefect's record of the task run (vatt_flows.artifacts.publish_timing).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext
from prefect.tasks import exponential_backoff

from vatt.config import Config, load_config, replace
from vatt.faults import is_transient

if TYPE_CHECKING:  # the library's results, imported where the tasks run them
    from vatt.data.versioning import VersionRecord
    from vatt.evaluate.pipeline import EvaluationOutcome
    from vatt.train.pretrain import PretrainResult

log = logging.getLogger("vatt.flows")

RETRIES = 4
RETRY_DELAYS = exponential_backoff(backoff_factor=2)  # 2, 4, 8, 16 s
RETRY_JITTER = 0.5  # each delay drawn up to 50% longer, so retries of many runs spread out


def retry_transient(task_obj, task_run, state) -> bool:
    """retry_condition_fn: retry when the failure is transient, never a permanent error."""
    try:
        exc = state.result(raise_on_failure=False)
    except Exception as err:  # noqa: BLE001 - a result that cannot be read: judge that
        exc = err
    transient = isinstance(exc, BaseException) and is_transient(exc)
    if transient:
        log.warning("%s failed with a transient fault (%s: %s); retrying", task_run.name,
                    type(exc).__name__, exc)
    return transient


transient_retries = dict(retries=RETRIES, retry_delay_seconds=RETRY_DELAYS,
                         retry_jitter_factor=RETRY_JITTER, retry_condition_fn=retry_transient)


# ---------------------------------------------------------------------------------------------
# Config


@task(name="load-config", cache_policy=NO_CACHE)
def resolve_config(preset: str, overrides: list[str], run_name: Optional[str] = None,
                   config_file: Optional[str] = None) -> Config:
    """The validated config of `preset`, or of `config_file` (a whole config as YAML) instead;
    a missing or unparseable file, a bad key or value fails here, naming it, before any work."""
    cfg = load_config(config_file or preset, list(overrides))
    if run_name:
        cfg = replace(cfg, [f"train.run_name={run_name}"])
    source = f"config file {config_file} (preset {preset} not read)" if config_file else \
        f"preset {preset}"
    log.info("config: %s, overrides %s", source, " ".join(overrides) or "none")
    return cfg


# ---------------------------------------------------------------------------------------------
# Data


@task(name="fingerprint-source", cache_policy=NO_CACHE, **transient_retries)
def fingerprint_source(cfg: Config, source: str, path: Optional[str], out: str,
                       name: Optional[str] = None) -> str:
    """The hash of what determines the ingest's output (vatt.data.ingest.source_fingerprint),
    the dataset name included."""
    from vatt.data.ingest import source_fingerprint

    return source_fingerprint(cfg, source, path, out, name)


def ingested_data(source: str, out: str, name: Optional[str] = None) -> dict[str, Optional[str]]:
    """{manifest: its SHA-256, None when it is not there} of the datasets an ingest of `source`
    writes into `out`: what the data folder holds now. A manifest lists every clip with its
    members' checksums, so this sees any change of the data (a `dvc pull` of another revision
    included) while reading a few small files, not the shards."""
    from vatt.data.ingest import ingested_names
    from vatt.data.loader import manifest_sha256

    return {folder: manifest_sha256(out, folder)
            if (Path(out) / folder / "manifest.json").is_file() else None
            for folder in ingested_names(source, name)}


@dataclass
class Ingested:
    """What an ingest task wrote: the library's summaries (vatt.data.ingest.ingest), and the
    data folder's manifests' digests after it (`ingested_data`), which a cache hit is checked
    against."""

    summaries: list[dict[str, Any]]
    data: dict[str, Optional[str]]


def _ingest_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    # what determines the output, nothing else (not Prefect's per-run default); the data the
    # cached run wrote is in its result (`Ingested.data`), checked against the folder on a hit
    # (vatt_flows.ingest.ingest_data): a key over the folder's content before the run could not
    # hit on the run after, as the run itself changes it. "v2": results cached before were
    # dicts, not `Ingested`
    return f"vatt-ingest-v2-{parameters['fingerprint']}"


@task(name="ingest", cache_key_fn=_ingest_cache_key, persist_result=True,
      result_serializer="json", **transient_retries)
def ingest_source(cfg: Config, source: str, path: Optional[str], out: str,
                  fingerprint: str, name: Optional[str] = None) -> Ingested:
    """Ingest into dataset folder `name` (default: the source's; cached on `fingerprint`,
    which covers the name: a second run on unchanged input and settings is a cache hit and
    does no work)."""
    from vatt.data.ingest import ingest

    summaries = ingest(cfg, source, path, out, progress=False, name=name)
    return Ingested(summaries=summaries, data=ingested_data(source, out, name))


@task(name="version-data", cache_policy=NO_CACHE, **transient_retries)
def version_data(cfg: Config, out: str, enabled: bool = True) -> VersionRecord:
    """dvc add + dvc push of the project's data/ (retried: the remote may hiccup)."""
    from vatt.data.versioning import version_ingested

    record = version_ingested(out, cfg.storage, enabled=enabled)
    log.info("%s", record.message)
    return record


@task(name="pull-data", cache_policy=NO_CACHE, **transient_retries)
def pull_data(cfg: Config, rev: str) -> str:
    """dvc pull of the data.dvc of git revision `rev`; its data version."""
    from vatt.data.versioning import pull

    version = pull(rev=rev, storage=cfg.storage, remote=cfg.storage.dvc_remote)
    log.info("data: pulled %s (version %s)", rev, version)
    return version


@task(name="publish-data", cache_policy=NO_CACHE, **transient_retries)
def publish_data(cfg: Config) -> dict[str, Any]:
    """The data a cluster job reads: data.path's version, uploaded (once: versions are
    immutable) under data.versions_uri/<version>/ (vatt.data.publish); its record, with `uri`
    the prefix that becomes the job's data.path."""
    from vatt.data.publish import data_for_job
    from vatt.storage import ObjectStore

    _, record = data_for_job(cfg, ObjectStore.from_config(cfg.storage))
    log.info("data version %s at %s (%d files uploaded now)", record["version"], record["uri"],
             record.get("uploaded", 0))
    return record


# ---------------------------------------------------------------------------------------------
# Training and evaluation


@task(name="pretrain", cache_policy=NO_CACHE)
def pretrain_model(cfg: Config) -> PretrainResult:
    """Ray Train pretraining on the target of cluster.target: this machine's Ray (local), or a
    KubeRay RayJob (kubernetes: submitted, followed to its end, results read back from object
    storage). A worker that dies is replaced by Ray Train itself (train.max_failures); a retried
    flow run resumes from the run's last checkpoint (on Kubernetes it follows the run's RayJob,
    or re-creates it when it had failed)."""
    from vatt.config import TrainingTarget

    if cfg.cluster.target == TrainingTarget.kubernetes:
        from vatt.cluster.jobs import pretrain_on_cluster

        return pretrain_on_cluster(cfg)
    from vatt.train.pretrain import pretrain

    return pretrain(cfg)


@task(name="read-promoted", cache_policy=NO_CACHE, **transient_retries)
def read_promoted(cfg: Config) -> Optional[dict[str, Any]]:
    """The registry's promoted model before this evaluation (for the comparison table)."""
    from vatt.evaluate.registry import Registry
    from vatt.storage import ObjectStore

    return Registry(cfg.eval.registry_path, ObjectStore.from_config(cfg.storage)).promoted


@task(name="evaluate", cache_policy=NO_CACHE, **transient_retries)
def evaluate_checkpoint(checkpoint: str, cfg: Config, overrides: list[str],
                        tasks: Optional[list[str]], promote: bool) -> EvaluationOutcome:
    """Downstream evaluation, report and (if `promote`) the promotion gate: in this process, or
    with cluster.target=kubernetes as a RayJob on the cluster (reading the checkpoint and data
    from object storage, writing the report and the registry's decision there)."""
    from vatt.config import TrainingTarget
    from vatt.evaluate.pipeline import describe_decision, outcome_from_summary, run_evaluation

    if cfg.cluster.target == TrainingTarget.kubernetes:
        from vatt.cluster.jobs import evaluate_on_cluster

        outcome = outcome_from_summary(
            evaluate_on_cluster(cfg, checkpoint, overrides, tasks, promote))
    else:
        outcome = run_evaluation(checkpoint, cfg, tasks, promote=promote)
    log.info("report: %s", outcome.report_uri)
    if outcome.decision is not None:
        log.info("%s", describe_decision(outcome.decision))
    return outcome


__all__ = ["resolve_config", "fingerprint_source", "ingest_source", "ingested_data",
           "version_data", "pull_data",
           "publish_data",
           "pretrain_model", "read_promoted", "evaluate_checkpoint", "Ingested",
           "transient_retries", "retry_transient"]
