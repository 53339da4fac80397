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

A space that sweeps `train.seed` (REPLICATE_KEYS) repeats each configuration: results.md adds one
row per configuration (each seed's metric, their mean and standard deviation, the mean step time)
and says how far apart two configurations' means must be to differ beyond the seeds' noise; the
best is then the configuration with the best mean (best.yaml: its best seed), and the plot
draws means with the seeds' spread. `curves.png` draws the losses and the metric against the
step, one line per configuration.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from pathlib import Path
from typing import Any, Optional

from vatt.config import Config, replace, to_yaml
from vatt_tuning.space import Space, dotlist

RESULTS_CSV = "results.csv"
RESULTS_MD = "results.md"
TRADEOFF_PNG = "tradeoff.png"
CURVES_PNG = "curves.png"
BEST_YAML = "best.yaml"
SCORE_KEYS = ("val_MRR", "val_tv_MRR", "val_va_MRR", "val_tv_R@1", "val_tv_R@10")
# swept keys that repeat a configuration rather than change it
REPLICATE_KEYS = ("train.seed",)
CURVE_KEYS = ("loss_video_audio", "loss_video_text")


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


def config_keys(space: Space) -> list[str]:
    """The swept keys that make a configuration (every one but the replicates, e.g. the seed)."""
    return [key for key in space.keys if key not in REPLICATE_KEYS]


def _by_config(space: Space, rows: list[dict[str, Any]]) -> dict[tuple, list[dict[str, Any]]]:
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row[key] for key in config_keys(space)), []).append(row)
    return groups


def select_best(rows: list[dict[str, Any]], metric: str, mode: str,
                space: Optional[Space] = None) -> Optional[dict[str, Any]]:
    """The best finished trial (if none finished, the best of all); with a space that repeats
    configurations over seeds, the best trial of the configuration with the best mean."""
    scored = [r for r in rows if r.get(metric) is not None]
    finished = [r for r in scored if r["status"] == "finished"]
    pool = finished or scored
    if not pool:
        return None
    pick = max if mode == "max" else min
    if space is not None and len(config_keys(space)) < len(space.keys):
        groups = _by_config(space, pool)
        pool = pick(groups.values(), key=lambda group: statistics.fmean(r[metric] for r in group))
    return pick(pool, key=lambda r: r[metric])


def config_rows(space: Space, rows: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """One row per configuration of a space that repeats them over seeds: how many trials
    finished, each seed's metric, their mean and (sample) standard deviation, the mean step."""
    replicate = [key for key in space.keys if key in REPLICATE_KEYS]
    summary = []
    for values, group in _by_config(space, rows).items():
        scored = [r for r in group if r.get(metric) is not None]
        scores = [r[metric] for r in scored]
        steps = [r["step_s"] for r in group if r.get("step_s")]
        summary.append(dict(zip(config_keys(space), values)) | {
            "finished": f"{sum(r['status'] == 'finished' for r in group)} of {len(group)}",
            "seeds": len(scores),
            f"{metric} per seed": " / ".join(
                f"{_fmt(r[metric])} ({', '.join(str(r[k]) for k in replicate)})" for r in scored),
            f"{metric} mean": statistics.fmean(scores) if scores else None,
            f"{metric} std": statistics.stdev(scores) if len(scores) > 1 else None,
            "step_s mean": statistics.fmean(steps) if steps else None})
    return summary


def seed_noise(summary: list[dict[str, Any]], metric: str) -> Optional[tuple[float, int]]:
    """The pooled standard deviation of the metric between seeds of one configuration, and the
    fewest seeds a configuration has (None without two seeds of any configuration)."""
    stds = [row[f"{metric} std"] for row in summary if row[f"{metric} std"] is not None]
    if not stds:
        return None
    seeds = min(row["seeds"] for row in summary if row[f"{metric} std"] is not None)
    return math.sqrt(statistics.fmean(std ** 2 for std in stds)), seeds


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

    numeric = [k for k in config_keys(space) if k in space.params
               and all(isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool)
                       for r in rows)]
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    if numeric and rows:
        x_key = numeric[0]
        group_keys = [k for k in config_keys(space) if k in space.params and k != x_key]
        groups: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            groups.setdefault(_label(row, group_keys) or "all", []).append(row)
        for label, members in groups.items():
            at: dict[float, list[dict[str, Any]]] = {}
            for row in members:
                at.setdefault(row[x_key], []).append(row)
            xs = sorted(at)
            scores = {x: [r[space.metric] for r in at[x] if r.get(space.metric) is not None]
                      for x in xs}
            scored = [x for x in xs if scores[x]]
            if scored:  # the mean over seeds, with each seed's value as a dot
                line = left.errorbar(scored, [statistics.fmean(scores[x]) for x in scored],
                                     yerr=[statistics.stdev(scores[x]) if len(scores[x]) > 1 else 0
                                           for x in scored],
                                     marker="o", capsize=3, label=label)
                if any(len(scores[x]) > 1 for x in scored):
                    dots = [(x, value) for x in scored for value in scores[x]]
                    left.scatter(*zip(*dots), s=10, alpha=0.5, color=line[0].get_color())
            early = [(r[x_key], r[space.metric]) for r in members
                     if r.get(space.metric) is not None and r["status"] != "finished"]
            if early:
                left.scatter(*zip(*early), marker="x", color="black", zorder=3)
            timed = [(x, statistics.fmean(r["step_s"] for r in at[x] if r.get("step_s")))
                     for x in xs if any(r.get("step_s") for r in at[x])]
            if timed:
                right.plot(*zip(*timed), marker="o", label=label)
        for axis in (left, right):
            axis.set_xlabel(x_key)
            axis.legend()
        seeds = " (mean, bars: std over seeds)" if len(config_keys(space)) < len(space.keys) else ""
        stopped = " (x: stopped early)" if any(r["status"] != "finished" for r in rows) else ""
        left.set_title(f"{space.metric} on the validation split{seeds}{stopped}", fontsize=9)
    else:
        labels = [_label(r, list(space.params)) for r in rows]
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


def _label(row: dict[str, Any], keys: list[str]) -> str:
    return ", ".join(f"{key.rsplit('.', 1)[-1]}={row[key]}" for key in keys)


def curves_png(space: Space, rows: list[dict[str, Any]],
               histories: list[list[dict[str, Any]]]) -> bytes:
    """The two contrastive losses and the selection metric against the step, one colour per
    configuration: its mean over seeds as a line, each seed's own curve faint beside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [*CURVE_KEYS, space.metric]
    titles = {"loss_video_audio": "video-audio NCE loss (training)",
              "loss_video_text": "video-text MIL-NCE loss (training)",
              space.metric: f"{space.metric} (validation split)"}
    figure, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 4.2))
    groups: dict[str, list[list[dict[str, Any]]]] = {}
    for row, history in zip(rows, histories):
        label = _label(row, [key for key in config_keys(space) if key in space.params])
        groups.setdefault(label or "all", []).append(history)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, (label, members) in enumerate(groups.items()):
        colour = colours[index % len(colours)]
        for axis, key in zip(axes, keys):
            points: dict[int, list[float]] = {}
            for history in members:
                curve = sorted({int(h["step"]): float(h[key]) for h in history
                                if h.get(key) is not None and h.get("step") is not None}.items())
                if curve and len(members) > 1:
                    axis.plot(*zip(*curve), color=colour, alpha=0.25, linewidth=0.8)
                for step, value in curve:
                    points.setdefault(step, []).append(value)
            if points:
                steps = sorted(points)
                axis.plot(steps, [statistics.fmean(points[s]) for s in steps], color=colour,
                          label=label if key == keys[0] else None)
    for axis, key in zip(axes, keys):
        axis.set_xlabel("training step")
        axis.set_title(titles[key], fontsize=10)
    axes[0].legend(fontsize=8)
    figure.suptitle(f"sweep {space.path.stem}: curves per configuration"
                    + (" (mean over seeds; faint: each seed)"
                       if len(config_keys(space)) < len(space.keys) else ""))
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


def _seeds_section(space: Space, rows: list[dict[str, Any]]) -> str:
    summary = config_rows(space, rows, space.metric)
    text = ("\n## Per configuration, over its seeds\n\n"
            + markdown_table(summary))
    noise = seed_noise(summary, space.metric)
    if noise is not None:
        std, seeds = noise
        text += (f"\nThe seeds' noise: pooled standard deviation of `{space.metric}` within a "
                 f"configuration {std:.3f}; two configurations' means of {seeds} seeds differ "
                 f"beyond it when they are more than 2 standard errors of their difference "
                 f"apart, {2 * std * math.sqrt(2 / seeds):.3f}.\n")
    return text


Trial = tuple[dict[str, Any], list[dict[str, Any]]]  # its row, its reports in order


def trials_from_grid(space: Space, base: Config, grid: Any) -> list[Trial]:
    """Each started trial of a Tune ResultGrid: its row and its history of reports."""
    trials = []
    for result in grid:
        if not all(key in (result.config or {}) for key in space.params):
            continue  # a trial Tune created but never started (a sweep stopped before it)
        history = []
        if result.metrics_dataframe is not None:
            history = result.metrics_dataframe.to_dict("records")
        error = str(result.error) if result.error is not None else None
        trials.append((trial_row(space, base, result.config or {}, result.metrics or {}, history,
                                 error), history))
    return trials


def write_results(out: Path, space: Space, base: Config, trials: list[Trial]
                  ) -> tuple[list[dict[str, Any]], Optional[dict[str, Any]], dict[str, Path]]:
    """The rows, the best row and the files written under `out`."""
    trials = sorted(trials, key=lambda trial: [str(trial[0][k]) for k in space.params])
    rows = [row for row, _ in trials]
    best = select_best(rows, space.metric, space.mode, space)
    files = {RESULTS_CSV: out / RESULTS_CSV, RESULTS_MD: out / RESULTS_MD,
             TRADEOFF_PNG: out / TRADEOFF_PNG, CURVES_PNG: out / CURVES_PNG}
    with open(files[RESULTS_CSV], "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["trial"])
        writer.writeheader()
        writer.writerows(rows)
    summary = (f"# Sweep {space.path.stem}\n\n{len(rows)} trial(s) of `{base.name}`, "
               f"{base.train.optim.total_steps} steps each; selected on `{space.metric}` "
               f"({space.mode}) on the validation split `{base.train.validation.dataset}/"
               f"{base.train.validation.split}`.\n\n" + markdown_table(rows, best))
    if len(config_keys(space)) < len(space.keys):
        summary += _seeds_section(space, rows)
    if best is not None:
        summary += (f"\nBest: `{' '.join(dotlist(space.assignment(best)))}` ({space.metric} "
                    f"{_fmt(best[space.metric])}); its config: `{BEST_YAML}`.\n")
    files[RESULTS_MD].write_text(summary)
    files[TRADEOFF_PNG].write_bytes(tradeoff_png(space, rows))
    files[CURVES_PNG].write_bytes(curves_png(space, rows, [history for _, history in trials]))
    if best is not None:
        files[BEST_YAML] = out / BEST_YAML
        files[BEST_YAML].write_text(best_yaml(space, base, best))
    return rows, best, files


__all__ = ["write_results", "trials_from_grid", "Trial", "trial_row", "select_best", "markdown_table", "tradeoff_png",
           "curves_png", "config_rows", "seed_noise", "config_keys", "best_yaml", "RESULTS_CSV",
           "RESULTS_MD", "TRADEOFF_PNG", "CURVES_PNG", "BEST_YAML", "REPLICATE_KEYS"]
