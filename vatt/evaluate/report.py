"""The evaluation report: results.json, report.md and PNG plots in one run folder.

`results` is the dict `vatt.evaluate.runner.evaluate_model` returns:
    {"metrics": {"<task>.<metric>": value,                 the task's first dataset
                 "<task>@<dataset>.<metric>": value, ...},  every dataset
     "tasks": {"<task>@<dataset>": {"metrics": {...}, "per_class": {...}, "confusion": [[...]],
                                    "ranks": [...], "class_names": [...], "source", ...}},
     "skipped": {task: why}, ... provenance keys (checkpoint, step, data_version, config) ...}
The summary table has one row per (task, dataset): its headline metrics (the task's, from
vatt.evaluate.tasks) beside the promoted model's and, for a paper preset, the paper's number
(spec section 8). Plots: per-class accuracy or AP (a bar per class, named by the manifest's
label names), the retrieval rank histogram, the confusion matrix. The folder is written locally
and, for an s3:// destination, uploaded through vatt.storage.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from vatt.storage import ObjectStore

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and workers
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

RESULTS_FILE = "results.json"
REPORT_FILE = "report.md"


MAX_NAMED_CLASSES = 60  # beyond this many classes the axes are numbered (the table names them)


def _class_names(names: list[str], count: int) -> list[str]:
    """The manifest's label names when they fit the count, else the class ids."""
    return list(names) if len(names) == count else [str(i) for i in range(count)]


def _plot_per_class(values: list[float], title: str, ylabel: str, path: Path,
                    names: list[str] = ()) -> None:
    arr = np.asarray(values, dtype=float)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.25 * len(arr) + 2), 3.0 + (1.5 if names else 0)))
    ax.bar(np.arange(len(arr)), np.nan_to_num(arr, nan=0.0),
           color=["C0" if np.isfinite(v) else "lightgrey" for v in arr])
    if names and len(arr) <= MAX_NAMED_CLASSES:
        ax.set_xticks(np.arange(len(arr)), _class_names(list(names), len(arr)), rotation=90,
                      fontsize=7)
    ax.set_xlabel("class (grey: undefined, no test example)")
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_ranks(ranks: list[int], num_items: int, title: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5.0, 3.0))
    bins = np.unique(np.geomspace(1, max(num_items, 2) + 1, num=min(30, num_items + 1)).astype(int))
    ax.hist(ranks, bins=bins, color="C1")
    ax.set_xscale("log")
    ax.set_xlabel("rank of the correct item (1 = best; log scale)")
    ax.set_ylabel("queries")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_confusion(confusion: list[list[int]], title: str, path: Path,
                    names: list[str] = ()) -> None:
    matrix = np.asarray(confusion, dtype=float)
    rows = matrix.sum(1, keepdims=True)
    normalised = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
    size = max(3.5, 0.2 * len(matrix) + 2) + (1.5 if names else 0)
    fig, ax = plt.subplots(figsize=(size, size))
    image = ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    if names and len(matrix) <= MAX_NAMED_CLASSES:
        labels = _class_names(list(names), len(matrix))
        ax.set_xticks(np.arange(len(matrix)), labels, rotation=90, fontsize=7)
        ax.set_yticks(np.arange(len(matrix)), labels, fontsize=7)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of the true class")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.4f}"
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


def _headline(metrics: dict[str, Any], names: tuple[str, ...]) -> str:
    return ", ".join(f"{name} {_fmt(float(metrics[name]))}" for name in names if name in metrics)


def result_rows(results: dict[str, Any], promoted: Optional[dict[str, Any]] = None
                ) -> list[dict[str, str]]:
    """One row per (task, dataset): its headline metrics, the promoted model's (from its
    registry entry's flat metrics, the same "<task>@<dataset>.<metric>" keys) and the paper's
    number where the evaluated preset is a paper model (spec section 8)."""
    from vatt.evaluate.tasks import TASKS, paper_result

    theirs = (promoted or {}).get("metrics") or {}
    preset = results.get("config_name")
    rows = []
    for key, body in results.get("tasks", {}).items():
        task = body.get("task") or key.partition("@")[0]
        dataset = body.get("dataset") or key.partition("@")[2] or "-"
        spec = TASKS.get(task)
        names = spec.metrics if spec else tuple(k for k, v in body["metrics"].items()
                                                if isinstance(v, (int, float)))
        shown = tuple(n for n in names if n in body["metrics"])
        other = {n: theirs[f"{key}.{n}"] for n in shown if f"{key}.{n}" in theirs}
        paper = paper_result(preset, task, body.get("source"), body.get("num_classes"))
        rows.append({"task": task, "dataset": dataset,
                     "this model": _headline(body["metrics"], shown),
                     "promoted model": _headline(other, shown) if other else "none",
                     "paper": f"{paper[0]} {paper[1]:.3f} ({preset})" if paper else "-"})
    return rows


def _per_class_table(values: dict[str, list[float]], names: list[str]) -> list[str]:
    """A Markdown table of the per-class numbers, one row per class, named."""
    kinds = sorted(values)
    count = len(values[kinds[0]])
    labels = _class_names(names, count)
    lines = ["| class | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
    for i in range(count):
        lines.append(f"| {labels[i]} | " + " | ".join(_fmt(float(values[k][i])) for k in kinds)
                     + " |")
    return lines


def write_report_folder(results: dict[str, Any], folder: str | Path,
                        promoted: Optional[dict[str, Any]] = None) -> dict[str, Path]:
    """Write results.json, report.md and the plots into a local `folder`; returns their paths.
    `promoted`: the registry's promoted model entry, whose numbers the summary shows."""
    from vatt.evaluate.tasks import split_key

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = {"results": folder / RESULTS_FILE, "report": folder / REPORT_FILE}
    written["results"].write_text(json.dumps(results, indent=1, sort_keys=True, allow_nan=True))

    lines = ["# VATT evaluation", ""]
    for key in ("checkpoint", "step", "config_name", "data_version", "seed"):
        if key in results:
            lines.append(f"- **{key}**: `{json.dumps(results[key])}`")
    identity = (results.get("evaluation") or {}).get("tasks") or {}
    for task, used in sorted(identity.items()):
        if "@" not in task and any(k.startswith(f"{task}@") for k in identity):
            continue  # the task's first dataset, listed under its own key
        hashes = ", ".join(f"{split} clips {digest[:12] if digest else '?'}"
                           for split, digest in sorted(used["splits"].items()))
        lines.append(f"- **{task}** evaluated on `{used['dataset']}` ({hashes}; evaluation "
                     f"code {used['code']})")
    for task, why in sorted((results.get("skipped") or {}).items()):
        lines.append(f"- **{task}** skipped: {why}")
    rows = result_rows(results, promoted)
    if rows:
        columns = list(rows[0])
        lines += ["", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(row[c] for c in columns) + " |" for row in rows]
    lines += ["", "## All metrics", "", "| task | metric | value |", "|---|---|---|"]
    for name, value in sorted(results.get("metrics", {}).items()):
        task, dataset, metric = split_key(name)
        lines.append(f"| {task}{'@' + dataset if dataset else ''} | {metric} | {_fmt(value)} |")
    for key, body in sorted(results.get("tasks", {}).items()):
        stem = key.replace("@", "-")
        names = list(body.get("class_names") or [])
        lines += ["", f"## {key}", ""]
        for kind, values in sorted(body.get("per_class", {}).items()):
            if kind == "AUC":
                continue  # AP already plotted for multi-label tasks
            path = folder / f"{stem}_per_class_{kind}.png"
            _plot_per_class(values, f"{key}: per-class {kind}", kind, path, names)
            written[path.stem] = path
            lines.append(f"![{key} per-class {kind}]({path.name})")
        if body.get("confusion") is not None:
            path = folder / f"{stem}_confusion.png"
            _plot_confusion(body["confusion"], f"{key}: confusion matrix", path, names)
            written[path.stem] = path
            lines.append(f"![{key} confusion matrix]({path.name})")
        if body.get("ranks"):
            path = folder / f"{stem}_ranks.png"
            _plot_ranks(body["ranks"], int(body["metrics"]["num_items"]),
                        f"{key}: rank of the match", path)
            written[path.stem] = path
            lines.append(f"![{key} rank histogram]({path.name})")
        if body.get("per_class") and names:
            lines += [""] + _per_class_table(body["per_class"], names)
    written["report"].write_text("\n".join(lines) + "\n")
    return written


def write_report(results: dict[str, Any], destination: str, store: "ObjectStore",
                 promoted: Optional[dict[str, Any]] = None) -> str:
    """Write the report to `destination`, a local folder or an s3:// prefix; returns it.
    `promoted`: the registry's promoted model entry (its numbers beside these).

    For s3://, the files are written to a temporary folder and uploaded through `store`.
    """
    from vatt.storage import is_s3_uri

    if not is_s3_uri(destination):
        write_report_folder(results, destination, promoted)
        return destination
    with tempfile.TemporaryDirectory() as tmp:
        write_report_folder(results, tmp, promoted)
        store.upload_dir(tmp, destination)
    return destination


__all__ = ["write_report", "write_report_folder", "result_rows", "RESULTS_FILE", "REPORT_FILE"]
