"""What a run shows in the Prefect UI: tables, the report with its plots, the gate's decision
and where the checkpoint, the report and the data version are.

Keys are stable (`vatt-metrics`, `vatt-report`, ...), so the UI's artifact page of a key shows
its history across runs. Prefect 3.9's image artifact takes a URL, which a report in a local
folder or a private bucket does not have; the plots are therefore put inside the Markdown as
data URIs (`![...](data:image/png;base64,...)`), which the UI renders as images.

Locations (the checkpoint, the report folder, the data version, best.yaml) are links only when
they are URLs a browser opens (http, https); a local path or an s3:// URI, which the UI cannot
open, is shown as text in a Markdown artifact of the same key (`publish_location`).
"""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any, Optional

from prefect import task
from prefect.artifacts import (create_link_artifact, create_markdown_artifact,
                               create_table_artifact)
from prefect.cache_policies import NO_CACHE

from flows.tasks import transient_retries
from vatt.config import Config
from vatt.storage import ObjectStore

KEYS = {"ingest": "vatt-ingest", "training": "vatt-training", "metrics": "vatt-metrics",
        "report": "vatt-report", "gate": "vatt-gate", "checkpoint": "vatt-checkpoint",
        "report_link": "vatt-report-folder", "data_version": "vatt-data-version",
        "timing": "vatt-timing", "sweep": "vatt-sweep", "sweep_report": "vatt-sweep-report",
        "sweep_best": "vatt-sweep-best"}

_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+\.png)\)")


def opens_in_a_browser(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def _code(text: str) -> str:
    """`text` as a Markdown code span (fenced past any backticks it holds)."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    return f"{fence} {text} {fence}" if longest else f"{fence}{text}{fence}"


def location_markdown(title: str, uri: str) -> str:
    """The Markdown of a location the UI cannot open: its title and the path or URI as text."""
    where = uri if "://" in uri else str(Path(uri).resolve())
    kind = "in object storage" if "://" in uri else "on the machine that ran the flow"
    return f"# {title}\n\n{_code(where)}\n\n({kind}; not a URL the browser can open)"


def publish_location(key: str, uri: str, title: str, description: str) -> None:
    """A link artifact for a URL a browser opens, else a Markdown artifact naming `uri`."""
    if opens_in_a_browser(uri):
        create_link_artifact(key=key, link=uri, link_text=title, description=description)
    else:
        create_markdown_artifact(key=key, markdown=location_markdown(title, uri),
                                 description=description)


def _join(folder: str, name: str) -> str:
    return f"{folder.rstrip('/')}/{name}"


def inline_images(markdown: str, folder: str, store: ObjectStore) -> str:
    """Replace `![alt](plot.png)` (relative to `folder`) with a data URI of the PNG."""
    def data_uri(match: re.Match) -> str:
        alt, name = match.group(1), match.group(2)
        if "://" in name or name.startswith("data:"):
            return match.group(0)
        png = store.read_bytes(_join(folder, name))
        return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"

    return _IMAGE.sub(data_uri, markdown)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "" if value is None else str(value)


@task(name="publish-ingest", cache_policy=NO_CACHE, **transient_retries)
def publish_ingest(summaries: list[dict[str, Any]], version: Optional[dict[str, Any]]) -> None:
    rows = [{"dataset": s.get("name", s["source"]), "clips": s["clips"], "minutes": round(s["hours"] * 60, 1),
             "per split": ", ".join(f"{k} {v}" for k, v in s["per_split"].items()),
             "quarantined": s["quarantined"]} for s in summaries]
    create_table_artifact(key=KEYS["ingest"], table=rows,
                          description="Ingested datasets (vatt.data.ingest)")
    if version and version.get("version"):
        publish_location(KEYS["data_version"], "data.dvc", f"data version {version['version']}",
                         version["message"])


@task(name="publish-data-version", cache_policy=NO_CACHE, **transient_retries)
def publish_data_version(record: dict[str, Any]) -> None:
    """The published data version a cluster job read (vatt.data.publish)."""
    publish_location(
        KEYS["data_version"], record["uri"], f"data version {record['version']}",
        (f"The data the cluster's jobs read: {record.get('files', '?')} files, immutable under "
         f"{record['uri']} ({record.get('uploaded', 0)} uploaded by this run)"))


@task(name="publish-training", cache_policy=NO_CACHE, **transient_retries)
def publish_training(cfg: Config, trained: dict[str, Any]) -> None:
    from vatt.train.phases import describe_phases
    from vatt.train.pretrain import LOSS_CURVE_PNG

    store = ObjectStore.from_config(cfg.storage)
    history = trained["history"]
    lines = [f"# Pretraining run `{trained['run_name']}`", ""]
    if history:
        first, last = history[0], history[-1]
        lines += ["| step | total loss | video-audio NCE | video-text MIL-NCE | clips/s |",
                  "|---|---|---|---|---|"]
        for row in (first, last):
            lines.append(f"| {row['step']} | {row['loss_total']:.4f} | "
                         f"{row['loss_video_audio']:.4f} | {row['loss_video_text']:.4f} | "
                         f"{row.get('clips_per_s', 0):.1f} |")
        lines += ["", f"![loss curve]({LOSS_CURVE_PNG})"]
    where = describe_phases(trained.get("phases") or {})
    if where:
        lines += ["", f"Wall time: {where}"]
    lines += ["", f"Run folder: `{trained['run_uri']}`", "",
              f"Checkpoint: `{trained['checkpoint']}`"]
    create_markdown_artifact(key=KEYS["training"],
                             markdown=inline_images("\n".join(lines), trained["run_uri"], store),
                             description="Pretraining losses")
    if trained["checkpoint"]:
        publish_location(KEYS["checkpoint"], trained["checkpoint"], "Latest checkpoint",
                         "Latest checkpoint")


def metrics_table(results: dict[str, Any],
                  promoted: Optional[dict[str, Any]]) -> list[dict[str, str]]:
    """One row per (task, dataset): this model's headline metrics beside the promoted model's
    (before the gate) and the paper's number for a paper preset (vatt.evaluate.report)."""
    from vatt.evaluate.report import result_rows

    return result_rows(results, promoted)


def gate_markdown(decision: Optional[dict[str, Any]], promoted: Optional[dict[str, Any]]) -> str:
    if decision is None:
        return "# Promotion gate\n\nNot run (`promote` was off): the registry is unchanged."
    verdict = "**promoted**" if decision["promoted"] else "**not promoted**"
    before = decision["promoted_value"]
    incumbent = (f"`{promoted['checkpoint']}`" if promoted else "none")
    return "\n".join([
        "# Promotion gate", "",
        f"Decision: {verdict}. {decision['reason']}.", "",
        "| | value |", "|---|---|",
        f"| metric | `{decision['metric']}` |",
        f"| this model | {_fmt(decision['candidate_value'])} |",
        f"| promoted model before | {_fmt(before) if before is not None else 'none'}"
        + (f" ({decision.get('promoted_value_source')})" if before is not None else "") + " |",
        f"| margin | {_fmt(decision.get('margin', 0.0))} |",
        f"| promoted model | {incumbent} |",
        f"| candidate | `{decision['checkpoint']}` |",
        f"| time | {decision['time']} |"])


@task(name="publish-evaluation", cache_policy=NO_CACHE, **transient_retries)
def publish_evaluation(cfg: Config, evaluated: dict[str, Any],
                       promoted: Optional[dict[str, Any]]) -> None:
    from vatt.evaluate.report import REPORT_FILE

    store = ObjectStore.from_config(cfg.storage)
    create_table_artifact(key=KEYS["metrics"], table=metrics_table(evaluated["results"], promoted),
                          description=f"Evaluation of step {evaluated['step']}, one row per "
                                      "(task, dataset), beside the promoted model's numbers "
                                      "and the paper's")
    report = store.read_text(_join(evaluated["report"], REPORT_FILE))
    create_markdown_artifact(key=KEYS["report"],
                             markdown=inline_images(report, evaluated["report"], store),
                             description="Evaluation report with its plots")
    create_markdown_artifact(key=KEYS["gate"], markdown=gate_markdown(evaluated["decision"], promoted),
                             description="The promotion gate's decision and its reason")
    publish_location(KEYS["report_link"], evaluated["report"], "Report folder", "Report folder")
    version = evaluated.get("data_version") or {}
    md5 = version.get("md5") if isinstance(version, dict) else None
    if md5:
        publish_location(KEYS["data_version"], version.get("data_path", "."),
                         f"data version {md5}", "The data the evaluated model was trained on")


@task(name="publish-timing", cache_policy=NO_CACHE, **transient_retries)
def publish_timing(rows: list[dict[str, Any]]) -> None:
    create_table_artifact(key=KEYS["timing"], table=rows,
                          description="Wall time by stage; Prefect's overhead is the flow's time "
                                      "outside the library calls")


__all__ = ["publish_ingest", "publish_training", "publish_evaluation", "publish_timing",
           "metrics_table", "gate_markdown", "inline_images", "publish_location",
           "location_markdown", "KEYS"]


@task(name="publish-sweep", cache_policy=NO_CACHE)
def publish_sweep(swept: dict[str, Any]) -> None:
    """The sweep's table (one row per trial), its results.md with the trade-off plot inline, and
    a link to best.yaml."""
    from tuning.results import RESULTS_MD, TRADEOFF_PNG

    files = {name: Path(path) for name, path in swept["files"].items()}
    rows = [{key: _fmt(value) for key, value in row.items()} for row in swept["rows"]]
    create_table_artifact(key=KEYS["sweep"], table=rows,
                          description=f"Sweep trials, selected on {swept['metric']} "
                                      f"(validation split): {swept['out']}")
    png = base64.b64encode(files[TRADEOFF_PNG].read_bytes()).decode()
    markdown = files[RESULTS_MD].read_text() + (
        f"\n![the metric and the step time per trial](data:image/png;base64,{png})\n")
    create_markdown_artifact(key=KEYS["sweep_report"], markdown=markdown,
                             description="Sweep results and the speed/accuracy trade-off")
    if "best.yaml" in files:
        publish_location(KEYS["sweep_best"], swept["uris"]["best.yaml"],
                         "best.yaml (vatt pretrain --config best.yaml)",
                         "the config of the best trial")
