"""The evaluation report: results.json, report.md and PNG plots in one run folder.

`results` is the dict `vatt.evaluate.runner.evaluate_model` returns:
    {"metrics": {"<task>.<metric>": value, ...},          flat, what the registry compares
     "tasks": {task: {"metrics": {...}, "per_class": {...}, "confusion": [[...]], "ranks": [...]}},
     ... provenance keys (checkpoint, step, data_version, config) ...}
Plots: per-class accuracy or AP (a bar per class), the retrieval rank histogram, the confusion
matrix. The folder is written locally and, for an s3:// destination, uploaded through
vatt.storage.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vatt.storage import ObjectStore

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and workers
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

RESULTS_FILE = "results.json"
REPORT_FILE = "report.md"


def _plot_per_class(values: list[float], title: str, ylabel: str, path: Path) -> None:
    arr = np.asarray(values, dtype=float)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.25 * len(arr) + 2), 3.0))
    ax.bar(np.arange(len(arr)), np.nan_to_num(arr, nan=0.0),
           color=["C0" if np.isfinite(v) else "lightgrey" for v in arr])
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


def _plot_confusion(confusion: list[list[int]], title: str, path: Path) -> None:
    matrix = np.asarray(confusion, dtype=float)
    rows = matrix.sum(1, keepdims=True)
    normalised = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
    size = max(3.5, 0.2 * len(matrix) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    image = ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
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


def write_report_folder(results: dict[str, Any], folder: str | Path) -> dict[str, Path]:
    """Write results.json, report.md and the plots into a local `folder`; returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = {"results": folder / RESULTS_FILE, "report": folder / REPORT_FILE}
    written["results"].write_text(json.dumps(results, indent=1, sort_keys=True, allow_nan=True))

    lines = ["# VATT evaluation", ""]
    for key in ("checkpoint", "step", "config_name", "data_version", "seed"):
        if key in results:
            lines.append(f"- **{key}**: `{json.dumps(results[key])}`")
    for task, used in sorted(((results.get("evaluation") or {}).get("data") or {}).items()):
        hashes = ", ".join(f"{split} manifest {digest[:12] if digest else '?'}"
                           for split, digest in sorted(used["splits"].items()))
        lines.append(f"- **{task}** evaluated on `{used['dataset']}` ({hashes})")
    lines += ["", "| task | metric | value |", "|---|---|---|"]
    for name, value in sorted(results.get("metrics", {}).items()):
        task, _, metric = name.partition(".")
        lines.append(f"| {task} | {metric} | {_fmt(value)} |")
    for task, body in sorted(results.get("tasks", {}).items()):
        lines += ["", f"## {task}", ""]
        for kind, values in sorted(body.get("per_class", {}).items()):
            if kind == "AUC":
                continue  # AP already plotted for multi-label tasks
            path = folder / f"{task}_per_class_{kind}.png"
            _plot_per_class(values, f"{task}: per-class {kind}", kind, path)
            written[path.stem] = path
            lines.append(f"![{task} per-class {kind}]({path.name})")
        if body.get("confusion") is not None:
            path = folder / f"{task}_confusion.png"
            _plot_confusion(body["confusion"], f"{task}: confusion matrix", path)
            written[path.stem] = path
            lines.append(f"![{task} confusion matrix]({path.name})")
        if body.get("ranks"):
            path = folder / f"{task}_ranks.png"
            _plot_ranks(body["ranks"], int(body["metrics"]["num_items"]),
                        f"{task}: rank of the match", path)
            written[path.stem] = path
            lines.append(f"![{task} rank histogram]({path.name})")
    written["report"].write_text("\n".join(lines) + "\n")
    return written


def write_report(results: dict[str, Any], destination: str, store: "ObjectStore") -> str:
    """Write the report to `destination`, a local folder or an s3:// prefix; returns it.

    For s3://, the files are written to a temporary folder and uploaded through `store`.
    """
    from vatt.storage import is_s3_uri

    if not is_s3_uri(destination):
        write_report_folder(results, destination)
        return destination
    with tempfile.TemporaryDirectory() as tmp:
        write_report_folder(results, tmp)
        store.upload_dir(tmp, destination)
    return destination


__all__ = ["write_report", "write_report_folder", "RESULTS_FILE", "REPORT_FILE"]
