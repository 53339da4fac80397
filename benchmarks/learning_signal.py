"""The learning signal of issue 5 on the default pipeline, at the default budget.

    .venv/bin/python benchmarks/learning_signal.py [--data DIR] [--out DIR] [KEY=VALUE ...]

1. the default dataset (`vatt ingest --source synthetic`) under --data, ingested if missing;
2. `tiny` pretraining with Ray Train (the preset's train.* budget unless overridden) on
   train.dataset (synthetic-howto100m), as `vatt pretrain` runs it;
3. the trained checkpoint and a randomly initialised model of the same config (the model
   training started from) evaluated the same way (vatt.evaluate.data, all four tasks);
4. a Markdown table of both models' numbers and chance, for BENCHMARKS.md, the criteria's
   verdict, and everything as JSON under --out.

Numbers depend on the machine only through floating-point order; wall-clock times are printed
for orientation.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data", help="ingested dataset folder (default: data)")
    parser.add_argument("--out", default="artifacts/learning_signal",
                        help="run folder and results (default: artifacts/learning_signal)")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="e.g. train.optim.total_steps=100 data.ingest.synthetic_scale=0.5")
    args = parser.parse_args(argv)

    import ray

    from vatt.config import load_config
    from vatt.evaluate.data import describe_jobs, plan
    from vatt.evaluate.pipeline import load_checkpoint_for_eval
    from vatt.evaluate.signal import compare_with_random, signal_failures, signal_table
    from vatt.storage import ObjectStore
    from vatt.train.pretrain import pretrain

    data, out = Path(args.data).resolve(), Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    run_name = f"{args.preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    cfg = load_config(args.preset, [f"data.path={data}", f"train.storage_path={out / 'runs'}",
                                    f"train.run_name={run_name}", *args.overrides])
    clock = {}
    start = time.perf_counter()
    if not (data / "synthetic-howto100m" / "manifest.json").is_file():
        from vatt.data.ingest import ingest

        ingest(cfg, "synthetic", None, data)
    clock["ingest_s"] = time.perf_counter() - start

    if not ray.is_initialized():
        ray.init(include_dashboard=False)
    start = time.perf_counter()
    # the training split of the pretraining dataset, as vatt.train reads it
    result = pretrain(cfg)  # train.dataset / train.dataset_split of the ingested data
    clock["pretrain_s"] = time.perf_counter() - start
    print(f"checkpoint: {result.checkpoint_uri}")
    if result.history:
        first, last = result.history[0], result.history[-1]
        print(f"loss: step {first['step']} {first['loss_total']:.4f} -> step {last['step']} "
              f"{last['loss_total']:.4f}")

    start = time.perf_counter()
    loaded = load_checkpoint_for_eval(result.checkpoint_uri, ObjectStore(cfg.storage))
    jobs, _ = plan(loaded.config)
    for line in describe_jobs(jobs):
        print(f"  {line}")
    rows = compare_with_random(loaded.model, loaded.config, jobs)
    clock["evaluate_both_s"] = time.perf_counter() - start
    failures = signal_failures(rows)

    print()
    print(f"`{args.preset}`, {loaded.step} steps x {cfg.train.global_batch_size} clips, "
          f"default dataset (synthetic_scale={cfg.data.ingest.synthetic_scale}), "
          f"{cfg.data.eval_num_windows} eval windows per clip, probe {cfg.eval.probe.epochs} "
          f"epochs")
    print(signal_table(rows))
    print()
    print("learning signal: " + ("shown" if not failures else "NOT shown:\n  " +
                                 "\n  ".join(failures)))
    print("times: " + ", ".join(f"{k} {v:.0f}" for k, v in clock.items()))
    (out / f"{run_name}.json").write_text(json.dumps(
        {"checkpoint": result.checkpoint_uri, "overrides": args.overrides, "rows": rows,
         "failures": failures, "times": clock, "history": result.history}, indent=1))
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
