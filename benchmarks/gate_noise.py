"""Run-to-run noise of the promotion gate's candidate metrics (issue 11): the same `tiny`
pretraining at the default budget with different seeds, each evaluated the same way; how much
the metrics move between runs that should be equally good decides the gate's metric and margin.

    python benchmarks/gate_noise.py --data data --out artifacts/gate_noise --seeds 1 2 \\
        --checkpoints runs/<the default pipeline's run>/checkpoint_00000300

Prints Markdown tables for BENCHMARKS.md: per metric each run's value, mean, standard deviation
and range; per pair of runs the text->video MRR difference and the standard error of its paired
per-query difference (the gate's per-decision noise, vatt.evaluate.registry.paired_noise). Takes about 6 minutes per seed on 2 cores.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

GATE_CANDIDATES = ("text_video_retrieval.R@10", "text_video_retrieval.R@5",
                   "text_video_retrieval.R@1", "text_video_retrieval.MRR",
                   "text_video_retrieval.MedR", "video_audio_retrieval.MRR",
                   "audio_linear.top1", "action_linear.top1")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data", help="the ingested default dataset")
    parser.add_argument("--out", default="artifacts/gate_noise", help="runs and reports go here")
    parser.add_argument("--seeds", type=int, nargs="*", default=[1, 2],
                        help="train.seed of each new pretraining run")
    parser.add_argument("--checkpoints", nargs="*", default=[],
                        help="finished runs' checkpoints to evaluate alongside")
    args = parser.parse_args(argv)

    from vatt.config import load_config
    from vatt.console import configure_console
    from vatt.evaluate.pipeline import metric_ranks, run_evaluation
    from vatt.evaluate.registry import paired_noise
    from vatt.train.pretrain import pretrain

    configure_console()
    out = Path(args.out).resolve()
    data = str(Path(args.data).resolve())
    common = [f"data.path={data}", f"train.storage_path={out / 'runs'}",
              f"eval.output_path={out / 'eval'}", f"eval.registry_path={out / 'registry'}"]
    checkpoints = list(args.checkpoints)
    for seed in args.seeds:
        result = pretrain(load_config("tiny", [*common, f"train.seed={seed}",
                                               f"train.run_name=noise-seed{seed}"]))
        checkpoints.append(result.checkpoint_uri)
    runs, ranks = [], []
    for checkpoint in checkpoints:
        outcome = run_evaluation(checkpoint, load_config("tiny", common), promote=False)
        runs.append(outcome.results["metrics"])
        ranks.append(metric_ranks(outcome.results, "text_video_retrieval.MRR"))
    lines = ["| metric | " + " | ".join(f"run {i + 1}" for i in range(len(runs)))
             + " | mean | std | range |", "|---" * (len(runs) + 4) + "|"]
    for name in GATE_CANDIDATES:
        values = [run[name] for run in runs if name in run]
        if len(values) < 2:
            continue
        lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in values)
                     + f" | {statistics.mean(values):.3f} | {statistics.stdev(values):.3f} | "
                     f"{max(values) - min(values):.3f} |")
    # the gate's other noise: the standard error of the paired per-query difference of two runs
    # on the same queries (eval.promotion.noise_z of them is the per-decision margin)
    lines += ["", "| runs | MRR difference | paired standard error | queries |", "|---|---|---|---|"]
    for i in range(len(runs)):
        for j in range(i + 1, len(runs)):
            noise = paired_noise("t.MRR", ranks[j], ranks[i])
            difference = (runs[j]["text_video_retrieval.MRR"]
                          - runs[i]["text_video_retrieval.MRR"])
            lines.append(f"| {i + 1} vs {j + 1} | {difference:+.3f} | "
                         f"{noise if noise is None else f'{noise:.3f}'} | {len(ranks[i] or [])} |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
