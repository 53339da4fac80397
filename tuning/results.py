"""What a sweep leaves for a person: the table, the trade-off plot and the best config.

One row per trial: the swept values, the selection metric at the trial's last report and the
validation scores beside it, the step it reached, parameters (of the Transformer stacks, of the backbones with their
tokenizers and word embedding, of the whole model), training
GFLOPs per clip (paper convention, DropToken on), the measured step time and clips/s (the
median over the trial's reports after its first, which holds start-up), and the status
(finished, stopped early by the scheduler at step N, or failed). `best.yaml` is the config of
the best *finished* trial (a trial stopped early was compared at fewer steps; if none finished,
the best of all), with the run name and run folder of the base config, so that
`vatt pretrain --config best.yaml` trains it as is.
"""

from __future__ import annotations

import csv
import io
import statistics
from pathlib import Path
from typing import Any, Optional

from vatt.config import Config, replace, to_yaml
from vatt_tuning.space import Space, dotlist

RESULTS_CSV = "results.csv"
RESULTS_MD = "results.md"
TRADEOFF_PNG = "tradeoff.png"
BEST_YAML = "best.yaml"
SCORE_KEYS = ("val_MRR", "val_tv_MRR", "val_va_MRR", "val_tv_R@1", "val_tv_R@10")


def _step_seconds(history: list[dict[str, Any]], batch_size: int) -> tuple[Optional[float], Optional[float]]:
    # the first report's window holds the start of the data pipeline: a trial stopped at its
    # first report has no step time to show
    rates = [row["clips_per_s"] for row in history[1:] if row.get("clips_per_s")]
    if not rates:
        return None, None
    clips_per_s = statistics.median(rates)
    return batch_size / clips_per_s, clips_per_s


def trial_row(space: Space, base: Config, config: dict[str, Any], last: dict[str, Any],
              history: list[dict[str, Any]], error: Optional[str]) -> dict[str, Any]:
    from vatt.model.summary import model_cost

    assignment = space.assignment(config)
    cost = model_cost(replace(base, dotlist(assignment)))
    step_s, clips_per_s = _step_seconds(history, base.train.global_batch_size)
    total = base.train.optim.total_steps
    step = last.get("step")
    if error:
        status = f"failed: {error.strip().splitlines()[-1][:120]}"
    elif step == total:
        status = "finished"
    else:
        status = f"stopped early at step {step}"
    row: dict[str, Any] = {"trial": last.get("trial_id", "")}
    row |= assignment
    row |= {key: last.get(key) for key in dict.fromkeys((space.metric, *SCORE_KEYS))}
    row |= {"step": step, "params_transformers_M": round(cost["params_transformers_M"], 3),
            "params_backbones_M": round(cost["params_backbones_M"], 3),
            "params_total_M": round(cost["params_total_M"], 3),
            "gflops_per_clip": round(cost["train_gflops_per_clip"], 4),
            "step_s": step_s, "clips_per_s": clips_per_s, "status": status}
    return row


def select_best(rows: list[dict[str, Any]], metric: str, mode: str) -> Optional[dict[str, Any]]:
    scored = [r for r in rows if r.get(metric) is not None]
    finished = [r for r in scored if r["status"] == "finished"]
    pool = finished or scored
    if not pool:
        return None
    return (max if mode == "max" else min)(pool, key=lambda r: r[metric])


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) >= 0.01 or value == 0 else f"{value:.2e}"
    return "" if value is None else str(value)


def markdown_table(rows: list[dict[str, Any]], best: Optional[dict[str, Any]] = None) -> str:
    if not rows:
        return "(no trials)\n"
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        mark = " **(best)**" if best is not None and row is best else ""
        cells = [_fmt(row.get(k)) for k in keys]
        cells[-1] += mark
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def tradeoff_png(space: Space, rows: list[dict[str, Any]]) -> bytes:
    """The metric and the step time against the first numeric swept key (DropToken rate), one
    line per value of the other swept keys (backbone sharing): the paper's Table 5 trade-off.
    Without a numeric key, bars per trial."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    numeric = [k for k in space.params
               if all(isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool)
                      for r in rows)]
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    if numeric and rows:
        x_key = numeric[0]
        group_keys = [k for k in space.params if k != x_key]
        groups: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            label = ", ".join(f"{k.rsplit('.', 1)[-1]}={row[k]}" for k in group_keys) or "all"
            groups.setdefault(label, []).append(row)
        for label, members in groups.items():
            members = sorted(members, key=lambda r: r[x_key])
            xs = [r[x_key] for r in members]
            scored = [(r[x_key], r[space.metric]) for r in members if r.get(space.metric) is not None]
            if scored:
                left.plot(*zip(*scored), marker="o", label=label)
            early = [(r[x_key], r[space.metric]) for r in members
                     if r.get(space.metric) is not None and r["status"] != "finished"]
            if early:
                left.scatter(*zip(*early), marker="x", color="black", zorder=3)
            timed = [(x, r["step_s"]) for x, r in zip(xs, members) if r.get("step_s")]
            if timed:
                right.plot(*zip(*timed), marker="o", label=label)
        for axis in (left, right):
            axis.set_xlabel(x_key)
            axis.legend()
        left.set_title(f"{space.metric} on the validation split (x: stopped early)")
    else:
        labels = [" ".join(f"{k.rsplit('.', 1)[-1]}={r[k]}" for k in space.params) for r in rows]
        left.bar(range(len(rows)), [r.get(space.metric) or 0 for r in rows])
        right.bar(range(len(rows)), [r.get("step_s") or 0 for r in rows])
        for axis in (left, right):
            axis.set_xticks(range(len(rows)), labels, rotation=30, ha="right", fontsize=8)
        left.set_title(f"{space.metric} on the validation split")
    left.set_ylabel(space.metric)
    right.set_ylabel("seconds per training step (measured)")
    right.set_title("training step time")
    figure.suptitle(f"sweep {space.path.stem}")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()


def best_yaml(space: Space, base: Config, best: dict[str, Any]) -> str:
    cfg = replace(base, dotlist(space.assignment(best)))
    header = (f"# the best trial of sweep {space.path.name} ({best['trial']}): {space.metric}="
              f"{_fmt(best.get(space.metric))} at step {best['step']}, {best['status']}\n"
              f"# swept: {' '.join(dotlist(space.assignment(best)))}\n"
              f"#   vatt pretrain --config best.yaml\n")
    return header + to_yaml(cfg)


def write_results(out: Path, space: Space, base: Config, grid: Any
                  ) -> tuple[list[dict[str, Any]], Optional[dict[str, Any]], dict[str, Path]]:
    """From a Tune ResultGrid: the rows, the best row and the files written under `out`."""
    rows = []
    for result in grid:
        if not all(key in (result.config or {}) for key in space.params):
            continue  # a trial Tune created but never started (a sweep stopped before it)
        history = []
        if result.metrics_dataframe is not None:
            history = result.metrics_dataframe.to_dict("records")
        error = str(result.error) if result.error is not None else None
        rows.append(trial_row(space, base, result.config or {}, result.metrics or {}, history, error))
    rows.sort(key=lambda r: [str(r[k]) for k in space.params])
    best = select_best(rows, space.metric, space.mode)
    files = {RESULTS_CSV: out / RESULTS_CSV, RESULTS_MD: out / RESULTS_MD,
             TRADEOFF_PNG: out / TRADEOFF_PNG}
    with open(files[RESULTS_CSV], "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["trial"])
        writer.writeheader()
        writer.writerows(rows)
    summary = (f"# Sweep {space.path.stem}\n\n{len(rows)} trial(s) of `{base.name}`, "
               f"{base.train.optim.total_steps} steps each; selected on `{space.metric}` "
               f"({space.mode}) on the validation split `{base.train.validation.dataset}/"
               f"{base.train.validation.split}`.\n\n" + markdown_table(rows, best))
    if best is not None:
        summary += (f"\nBest: `{' '.join(dotlist(space.assignment(best)))}` ({space.metric} "
                    f"{_fmt(best[space.metric])}); its config: `{BEST_YAML}`.\n")
    files[RESULTS_MD].write_text(summary)
    files[TRADEOFF_PNG].write_bytes(tradeoff_png(space, rows))
    if best is not None:
        files[BEST_YAML] = out / BEST_YAML
        files[BEST_YAML].write_text(best_yaml(space, base, best))
    return rows, best, files


__all__ = ["write_results", "trial_row", "select_best", "markdown_table", "tradeoff_png",
           "best_yaml", "RESULTS_CSV", "RESULTS_MD", "TRADEOFF_PNG", "BEST_YAML"]
