"""Where a pretraining run's wall time goes: start-up, steps, checkpoints, shut-down.

The driver notes its own moments (`DriverClock`); the rest comes from the rows training reports:
the loop's meter (vatt.train.loop.Window) adds to the first row of each attempt its start-up
moments (`phase_worker_start`, `phase_model_ready`, `phase_first_batch`, `phase_first_step`,
wall-clock seconds) and to every row the seconds spent between its step windows so far
(`phase_checkpoint_s`). `run_phases` turns both into seconds per phase:

    connect       preflight, storage check and connecting to (or starting) Ray
    prepare       the run's vocabulary and the Ray Data datasets (lazy: nothing is read yet)
    worker_group  TorchTrainer.fit() until the first worker enters its loop (controller, worker
                  processes, their imports, the process group)
    model         building the model and optimiser (and loading a checkpoint when resuming)
    first_batch   the Ray Data pipeline starting and the first batch arriving
    first_step    the first step (one-off costs: allocator, kernels, a compiled graph)
    steps         the other steps, checkpoints excluded
    checkpoints   between the step windows before the last row: writing and reporting the
                  checkpoints (and the other rows, and train.validation when it is on)
    finish        the last checkpoint, the worker group stopping and fit() returning
    summary       history.json and the loss curve

The worker's clock is the driver's on one machine; on a cluster the two may differ by the hosts'
clock skew (NTP: milliseconds), which shifts time between `worker_group` and `first_step`.
`fixed` is everything but `steps`: what a longer run does not pay again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Optional

WORKER_STAMPS = ("phase_worker_start", "phase_model_ready", "phase_first_batch", "phase_first_step")
PHASES = ("connect", "prepare", "worker_group", "model", "first_batch", "first_step", "steps",
          "checkpoints", "finish", "summary")


@dataclass
class DriverClock:
    """Wall-clock moments of the driver, set as the run passes them."""

    marks: dict[str, float] = field(default_factory=dict)

    def mark(self, name: str) -> None:
        self.marks[name] = time.time()


def run_phases(marks: dict[str, float], history: list[dict[str, Any]]) -> dict[str, float]:
    """Seconds per phase (PHASES, those that could be measured) plus `total` and `fixed`.

    `marks`: the driver's `start`, `connected`, `fit_start`, `fit_end`, `done`; `history`: the
    rows of this run. A resumed run is measured from its last attempt's start-up."""
    phases: dict[str, float] = {}
    start, connected = marks.get("start"), marks.get("connected")
    fit_start, fit_end, done = marks.get("fit_start"), marks.get("fit_end"), marks.get("done")
    if start is not None and connected is not None:
        phases["connect"] = connected - start
    if connected is not None and fit_start is not None:
        phases["prepare"] = fit_start - connected
    attempt = [row for row in history if "phase_worker_start" in row]
    first = attempt[-1] if attempt else None
    last = history[-1] if history else None
    if first is not None and last is not None:
        stamps = [first[key] for key in WORKER_STAMPS]
        if fit_start is not None:
            phases["worker_group"] = stamps[0] - fit_start
        phases["model"] = stamps[1] - stamps[0]
        phases["first_batch"] = stamps[2] - stamps[1]
        phases["first_step"] = stamps[3] - stamps[2]
        checkpoints = float(last.get("phase_checkpoint_s", 0.0))
        phases["steps"] = last["time"] - stamps[3] - checkpoints
        phases["checkpoints"] = checkpoints
        if fit_end is not None:
            phases["finish"] = fit_end - last["time"]
    if fit_end is not None and done is not None:
        phases["summary"] = done - fit_end
    if start is not None and done is not None:
        phases["total"] = done - start
        phases["fixed"] = phases["total"] - phases.get("steps", 0.0)
    return phases


def describe_phases(phases: dict[str, float]) -> Optional[str]:
    """One line: "start-up 41s (Ray 8s, ...), steps 230s, checkpoints 2s, finish 9s; fixed 18%"."""
    if "total" not in phases:
        return None
    names = {"connect": "Ray", "prepare": "datasets", "worker_group": "worker group",
             "model": "model", "first_batch": "first batch", "first_step": "first step"}
    startup = [(names[key], phases[key]) for key in names if key in phases]
    parts = [f"start-up {sum(s for _, s in startup):.1f}s ("
             + ", ".join(f"{name} {seconds:.1f}s" for name, seconds in startup) + ")"]
    for key, name in (("steps", "steps"), ("checkpoints", "checkpoints"), ("finish", "finish"),
                      ("summary", "summary")):
        if key in phases:
            parts.append(f"{name} {phases[key]:.1f}s")
    share = phases["fixed"] / max(phases["total"], 1e-9)
    return ", ".join(parts) + f"; fixed {phases['fixed']:.1f}s of {phases['total']:.1f}s ({share:.0%})"


__all__ = ["DriverClock", "PHASES", "WORKER_STAMPS", "describe_phases", "run_phases"]
