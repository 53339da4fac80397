"""The `pretrain` flow: Ray Train pretraining of a config (local Ray, or the cluster at
RAY_ADDRESS). Giving the same `run_name` again resumes that run from its last checkpoint."""

from __future__ import annotations

from typing import Any, Optional

from prefect import flow

from flows.artifacts import publish_training
from flows.params import Overrides, Preset, RunName
from flows.tasks import pretrain_model, resolve_config


def pinned_run_name(preset: str) -> str:
    """A Ray Train run name fixed for this flow run: a retry of the flow run (from the UI or the
    API) gets the same name and so resumes training from the run's last checkpoint."""
    from prefect.runtime import flow_run

    return f"{preset}-{flow_run.name}-{str(flow_run.id)[:8]}"


@flow(name="pretrain", description="VATT pretraining with Ray Train, resumable by run name")
def pretrain(preset: Preset = "tiny", overrides: Overrides = [],
             run_name: Optional[RunName] = None) -> dict[str, Any]:
    cfg = resolve_config(preset, overrides, run_name or pinned_run_name(preset))
    trained = pretrain_model(cfg)
    publish_training(cfg, trained)
    return {key: trained[key] for key in ("run_uri", "checkpoint", "run_name", "seconds")}
