"""Fixed costs of a pretraining run (issue 15): where the wall time goes besides the steps.

    python benchmarks/fixed_costs.py [--rounds 3] [--steps 20] [--variant NAME=OVERRIDE ...]
                                     [KEY=VALUE ...]

Each round runs every variant once, in turn (alternating, so a noisy neighbour slows all
alike), each as its own `vatt pretrain --preset tiny` process (`python -m vatt.cli`, so each pays
its own Ray start, as a user's run does), `--steps` steps with a checkpoint half-way and at
the end, on the ingested default dataset (data.path). It reads the run's `phases.json`
(vatt.train.phases) and prints, per variant and phase, the median seconds with the min-max
over rounds, and the seconds the training thread waited for data (from the run's history.json,
after the first logged window) in windows that cross an epoch boundary and in the others.
Default variants: Ray Train's own 2 s controller poll against the project's
train.poll_interval_s.

`--full-steps N` (default: the preset's train.optim.total_steps) turns the fixed seconds into
the fixed share of a full default run: fixed / (fixed + N x median seconds per step).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vatt.config import load_config
from vatt.train.phases import PHASES

DEFAULT_VARIANTS = ["ray-default-poll=train.poll_interval_s=2.0", "project=train.log_every=10"]


def data_waits(history: list[dict], global_batch: int) -> tuple[float, float]:
    """Seconds the training thread waited for data after the first logged window (the first
    batch is a phase of its own): (in windows that cross an epoch boundary, in the others).
    A row's window: (step - previous step) x global batch / clips_per_s seconds per worker."""
    crossing = other = 0.0
    for before, row in zip(history, history[1:]):
        seconds = (row["step"] - before["step"]) * global_batch / max(row["clips_per_s"], 1e-9)
        wait = row["data_wait_share"] * seconds
        if row["epoch"] != before["epoch"]:
            crossing += wait
        else:
            other += wait
    return crossing, other


def run_once(overrides: list[str], storage: Path, name: str) -> dict[str, float]:
    command = [sys.executable, "-m", "vatt.cli", "pretrain", "--preset", "tiny", *overrides,
               f"train.storage_path={storage}", f"train.run_name={name}"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    phases = json.loads((storage / name / "phases.json").read_text())
    history = json.loads((storage / name / "history.json").read_text())
    global_batch = load_config("tiny", overrides).train.global_batch_size
    phases["wait at epoch boundaries"], phases["wait elsewhere"] = data_waits(history, global_batch)
    return phases


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--full-steps", type=int, default=None)
    parser.add_argument("--variant", action="append", default=None,
                        help="NAME=KEY=VALUE[,KEY=VALUE]: a variant's overrides")
    parser.add_argument("overrides", nargs="*", help="for every variant, e.g. data.path=data")
    args = parser.parse_args()
    variants = {}
    for text in args.variant or DEFAULT_VARIANTS:
        name, _, overrides = text.partition("=")
        variants[name] = overrides.split(",") if overrides else []
    common = [f"train.optim.total_steps={args.steps}",
              f"train.checkpoint_every={max(1, args.steps // 2)}", *args.overrides]
    full_steps = args.full_steps or load_config("tiny", args.overrides).train.optim.total_steps
    results: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory(prefix="vatt-fixed-") as folder:
        for round_index in range(args.rounds):
            for name, overrides in variants.items():
                started = time.perf_counter()
                phases = run_once([*common, *overrides], Path(folder), f"{name}-{round_index}")
                results[name].append(phases)
                print(f"round {round_index + 1} {name}: fixed {phases['fixed']:.1f}s, steps "
                      f"{phases['steps']:.1f}s (data wait {phases['wait at epoch boundaries']:.1f}s "
                      f"in windows crossing an epoch, {phases['wait elsewhere']:.1f}s in the rest), "
                      f"process {time.perf_counter() - started:.1f}s",
                      flush=True)
    print()
    names = list(variants)
    print("| phase (s) | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for phase in [*PHASES, "fixed", "total", "wait at epoch boundaries", "wait elsewhere"]:
        print(f"| {phase} | " + " | ".join(spread([r[phase] for r in results[n]]) for n in names)
              + " |")
    # steps: the first is a phase of its own, the other steps - 1 are `steps`
    print(f"\nfixed share of a {full_steps}-step run (this run's seconds per step):")
    for name in names:
        per_step = statistics.median(r["steps"] / (args.steps - 1) for r in results[name])
        fixed = statistics.median(r["fixed"] for r in results[name])
        print(f"  {name}: {per_step:.2f} s/step, fixed {fixed:.1f}s -> "
              f"{fixed / (fixed + full_steps * per_step):.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
