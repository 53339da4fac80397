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
from typing import TYPE_CHECKING, Any, Optional

from prefect import task
from prefect.artifacts import (create_link_artifact, create_markdown_artifact,
                               create_table_artifact)
from prefect.cache_policies import NO_CACHE

from vatt_flows.tasks import transient_retries
from vatt.config import Config
from vatt.storage import ObjectStore

if TYPE_CHECKING:
    from vatt.data.versioning import VersionRecord
    from vatt.evaluate.pipeline import EvaluationOutcome
    from vatt.evaluate.registry import Decision
    from vatt.train.pretrain import PretrainResult

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
def publish_ingest(summaries: list[dict[str, Any]], version: Optional[VersionRecord]) -> None:
    rows = [{"dataset": s.get("name", s["source"]), "clips": s["clips"], "minutes": round(s["hours"] * 60, 1),
             "per split": ", ".join(f"{k} {v}" for k, v in s["per_split"].items()),
             "quarantined": s["quarantined"]} for s in summaries]
    create_table_artifact(key=KEYS["ingest"], table=rows,
                          description="Ingested datasets (vatt.data.ingest)")
    if version and version.version:
        publish_location(KEYS["data_version"], "data.dvc", f"data version {version.version}",
                         version.message)


@task(name="publish-data-version", cache_policy=NO_CACHE, **transient_retries)
def publish_data_version(record: dict[str, Any]) -> None:
    """The published data version a cluster job read (vatt.data.publish)."""
    publish_location(
        KEYS["data_version"], record["uri"], f"data version {record['version']}",
        (f"The data the cluster's jobs read: {record.get('files', '?')} files, immutable under "
         f"{record['uri']} ({record.get('uploaded', 0)} uploaded by this run)"))


@task(name="publish-training", cache_policy=NO_CACHE, **transient_retries)
def publish_training(cfg: Config, trained: PretrainResult) -> None:
    from vatt.train.phases import describe_phases
    from vatt.train.pretrain import LOSS_CURVE_PNG

    store = ObjectStore.from_config(cfg.storage)
    history = trained.history
    lines = [f"# Pretraining run `{trained.config.train.run_name}`", ""]
    if history:
        first, last = history[0], history[-1]
        lines += ["| step | total loss | video-audio NCE | video-text MIL-NCE | clips/s |",
                  "|---|---|---|---|---|"]
        for row in (first, last):
            lines.append(f"| {row['step']} | {row['loss_total']:.4f} | "
                         f"{row['loss_video_audio']:.4f} | {row['loss_video_text']:.4f} | "
                         f"{row.get('clips_per_s', 0):.1f} |")
        lines += ["", f"![loss curve]({LOSS_CURVE_PNG})"]
    where = describe_phases(trained.phases)
    if where:
        lines += ["", f"Wall time: {where}"]
    lines += ["", f"Run folder: `{trained.run_uri}`", "",
              f"Checkpoint: `{trained.checkpoint_uri}`"]
    create_markdown_artifact(key=KEYS["training"],
                             markdown=inline_images("\n".join(lines), trained.run_uri, store),
                             description="Pretraining losses")
    if trained.checkpoint_uri:
        publish_location(KEYS["checkpoint"], trained.checkpoint_uri, "Latest checkpoint",
                         "Latest checkpoint")


def gate_markdown(decision: Optional[Decision], promoted: Optional[dict[str, Any]]) -> str:
    if decision is None:
        return "# Promotion gate\n\nNot run (`promote` was off): the registry is unchanged."
    verdict = "**promoted**" if decision.promoted else "**not promoted**"
    before = decision.promoted_value
    incumbent = (f"`{promoted['checkpoint']}`" if promoted else "none")
    return "\n".join([
        "# Promotion gate", "",
        f"Decision: {verdict}. {decision.reason}.", "",
        "| | value |", "|---|---|",
        f"| metric | `{decision.metric}` |",
        f"| this model | {_fmt(decision.candidate_value)} |",
        f"| promoted model before | {_fmt(before) if before is not None else 'none'}"
        + (f" ({decision.promoted_value_source})" if before is not None else "") + " |",
        f"| margin | {_fmt(decision.margin)} |",
        f"| promoted model | {incumbent} |",
        f"| candidate | `{decision.checkpoint}` |",
        f"| time | {decision.time} |"])


@task(name="publish-evaluation", cache_policy=NO_CACHE, **transient_retries)
def publish_evaluation(cfg: Config, evaluated: EvaluationOutcome,
                       promoted: Optional[dict[str, Any]]) -> None:
    from vatt.evaluate.report import REPORT_FILE, result_rows

    store = ObjectStore.from_config(cfg.storage)
    # one row per (task, dataset) beside the promoted model's (before the gate) and the paper's
    create_table_artifact(key=KEYS["metrics"], table=result_rows(evaluated.results, promoted),
                          description=f"Evaluation of step {evaluated.results.get('step')}, one "
                                      "row per (task, dataset), beside the promoted model's "
                                      "numbers and the paper's")
    report = store.read_text(_join(evaluated.report_uri, REPORT_FILE))
    create_markdown_artifact(key=KEYS["report"],
                             markdown=inline_images(report, evaluated.report_uri, store),
                             description="Evaluation report with its plots")
    create_markdown_artifact(key=KEYS["gate"], markdown=gate_markdown(evaluated.decision, promoted),
                             description="The promotion gate's decision and its reason")
    publish_location(KEYS["report_link"], evaluated.report_uri, "Report folder", "Report folder")
    version = evaluated.results.get("data_version") or {}
    md5 = version.get("md5") if isinstance(version, dict) else None
    if md5:
        publish_location(KEYS["data_version"], version.get("data_path", "."),
                         f"data version {md5}", "The data the evaluated model was trained on")


def timing_rows(task_runs: list[Any], flow_seconds: float) -> list[dict[str, Any]]:
    """One row per task run (Prefect's `total_run_time` of it, in the order they started), the
    rest of the flow's time (Prefect's own overhead: the flow outside its tasks) and the total."""
    def row(stage: str, seconds: float) -> dict[str, Any]:
        return {"stage": stage, "seconds": round(seconds, 1),
                "share": f"{100 * seconds / max(flow_seconds, 1e-9):.1f}%"}

    runs = sorted(task_runs, key=lambda run: run.start_time or run.expected_start_time)
    # a task run's name is its task's, with a suffix ("pretrain-1a2")
    rows = [row(run.name.rsplit("-", 1)[0], run.total_run_time.total_seconds()) for run in runs]
    outside = flow_seconds - sum(run.total_run_time.total_seconds() for run in runs)
    return [*rows, row("prefect overhead", max(0.0, outside)), row("total", flow_seconds)]


def _finished_task_runs(flow_run_id: Any, expected: set[Any], wait_s: float = 10.0) -> list[Any]:
    """The ended task runs of a flow run as Prefect's API recorded them. The API records them
    from the engine's events, a moment after they end: this waits up to `wait_s` until the
    `expected` ones are there and every one recorded has ended (but the caller's own)."""
    import time

    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.context import TaskRunContext

    own = TaskRunContext.get().task_run.id
    deadline = time.monotonic() + wait_s
    with get_client(sync_client=True) as client:
        while True:
            runs = [run for run in client.read_task_runs(flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[flow_run_id]))) if run.id != own]
            ended = [run for run in runs if run.state is not None and run.state.is_final()]
            if (len(ended) == len(runs) and expected <= {run.id for run in runs}) \
                    or time.monotonic() > deadline:
                return ended
            time.sleep(0.2)


@task(name="publish-timing", cache_policy=NO_CACHE, **transient_retries)
def publish_timing() -> list[dict[str, Any]]:
    """The flow run's wall time so far by task, from Prefect's records of its task runs; the
    table's rows."""
    from datetime import datetime, timezone

    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    # the task runs whose results the flow holds (the engine's states of them)
    expected = {state.state_details.task_run_id for state, *_ in context.run_results.values()
                if state.state_details.task_run_id is not None}
    runs = _finished_task_runs(context.flow_run.id, expected)
    started = context.flow_run.start_time or context.start_time
    rows = timing_rows(runs, (datetime.now(timezone.utc) - started).total_seconds())
    create_table_artifact(key=KEYS["timing"], table=rows,
                          description="Wall time by task, as Prefect recorded the task runs; "
                                      "Prefect's overhead is the flow's time outside them")
    return rows


__all__ = ["publish_ingest", "publish_training", "publish_evaluation", "publish_timing",
           "timing_rows", "gate_markdown", "inline_images", "publish_location",
           "location_markdown", "KEYS"]


@task(name="publish-sweep", cache_policy=NO_CACHE)
def publish_sweep(swept: dict[str, Any]) -> None:
    """The sweep's table (one row per trial), its results.md with the trade-off and curves plots
    inline, and a link to best.yaml."""
    from vatt_tuning.results import CURVES_PNG, RESULTS_MD, TRADEOFF_PNG

    files = {name: Path(path) for name, path in swept["files"].items()}
    rows = [{key: _fmt(value) for key, value in row.items()} for row in swept["rows"]]
    create_table_artifact(key=KEYS["sweep"], table=rows,
                          description=f"Sweep trials, selected on {swept['metric']} "
                                      f"(validation split): {swept['out']}")
    markdown = files[RESULTS_MD].read_text()
    for name, alt in ((TRADEOFF_PNG, "the metric and the step time per trial"),
                      (CURVES_PNG, "the losses and the metric against the step")):
        png = base64.b64encode(files[name].read_bytes()).decode()
        markdown += f"\n![{alt}](data:image/png;base64,{png})\n"
    create_markdown_artifact(key=KEYS["sweep_report"], markdown=markdown,
                             description="Sweep results and the speed/accuracy trade-off")
    if "best.yaml" in files:
        publish_location(KEYS["sweep_best"], swept["uris"]["best.yaml"],
                         "best.yaml (vatt pretrain --config best.yaml)",
                         "the config of the best trial")
