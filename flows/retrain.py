"""The `retrain` flow, the platform's main job: data -> pretrain -> evaluate -> promote.

    data      pull the requested data version (`data_rev`), or ingest `source` (cached on its
              input, so unchanged data is not ingested again) and version it with DVC; with
              cluster.target=kubernetes, publish that version to data.versions_uri/<version>/,
              the immutable prefix the cluster's jobs read
    pretrain  Ray Train, under a run name pinned to this flow run: retrying a failed or crashed
              run (UI, API) resumes training from its last checkpoint instead of step 0
    evaluate  downstream tasks, report, and the promotion gate against the promoted model (with
              cluster.target=kubernetes as a RayJob too: the flow only orchestrates)

Deployed on a weekly schedule with a concurrency limit of one (prefect.yaml), so two scheduled
runs never race for the registry; `vatt pipeline` runs it once on the embedded defaults.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

from prefect import flow

from vatt_flows.artifacts import (publish_data_version, publish_evaluation, publish_timing,
                             publish_training)
from vatt_flows.ingest import ingest_data
from vatt_flows.params import ConfigFile, GitRev, Overrides, Preset, RunName, Source
from vatt_flows.pretrain import pinned_run_name
from vatt_flows.tasks import (evaluate_checkpoint, pretrain_model, publish_data, pull_data,
                         read_promoted, resolve_config)
from vatt.config import DEFAULT_PRESET, TrainingTarget, replace

log = logging.getLogger("vatt.flows")


@flow(name="retrain", description="Ingest or pull data, pretrain VATT, evaluate, promote")
def retrain(preset: Preset = DEFAULT_PRESET, overrides: Overrides = [], source: Source = "synthetic",
            source_path: Optional[str] = None, data_rev: Optional[GitRev] = None,
            run_name: Optional[RunName] = None, promote: bool = True,
            config: Optional[ConfigFile] = None) -> dict[str, Any]:
    """`overrides`: config KEY=VALUE entries (literal values) for every step. `config`: a whole
    config as YAML on the machine running the flow (e.g. the best.yaml of `vatt sweep`), used
    instead of `preset`. `source`/`source_path`: what to ingest into data.path; `data_rev`:
    instead, pull the data.dvc of that git revision. `run_name`: the Ray Train run (default:
    pinned to this flow run)."""
    from vatt.evaluate.pipeline import outcome_summary

    cfg = resolve_config(preset, overrides, run_name or pinned_run_name(preset, config), config)
    if data_rev:
        pull_data(cfg, data_rev)
    else:
        ingest_data(cfg, source, source_path)
    published = None
    if cfg.cluster.target == TrainingTarget.kubernetes:  # the jobs read one published version
        published = publish_data(cfg)
        publish_data_version(published)
        cfg = replace(cfg, [f"data.path={published['uri']}"])
    trained = pretrain_model(cfg)
    publish_training(cfg, trained)
    promoted = read_promoted(cfg)
    evaluated = evaluate_checkpoint(trained.checkpoint_uri, cfg, list(overrides), None, promote)
    publish_evaluation(cfg, evaluated, promoted)
    timing = publish_timing()  # from Prefect's records of the task runs above
    summary = outcome_summary(evaluated)
    return {"run_name": trained.config.train.run_name, "checkpoint": trained.checkpoint_uri,
            "history": trained.history, "metrics": summary["metrics"],
            "report": summary["report"], "decision": summary["decision"],
            "promoted_before": promoted, "timing": timing,
            "data": {key: published[key] for key in ("version", "uri")} if published else None}
