"""Stress check of the data pool (issue 11): ingests with a worker SIGKILLed at a random moment.

    .venv/bin/python benchmarks/pool_stress.py --runs 30 [--target worker|server|first]

Generates the synthetic layouts once (`tiny`, scale 0.05), then runs --runs ingests of the
UCF101 layout (40 videos, 20 shards, 2 workers), each in a fresh process, and SIGKILLs one
process of that ingest from outside: `worker` a random pool worker at a random moment within
--window seconds after the first worker appears, `first` the first worker as soon as it appears,
`server` the forkserver. A run that has not finished after --deadline seconds counts as hung
(its every thread's stack is printed). Prints one line per run and the tally; not a CI test
(it takes minutes), a check to run after changing vatt/data/pool.py.
"""

from __future__ import annotations

import argparse
import faulthandler
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OVERRIDES = ["data.ingest.synthetic_scale=0.05", "data.ingest.num_workers=2",
             "data.ingest.media_per_shard=2"]


def one_ingest(raw: Path, out: Path, deadline: float) -> None:
    """The child: one ingest; every thread's stack and exit code 3 if it outlives `deadline`."""
    from vatt.config import load_config
    from vatt.data.ingest import ingest_index
    from vatt.data.sources import READERS

    faulthandler.dump_traceback_later(deadline, exit=True)
    cfg = load_config("tiny", OVERRIDES)
    summary = ingest_index(cfg, READERS["ucf101"](raw / "ucf101", cfg.data.ingest),
                           raw / "ucf101", out, "ucf101", progress=False)
    print("DONE", summary["clips"], summary["quarantined"], flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--target", choices=["worker", "first", "server"], default="worker")
    parser.add_argument("--window", type=float, default=4.0)
    parser.add_argument("--deadline", type=float, default=120.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return one_ingest(Path(args.child[0]), Path(args.child[1]), args.deadline)

    import psutil

    from vatt.config import load_config
    from vatt.data.synthetic import generate

    rng = random.Random(args.seed)
    tally = {"finished": 0, "hung": 0, "failed": 0, "killed": 0}
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw"
        generate(load_config("tiny", OVERRIDES), raw, progress=False)
        for run in range(args.runs):
            out = Path(tmp) / f"out-{run}"
            child = subprocess.Popen(
                [sys.executable, __file__, "--child", str(raw), str(out),
                 "--deadline", str(args.deadline)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp)
            parent = psutil.Process(child.pid)
            delay = 0.0 if args.target == "first" else rng.uniform(0.0, args.window)
            seen, killed = None, None
            while killed is None and child.poll() is None:
                try:  # workers are the forkserver's children, the server is the ingest's child
                    server = [p for p in parent.children() if "forkserver" in " ".join(p.cmdline())]
                    targets = server if args.target == "server" else \
                        [w for s in server for w in s.children()]
                except psutil.Error:
                    targets = []
                if targets and seen is None:
                    seen = time.monotonic()
                if targets and time.monotonic() - seen >= delay:
                    try:
                        os.kill(rng.choice(targets).pid, signal.SIGKILL)
                        killed = round(time.monotonic() - seen, 2)
                    except ProcessLookupError:
                        pass
                time.sleep(0.002)
            stdout, stderr = child.communicate()
            outcome = ("hung" if child.returncode == 3 else
                       "finished" if child.returncode == 0 else "failed")
            tally[outcome] += 1
            tally["killed"] += killed is not None
            last = (stdout.strip().splitlines() or [""])[-1]
            print(f"run {run}: killed at {killed} s -> {outcome} {last}", flush=True)
            if outcome != "finished":
                print(stderr[-4000:], flush=True)
            shutil.rmtree(out, ignore_errors=True)
    print(f"{args.runs} runs, {tally['killed']} with a kill: {tally['finished']} finished, "
          f"{tally['hung']} hung, {tally['failed']} failed")


if __name__ == "__main__":
    main()
