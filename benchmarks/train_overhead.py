"""Ray Train overhead and 1 -> 2 worker scaling of VATT pretraining, measured in one run.

    python benchmarks/train_overhead.py [--preset tiny] [--steps 40] [--warmup 8] [KEY=VALUE ...]

Three measurements on the same config, data and machine, one after the other:
  plain     a single-process PyTorch loop: the same model, optimiser and `train_step` as the
            workers run, batches from the same Ray Data dataset iterated in the driver;
  ray-1     TorchTrainer with 1 worker (the real `train_loop_per_worker`);
  ray-2     TorchTrainer with 2 workers (same global batch: half per worker).
Every variant runs torch with one thread per worker (what Ray gives a worker of
train.cpus_per_worker < 2 CPUs), so the comparison is per worker, not per machine.
Steps/s is taken between the end of the warm-up steps and the last step (from the loop's own
report timestamps for the Ray runs, which report every --warmup steps), so start-up (Ray, process group, model build) is excluded,
but reporting, data waits and the all-reduces are in. Checkpoints are written only at the end.
Prints a table and the ratios; `--json PATH` also writes them.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

import torch


def plain_loop(cfg, dataset, steps: int, warmup: int) -> float:
    from vatt.data.loader import torch_batches
    from vatt.train.loop import build_training, micro_batch_size, to_device, train_step

    device = torch.device("cpu")
    # a Ray worker with train.cpus_per_worker CPUs runs torch with that many threads (at least 1)
    torch.set_num_threads(max(1, int(cfg.train.cpus_per_worker)))
    _, train_model, optimizer = build_training(cfg, device)
    batch_size = micro_batch_size(cfg, 1)
    done, start = 0, None
    while done < steps:
        for batch in torch_batches(dataset, batch_size, training=True):
            train_step(cfg, train_model, optimizer, [to_device(batch, device)], done, device)
            done += 1
            if done == warmup:
                start = time.perf_counter()
            if done == steps:
                break
    return (steps - warmup) / (time.perf_counter() - start)


def ray_loop(cfg, dataset, workers: int, steps: int, warmup: int, storage: str) -> float:
    from vatt.config import replace
    from vatt.train.pretrain import pretrain

    cfg = replace(cfg, [f"train.num_workers={workers}", f"train.storage_path={storage}",
                        f"train.run_name=bench-{workers}w-{time.strftime('%H%M%S')}",
                        f"train.log_every={warmup}", f"train.checkpoint_every={steps}"])
    history = pretrain(cfg, datasets={"train": dataset}).history
    times = {row["step"]: row["time"] for row in history}
    return (steps - warmup) / (times[steps] - times[warmup])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--json", default=None)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)

    import ray

    from vatt.config import load_config
    from vatt.data.loader import build_dataset
    from vatt.train.pretrain import resolve

    cfg = resolve(load_config(args.preset, [f"train.optim.total_steps={args.steps}",
                                            *args.overrides]))
    ray.init()
    # one dataset, materialised once, so every variant reads the same decoded clips from memory
    dataset = build_dataset(cfg, cfg.train.dataset_split, training=True,
                            dataset=cfg.train.dataset).materialize()
    if args.steps % args.warmup:
        parser.error("--steps must be a multiple of --warmup (the Ray runs report every --warmup steps)")
    # variants alternate, repeated; the best of each is kept (least disturbed by other load)
    runs: dict[str, list[float]] = {"plain": [], "ray-1": [], "ray-2": []}
    with tempfile.TemporaryDirectory(prefix="vatt-bench-") as storage:
        for _ in range(args.repeats):
            runs["plain"].append(plain_loop(cfg, dataset, args.steps, args.warmup))
            runs["ray-1"].append(ray_loop(cfg, dataset, 1, args.steps, args.warmup, storage))
            runs["ray-2"].append(ray_loop(cfg, dataset, 2, args.steps, args.warmup, storage))
    print("all runs (steps/s):", {name: [round(r, 3) for r in rates] for name, rates in runs.items()})
    results = {name: max(rates) for name, rates in runs.items()}
    batch = cfg.train.global_batch_size
    print(f"\npreset {args.preset}, global batch {batch}, {args.steps} steps ({args.warmup} warm-up)")
    for name, rate in results.items():
        print(f"  {name:6s} {rate:7.3f} steps/s  {rate * batch:8.1f} clips/s")
    ratios = {"ray1_vs_plain": results["ray-1"] / results["plain"],
              "ray2_vs_ray1": results["ray-2"] / results["ray-1"]}
    print(f"  TorchTrainer 1 worker / plain loop: {ratios['ray1_vs_plain']:.3f} of the plain speed "
          f"(goal: >= 0.95, i.e. at most 5% slower)")
    print(f"  2 workers / 1 worker (same global batch): {ratios['ray2_vs_ray1']:.3f}x")
    if args.json:
        with open(args.json, "w") as stream:
            json.dump({"steps_per_s": results, "ratios": ratios, "preset": args.preset,
                       "global_batch_size": batch, "steps": args.steps}, stream, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
