"""Peak memory of fine-tuning (`action_finetune`, `audio_finetune`) at the spec's input.

    python benchmarks/finetune_memory.py --data /tmp/finetune-memory                 # this checkout
    PYTHONPATH=<other checkout> python benchmarks/finetune_memory.py --data /tmp/finetune-memory

Input: the spec's, 32 frames of 224x224 at 10 fps and 48 kHz audio (153,600 samples), the
spec's fine-tuning batch of 64 (eval.finetune.batch_size) and test views (4 windows x 3 crops for
video). One training window's video is 32x224x224x3 = 4.6 MiB as the loader's uint8, 18.4 MiB as
float32; its audio 0.6 MiB. Data: the generated Kinetics and AudioSet layouts (`vatt ingest
--source synthetic`, scale 0.1) ingested once at that input into `--data`; each train split's
shards are listed `--repeat` times so that one epoch fills the shuffle buffer (every listed clip
is read, decoded and augmented; the memory is that of a split of that many clips). Model: the
`tiny` preset's widths and depth with the spec's patch sizes (4x16x16 video, 128-sample audio):
the point is the memory of the data path, not of a Medium backbone (which a CPU cannot train at
this input in a benchmark's time). `--steps` optimiser steps (default 3: the buffer fills before
the first, so every window it can hold has been held).

Each task runs what `vatt evaluate --tasks <task>` runs (`plan` + `evaluate_model`)
in a fresh process on a local Ray with 2 CPUs, and reports for the driver (where the shuffle
buffer and the batches live; Ray's decoding workers are separate processes of fixed size) the
peak of its private memory (RssAnon, sampled every 20 ms) and its peak RSS (ru_maxrss, which
also counts pages of Ray's shared-memory object store it read batches from), plus the most the
shuffle buffer held (the task's `shuffle_buffer_peak_mb`, where the code reports it).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from eval_memory import PeakPrivateMemory  # the same sampler (benchmarks/ is sys.path[0] here)

SPEC_INPUT = ["data.num_frames=32", "data.fps=10", "data.frame_size=224",
              "data.sample_rate=48000", "model.video.patch_size=[4,16,16]",
              "model.audio.patch_size=128", "model.audio.input_scale=1.0"]
# the spec's fine-tuning batch and schedule shape; the test views are the defaults' (4 x 3)
FINETUNE = ["eval.finetune.batch_size=64", "eval.finetune.warmup_steps=1",
            "data.eval_num_windows=4", "eval.batch_size=32"]
DATASETS = {"action_finetune": "synthetic-kinetics", "audio_finetune": "synthetic-audioset"}
TRAIN_SPLITS = {"action_finetune": ["train"], "audio_finetune": ["train"]}


def _config(data: Path, extra: list[str] = ()):
    from vatt.config import load_config

    return load_config("tiny", [*SPEC_INPUT, *FINETUNE, f"data.path={data}",
                                "data.ingest.synthetic_scale=0.1", *extra])


def prepare(data: Path, repeat: int) -> Path:
    """A data root whose DATASETS list their train shards `repeat` times (links to the files)."""
    source = data / "source"
    if not all((source / name / "manifest.json").is_file() for name in DATASETS.values()):
        from vatt.data.ingest import ingest

        ingest(_config(source), "synthetic", None, source, progress=False)
    root = data / f"repeat-{repeat}"
    for task, name in DATASETS.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        manifest = json.loads((source / name / "manifest.json").read_text())
        for split in TRAIN_SPLITS[task]:
            manifest["splits"][split]["shards"] *= repeat
        for entry in os.listdir(source / name):
            if entry != "manifest.json" and not (folder / entry).exists():
                (folder / entry).symlink_to(source / name / entry)
        (folder / "manifest.json").write_text(json.dumps(manifest))
    if not (root / "vocab.json").exists():
        (root / "vocab.json").symlink_to(source / "vocab.json")
    return root


def measure(root: Path, task: str, steps: int, extra: list[str] = ()) -> dict:
    """Fine-tune once in this process; its peak memory and what it trained on."""
    import ray
    import torch

    from vatt.evaluate.data import plan
    from vatt.evaluate.runner import evaluate_model
    from vatt.model import build_model

    torch.set_num_threads(2)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    cfg = _config(root, [f"eval.finetune.steps={steps}", *extra])
    torch.manual_seed(0)
    model = build_model(cfg)
    sampler = PeakPrivateMemory()
    sampler.start()
    start = time.perf_counter()
    jobs, _ = plan(cfg, [task], datasets={task: [DATASETS[task]]})
    results = evaluate_model(model, cfg, jobs)
    seconds = time.perf_counter() - start
    sampler.running = False
    sampler.join()
    metrics = results["tasks"][f"{task}@{DATASETS[task]}"]["metrics"]
    ray.shutdown()
    return {"task": task, "train_windows_per_epoch": metrics.get("num_train_windows"),
            "test_windows": metrics["num_test_windows"], "steps": steps,
            # MiB, as the memory columns (ru_maxrss and RssAnon are in KiB); "-" where the
            # code has no such setting or metric (before the bound)
            "bound_mb": getattr(cfg.eval.finetune, "shuffle_mb", "-"),
            "buffer_peak_mb": metrics.get("shuffle_buffer_peak_mb", "-"),
            "seconds": round(seconds, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "peak_private_mb": round(sampler.peak_kb / 1024)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--steps", type=int, default=3, help="optimiser steps per task")
    parser.add_argument("--repeat", type=int, default=12,
                        help="times each train split's shards are listed (fills the buffer)")
    parser.add_argument("--data", default="artifacts/finetune_memory",
                        help="data folder (reused)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides, e.g. eval.finetune.shuffle_mb=320")
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)  # internal: ROOT TASK here
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure(Path(args.one[0]), args.one[1], args.steps, args.set)))
        return 0
    import vatt

    print(f"vatt from {Path(vatt.__file__).parent}")
    root = prepare(Path(args.data).resolve(), args.repeat)
    print("| task | train windows / epoch | test windows | steps | buffer bound (MiB) "
          "| buffer peak (MiB) | peak private (MiB) | peak RSS (MiB) | seconds |")
    print("|---|---|---|---|---|---|---|---|---|")
    for task in args.tasks:
        done = subprocess.run([sys.executable, __file__, "--steps", str(args.steps), "--one",
                               str(root), task, "--set", *args.set], capture_output=True,
                              text=True)
        if done.returncode != 0:
            print(done.stdout[-3000:], done.stderr[-6000:], file=sys.stderr)
            return done.returncode
        row = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"| {task} | {row['train_windows_per_epoch']} | {row['test_windows']} "
              f"| {row['steps']} | {row['bound_mb']} | {row['buffer_peak_mb']} "
              f"| {row['peak_private_mb']} | {row['peak_rss_mb']} | {row['seconds']} |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
