"""The `pretrain` flow: Ray Train pretraining of a config (local Ray, or the cluster at
RAY_ADDRESS). Giving the same `run_name` again resumes that run from its last checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from prefect import flow

from vatt_flows.artifacts import publish_training
from vatt_flows.params import ConfigFile, Overrides, Preset, RunName
from vatt_flows.tasks import pretrain_model, resolve_config
from vatt.config import DEFAULT_PRESET


def pinned_run_name(preset: str, config: Optional[str] = None) -> str:
    """A Ray Train run name fixed for this flow run: a retry of the flow run (from the UI or the
    API) gets the same name and so resumes training from the run's last checkpoint. Named after
    the preset, or the config file's name (`best` for a sweep's best.yaml)."""
    from prefect.runtime import flow_run

    source = Path(config).stem if config else preset
    return f"{source}-{flow_run.name}-{str(flow_run.id)[:8]}"


@flow(name="pretrain", description="VATT pretraining with Ray Train, resumable by run name")
def pretrain(preset: Preset = DEFAULT_PRESET, overrides: Overrides = [],
             run_name: Optional[RunName] = None,
             config: Optional[ConfigFile] = None) -> dict[str, Any]:
    """`config`: a whole config as YAML on the machine running the flow (e.g. the best.yaml of
    `vatt sweep`), trained instead of `preset`; `overrides` apply on top of either."""
    cfg = resolve_config(preset, overrides, run_name or pinned_run_name(preset, config), config)
    trained = pretrain_model(cfg)
    publish_training(cfg, trained)
    return {"run_uri": trained.run_uri, "checkpoint": trained.checkpoint_uri,
            "run_name": trained.config.train.run_name}
