"""Peak memory of an evaluation at the spec's input as the number of clips grows.

    python benchmarks/eval_memory.py --clips 16 32 64 256        # this checkout
    PYTHONPATH=<other checkout> python benchmarks/eval_memory.py --clips 16 32 64   # another

Input: the spec's, 32 frames of 224x224 at 10 fps and 48 kHz audio, `data.eval_num_windows` = 4
windows per clip (one window's video is 32x224x224x3 float32 = 19.3 MB). Data: the generated
UCF101-layout dataset (`vatt ingest --source synthetic`) ingested once at that input into
`--data`; to reach N clips without generating N, a dataset folder per N lists the train split's
shards as many times as needed (links to the same shard files): every listed clip is read,
decoded and run through the model, so the work and the memory are those of N clips. Model: the
`tiny` preset's widths and depth with the spec's patch sizes: the point is the memory the data
takes, not the model's, which is the same for every N.

The evaluation is what `vatt evaluate` runs for action recognition, through the public API both
before and after streaming: `plan(cfg, ["action_linear"])` then `evaluate_model`
(linear probe, eval.probe.epochs=1). Each N runs in a fresh process on a local Ray with 2 CPUs;
two numbers of that process (the driver, where evaluation used to hold every decoded window;
Ray's decoding workers are separate processes of fixed size): its peak resident set (ru_maxrss),
which also counts the pages of Ray's shared-memory object store the driver has read batches
from (they are the store's, bounded by its size, and freed with it), and the peak of its private
memory (RssAnon, sampled every 20 ms): what the evaluation itself holds.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

SPEC_INPUT = ["data.num_frames=32", "data.fps=10", "data.frame_size=224",
              "data.sample_rate=48000", "model.video.patch_size=[4,16,16]",
              "model.audio.patch_size=128", "model.audio.input_scale=1.0"]
DATASET = "synthetic-ucf101"


def _config(data: Path, extra: list[str] = ()):
    from vatt.config import load_config

    return load_config("tiny", [*SPEC_INPUT, f"data.path={data}", "eval.probe.epochs=1",
                                "data.ingest.synthetic_scale=0.1", *extra])


def prepare(data: Path, clips: int) -> Path:
    """A data root whose DATASET train split has at least `clips` clips (shards listed again)."""
    source = data / "source"
    if not (source / DATASET / "manifest.json").is_file():
        from vatt.data.ingest import ingest

        ingest(_config(source), "synthetic", None, source, progress=False)
    root = data / f"clips-{clips}"
    folder = root / DATASET
    folder.mkdir(parents=True, exist_ok=True)
    manifest = json.loads((source / DATASET / "manifest.json").read_text())
    shards = set(manifest["splits"]["train"]["shards"])
    per_listing = sum(1 for c in manifest["clips"] if c.get("shard") in shards)
    manifest["splits"]["train"]["shards"] *= math.ceil(clips / per_listing)
    for name in os.listdir(source / DATASET):
        if name != "manifest.json" and not (folder / name).exists():
            (folder / name).symlink_to(source / DATASET / name)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    if not (root / "vocab.json").exists():
        (root / "vocab.json").symlink_to(source / "vocab.json")
    return root


class PeakPrivateMemory(threading.Thread):
    """The peak of this process's RssAnon (private resident memory), sampled."""

    def __init__(self, every_s: float = 0.02):
        super().__init__(daemon=True)
        self.every_s, self.peak_kb, self.running = every_s, 0, True

    def run(self) -> None:
        while self.running:
            with open("/proc/self/status") as status:
                for line in status:
                    if line.startswith("RssAnon:"):
                        self.peak_kb = max(self.peak_kb, int(line.split()[1]))
            time.sleep(self.every_s)


def measure(root: Path) -> dict:
    """Evaluate once in this process; its peak RSS and what it evaluated."""
    import ray
    import torch

    from vatt.evaluate.data import plan
    from vatt.evaluate.runner import evaluate_model
    from vatt.model import build_model

    torch.set_num_threads(2)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    cfg = _config(root)
    torch.manual_seed(0)
    model = build_model(cfg)
    sampler = PeakPrivateMemory()
    sampler.start()
    start = time.perf_counter()
    jobs, _ = plan(cfg, ["action_linear"])
    results = evaluate_model(model, cfg, jobs)
    seconds = time.perf_counter() - start
    sampler.running = False
    sampler.join()
    metrics = results["tasks"]["action_linear"]["metrics"]
    ray.shutdown()
    return {"train_windows": metrics["num_train_windows"],
            "test_windows": metrics["num_test_windows"], "seconds": round(seconds, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "peak_private_mb": round(sampler.peak_kb / 1024)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, nargs="+", default=[16, 32, 64, 256],
                        help="train clips per evaluation (one fresh process each)")
    parser.add_argument("--data", default="artifacts/eval_memory", help="data folder (reused)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure this root here
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure(Path(args.one))))
        return 0
    data = Path(args.data).resolve()
    import vatt

    print(f"vatt from {Path(vatt.__file__).parent}")
    print("| train clips | train windows | test windows | peak RSS (MB) | peak private (MB) "
          "| seconds |")
    print("|---|---|---|---|---|---|")
    for clips in args.clips:
        root = prepare(data, clips)
        done = subprocess.run([sys.executable, __file__, "--one", str(root)], check=True,
                              capture_output=True, text=True)
        row = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"| {row['train_windows'] // 4} | {row['train_windows']} | {row['test_windows']} "
              f"| {row['peak_rss_mb']} | {row['peak_private_mb']} | {row['seconds']} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
