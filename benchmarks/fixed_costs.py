"""Fixed costs of a pretraining run (issue 15): where the wall time goes besides the steps.

    python benchmarks/fixed_costs.py [--rounds 3] [--steps 20] [--variant NAME=OVERRIDE ...]
                                     [KEY=VALUE ...]

Each round runs every variant once, in turn (alternating, so a noisy neighbour slows all
alike), each as its own `python -m vatt.train.pretrain --preset tiny` process (so each pays
its own Ray start, as a user's run does), `--steps` steps with a checkpoint half-way and at
the end, on the ingested default dataset (data.path). It reads the run's `phases.json`
(vatt.train.phases) and prints, per variant and phase, the median seconds with the min-max
over rounds. Default variants: Ray Train's own 2 s controller poll against the project's
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


def run_once(overrides: list[str], storage: Path, name: str) -> dict[str, float]:
    command = [sys.executable, "-m", "vatt.train.pretrain", "--preset", "tiny", *overrides,
               f"train.storage_path={storage}", f"train.run_name={name}"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return json.loads((storage / name / "phases.json").read_text())


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
                      f"{phases['steps']:.1f}s, process {time.perf_counter() - started:.1f}s",
                      flush=True)
    print()
    names = list(variants)
    print("| phase (s) | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for phase in [*PHASES, "fixed", "total"]:
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
