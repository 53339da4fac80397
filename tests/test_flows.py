"""The Prefect flows against a real Prefect server (Prefect's test harness, one per session),
on the default dataset of the session's `vatt pipeline` run, with a local Ray and, for the
fault test, the real SeaweedFS S3 server. Nothing is mocked."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
from pathlib import Path

import pytest

from conftest import vatt_command

pytestmark = pytest.mark.slow

# a short run of the default pipeline's config: the flow's steps, not the learning
FAST = ["train.optim.total_steps=10", "train.optim.warmup_steps=2", "train.checkpoint_every=5",
        "train.log_every=5", "train.global_batch_size=16", "eval.probe_epochs=3",
        "eval.tasks=[text_video_retrieval,audio_linear]"]


def fast(pipeline, tmp_path: Path, *more: str) -> list[str]:
    return [*FAST, f"data.path={pipeline.data}", f"train.storage_path={tmp_path / 'runs'}",
            f"eval.output_path={tmp_path / 'eval'}", f"eval.registry_path={tmp_path / 'registry'}",
            *more]


def task_runs(flow_run_id) -> dict[str, object]:
    """{task name: task run} of a flow run (task run names are '<task>-<suffix>')."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {run.name.rsplit("-", 1)[0]: run for run in runs}


def artifacts(flow_run_id) -> dict[str, object]:
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    return {artifact.key: artifact for artifact in found if artifact.key}


def run_logs(flow_run_id) -> list[str]:
    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as client:
        return [log.message for log in client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200)]


def test_retrain_runs_every_step_and_shows_its_results(prefect_api, default_pipeline, tmp_path):
    from flows.retrain import retrain

    state = retrain(overrides=fast(default_pipeline, tmp_path), return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    flow_run_id = state.state_details.flow_run_id

    runs = task_runs(flow_run_id)
    expected = {"load-config", "fingerprint-source", "ingest", "version-data", "publish-ingest",
                "pretrain", "publish-training", "read-promoted", "evaluate", "publish-evaluation",
                "publish-timing"}
    assert set(runs) == expected
    assert all(run.state.is_completed() for run in runs.values()), {
        name: run.state.name for name, run in runs.items()}

    # the Ray Train run name is pinned to the flow run (a retry resumes it)
    flow_run_name = result["run_name"].split("-", 1)[1].rsplit("-", 1)[0]
    assert result["run_name"] == f"tiny-{flow_run_name}-{str(flow_run_id)[:8]}"
    assert [row["step"] for row in result["history"]] == [5, 10]

    shown = artifacts(flow_run_id)
    assert {"vatt-ingest", "vatt-training", "vatt-metrics", "vatt-report", "vatt-gate",
            "vatt-checkpoint", "vatt-report-folder", "vatt-timing"} <= set(shown)
    assert shown["vatt-metrics"].type == "table"
    metrics_table = shown["vatt-metrics"].data
    assert "promoted model" in metrics_table and "text_video_retrieval" in metrics_table
    # plots travel inside the Markdown (Prefect's image artifact needs a URL)
    assert shown["vatt-report"].data.count("data:image/png;base64,") >= 2
    assert "data:image/png;base64," in shown["vatt-training"].data
    assert "promoted" in shown["vatt-gate"].data and result["decision"]["reason"] in shown["vatt-gate"].data
    assert f"({Path(result['checkpoint']).as_uri()})" in shown["vatt-checkpoint"].data
    # the library's logs (training progress) are in the run's logs
    logs = run_logs(flow_run_id)
    assert any(line.startswith("step 10/10 (100%) loss") for line in logs), logs[-20:]
    stages = {row["stage"] for row in result["timing"]}
    assert {"ingest", "pretrain", "evaluate", "prefect overhead", "total"} <= stages


def test_ingest_is_cached_on_its_input_and_redone_when_its_output_is_gone(
        prefect_api, default_pipeline):
    from flows.ingest import ingest

    overrides = [f"data.path={default_pipeline.data}"]

    def ingest_state():
        state = ingest(overrides=overrides, return_state=True)
        assert state.is_completed(), state.message
        return task_runs(state.state_details.flow_run_id)["ingest"].state, state.result()

    ingest_state()  # cached or not, depending on what ran before in this session
    again, result = ingest_state()
    assert again.name == "Cached" and result["cached"] is True
    assert result["seconds"]["ingest"] == 0.0

    manifest = default_pipeline.data / "synthetic-esc50" / "manifest.json"
    saved = manifest.read_bytes()
    manifest.unlink()
    redone, result = ingest_state()
    assert result["cached"] is False and manifest.read_bytes() == saved  # byte-identical again


def test_bad_parameters_are_rejected_before_any_work(prefect_api, tmp_path):
    from prefect import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.exceptions import PrefectHTTPStatusError

    from flows.deployments import build_deployments
    from flows.retrain import retrain

    deployment = next(d for d in build_deployments(schedules=False) if d.name == "weekly")
    assert deployment.enforce_parameter_schema and deployment.concurrency_limit == 1
    deployment_id = deployment.apply()
    bad = [{"preset": "no-such-preset"}, {"promote": "maybe"}, {"overrides": "model.sharing=agnostic"},
           {"overrides": ["model.video.drop_rate"]}, {"data_rev": "--output=/etc/passwd"}]
    with get_client(sync_client=True) as client:
        for parameters in bad:
            with pytest.raises(PrefectHTTPStatusError, match="40[09]|422"):
                client.create_flow_run_from_deployment(deployment_id, parameters=parameters)
        created = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))
    assert created == []

    # a well-formed override naming no config key: the first task fails, naming it; no work
    state = retrain(overrides=["model.bogus_key=1", f"train.storage_path={tmp_path}"],
                    return_state=True)
    assert state.is_failed()
    assert "model.bogus_key" in state.message
    runs = task_runs(state.state_details.flow_run_id)
    assert set(runs) == {"load-config"} and runs["load-config"].state.is_failed()
    assert list(tmp_path.iterdir()) == []


def test_transient_object_store_fault_is_retried_and_the_run_succeeds(
        prefect_api, default_pipeline, s3_env, tmp_path):
    """The registry's bucket stops answering (the S3 server is paused) when the evaluate flow
    starts: its first S3 task times out, is retried with backoff, and the run completes."""
    from flows.evaluate import evaluate

    registry = "s3://vatt-data/flow-test-registry"
    overrides = [f"data.path={default_pipeline.data}", f"eval.output_path={tmp_path / 'eval'}",
                 f"eval.registry_path={registry}", "eval.tasks=[text_video_retrieval]",
                 "storage.max_attempts=1", "storage.connect_timeout_s=1", "storage.read_timeout_s=2"]
    def resume() -> None:
        os.killpg(s3_env.pid, signal.SIGCONT)

    class ResumeWhenRetried(logging.Handler):
        """The server answers again once the first try has failed (as a blip would end)."""

        def emit(self, record: logging.LogRecord) -> None:
            if "transient fault" in record.getMessage():
                resume()

    watcher = ResumeWhenRetried()
    logging.getLogger("vatt.flows").addHandler(watcher)
    safety = threading.Timer(300.0, resume)  # never leave the session's server paused
    safety.start()
    os.killpg(s3_env.pid, signal.SIGSTOP)
    try:
        state = evaluate(checkpoint=str(default_pipeline.checkpoint), overrides=overrides,
                         return_state=True)
    finally:
        safety.cancel()
        logging.getLogger("vatt.flows").removeHandler(watcher)
        resume()
    assert state.is_completed(), state.message
    runs = task_runs(state.state_details.flow_run_id)
    assert runs["read-promoted"].run_count >= 2, "the transient fault was not retried"
    assert runs["read-promoted"].state.is_completed()
    assert any("transient fault" in line for line in run_logs(state.state_details.flow_run_id))
    assert state.result()["decision"]["promoted"] is True  # the S3 registry was written

    # a permanent fault (no such bucket) is not retried
    state = evaluate(checkpoint=str(default_pipeline.checkpoint),
                     overrides=[*overrides[:2], "eval.registry_path=s3://no-such-bucket-vatt/r",
                                *overrides[3:]], return_state=True)
    assert state.is_failed() and "no-such-bucket-vatt" in state.message
    failed = [run for run in task_runs(state.state_details.flow_run_id).values()
              if run.state.is_failed()]
    assert len(failed) == 1 and failed[0].run_count == 1, [(r.name, r.run_count) for r in failed]


def test_serve_without_a_server_says_how_to_start_one(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(tmp_path)  # no profile that could name a server
    done = subprocess.run([*vatt_command(), "serve"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2
    assert "PREFECT_API_URL" in done.stderr and "prefect server start" in done.stderr
