"""The `evaluate` flow: downstream evaluation of a checkpoint (linear probes, zero-shot
retrieval, ...), its report, and the promotion gate, with the results shown in the UI."""

from __future__ import annotations

from typing import Any, Literal, Optional

from prefect import flow

from vatt_flows.artifacts import publish_evaluation
from vatt_flows.params import Overrides, Preset
from vatt_flows.tasks import evaluate_checkpoint, read_promoted, resolve_config
from vatt.config import DEFAULT_PRESET
from vatt.evaluate.pipeline import outcome_summary
from vatt.evaluate.tasks import TASKS

Task = Literal[tuple(TASKS)]  # type: ignore[valid-type]


@flow(name="evaluate", description="Downstream evaluation, report and promotion gate")
def evaluate(checkpoint: str = "latest", preset: Preset = DEFAULT_PRESET, overrides: Overrides = [],
             tasks: Optional[list[Task]] = None, promote: bool = True) -> dict[str, Any]:
    """`checkpoint`: a checkpoint folder or s3:// prefix, or "latest" (the newest under
    train.storage_path). `overrides` set evaluation keys (eval.*, data.path, e.g.
    eval.datasets.action_linear=[ucf101,kinetics400]); the model and its input are the
    checkpoint's. `tasks`: any of vatt.evaluate.tasks (default: eval.tasks, and
    eval.tasks_if_ingested where their data is ingested)."""
    from vatt.evaluate.pipeline import note_unused_overrides

    note_unused_overrides(overrides)
    cfg = resolve_config(preset, overrides)
    promoted = read_promoted(cfg)
    evaluated = evaluate_checkpoint(checkpoint, cfg, list(overrides), tasks, promote)
    publish_evaluation(cfg, evaluated, promoted)
    return outcome_summary(evaluated)  # what a caller of the flow reads, JSON
