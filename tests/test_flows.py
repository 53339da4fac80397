"""The Prefect flows against the session's real Prefect server (`prefect server start` on the
database of the session's `vatt pipeline` run), on that run's default dataset, with a local Ray
and, for the fault test, the real SeaweedFS S3 server. Nothing is mocked. The fast tier checks
what needs no server: every deployment's flow loads and its typed parameters refuse bad values."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import threading

import pytest

from conftest import vatt_command
from vatt.config import load_config

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
    """The run's last 200 log messages (the API's page), oldest first."""
    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort

    with get_client(sync_client=True) as client:
        latest = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200,
            sort=LogSort.TIMESTAMP_DESC)
    return [log.message for log in reversed(latest)]


def test_the_pipelines_retrain_ran_every_step_and_shows_its_results(prefect_api, default_pipeline):
    """The session's `vatt pipeline` (the `retrain` flow at the default budget, on Prefect's
    ephemeral API) as the session's `prefect server start` shows it from the same database."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    from vatt.config import load_config

    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["retrain"])),
                                         sort=FlowRunSort.START_TIME_ASC, limit=1)[0]
    assert flow_run.state.is_completed(), flow_run.state
    flow_run_id = flow_run.id

    runs = task_runs(flow_run_id)
    expected = {"load-config", "fingerprint-source", "ingest", "version-data", "publish-ingest",
                "pretrain", "publish-training", "read-promoted", "evaluate", "publish-evaluation",
                "publish-timing"}
    assert set(runs) == expected
    assert all(run.state.is_completed() for run in runs.values()), {
        name: run.state.name for name, run in runs.items()}

    # the Ray Train run name is pinned to the flow run (a retry resumes it)
    run_folder = default_pipeline.checkpoint.parent
    assert run_folder.name == f"tiny-{flow_run.name}-{str(flow_run_id)[:8]}"
    train = load_config("tiny").train
    history = json.loads((run_folder / "history.json").read_text())
    assert [row["step"] for row in history] == list(
        range(train.log_every, train.optim.total_steps + 1, train.log_every))

    shown = artifacts(flow_run_id)
    assert {"vatt-ingest", "vatt-training", "vatt-metrics", "vatt-report", "vatt-gate",
            "vatt-checkpoint", "vatt-report-folder", "vatt-timing"} <= set(shown)
    assert shown["vatt-metrics"].type == "table"
    metrics_table = shown["vatt-metrics"].data
    assert "promoted model" in metrics_table and "text_video_retrieval" in metrics_table
    # plots travel inside the Markdown (Prefect's image artifact needs a URL)
    assert shown["vatt-report"].data.count("data:image/png;base64,") >= 2
    assert "data:image/png;base64," in shown["vatt-training"].data
    # the gate's decision, as the pipeline's registry recorded it, is what the artifact says
    registry = default_pipeline.project / "artifacts" / "registry" / "registry.json"
    decision = json.loads(registry.read_text())["decisions"][0]
    assert decision["promoted"] and decision["checkpoint"] == str(default_pipeline.checkpoint)
    assert "promoted" in shown["vatt-gate"].data and decision["reason"] in shown["vatt-gate"].data
    assert f"({default_pipeline.checkpoint.as_uri()})" in shown["vatt-checkpoint"].data
    # the library's logs (training progress) are in the run's logs
    logs = run_logs(flow_run_id)
    total = train.optim.total_steps
    assert any(line.startswith(f"step {total}/{total} (100%) loss") for line in logs), logs[-20:]
    timing = shown["vatt-timing"].data
    stages = {row["stage"] for row in (json.loads(timing) if isinstance(timing, str) else timing)}
    assert {"ingest", "pretrain", "evaluate", "prefect overhead", "total"} <= stages


def test_ingest_is_cached_on_its_input_and_redone_when_its_output_is_gone_or_changed(
        prefect_api, default_pipeline):
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.ingest import ingest

    overrides = [f"data.path={default_pipeline.data}"]

    def ingest_states():
        """The flow's result and its ingest task runs' states, in order."""
        state = ingest(overrides=overrides, return_state=True)
        assert state.is_completed(), state.message
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
        runs = sorted((run for run in runs if run.name.rsplit("-", 1)[0] == "ingest"),
                      key=lambda run: run.expected_start_time)
        return [run.state.name for run in runs], state.result()

    ingest_states()  # cached or not, depending on what ran before in this session
    again, result = ingest_states()
    assert again == ["Cached"] and result["cached"] is True
    assert result["seconds"]["ingest"] == 0.0

    manifest = default_pipeline.data / "synthetic-esc50" / "manifest.json"
    saved = manifest.read_bytes()
    manifest.unlink()
    redone, result = ingest_states()
    assert redone == ["Cached", "Completed"]  # the hit, checked and refused, then the ingest
    assert result["cached"] is False and manifest.read_bytes() == saved  # byte-identical again

    # the manifest of another data revision, as a `dvc pull` of it writes (one clip fewer):
    # the input is unchanged, but the data is not what the cached run wrote
    pulled = json.loads(saved)
    pulled["clips"] = pulled["clips"][:-1]
    manifest.write_text(json.dumps(pulled, sort_keys=True, indent=1))
    redone, result = ingest_states()
    assert redone == ["Cached", "Completed"] and result["cached"] is False
    assert manifest.read_bytes() == saved
    assert ingest_states()[0] == ["Cached"]  # and the next run is a hit again


BAD_PARAMETERS = [{"preset": "no-such-preset"}, {"promote": "maybe"},
                  {"overrides": "model.sharing=agnostic"}, {"overrides": ["model.video.drop_rate"]},
                  {"data_rev": "--output=/etc/passwd"}]


def test_every_deployment_loads_its_flow_and_its_parameters_are_typed():
    """Without a server: each deployment of prefect.yaml names a flow that loads from its
    entrypoint, and the flow's own parameter check refuses what the API refuses."""
    from prefect.exceptions import ParameterTypeError

    from flows.deployments import (build_deployments, build_pool_deployments, load_flow,
                                   served_entries)

    spec = served_entries()
    flows = {entry["entrypoint"]: load_flow(entry["entrypoint"]) for entry in spec}
    assert {flow.name for flow in flows.values()} == {"retrain", "ingest", "pretrain", "evaluate",
                                                      "sweep"}
    deployments = build_deployments(schedules=False)
    assert sorted(d.name for d in deployments) == sorted(entry["name"] for entry in spec)
    assert all(d.enforce_parameter_schema for d in deployments)
    # the cluster's: module-path entrypoints (they load from the installed package, as in the
    # image), on the pool k8s/prefect's worker polls, training and evaluating as RayJobs
    cluster = build_pool_deployments("vatt-k8s", schedules=False)
    assert {(d.flow_name, d.name) for d in cluster} == {
        ("retrain", "cluster-weekly"), ("ingest", "cluster"), ("pretrain", "cluster"),
        ("evaluate", "cluster")}
    for deployment in cluster:
        assert deployment.work_pool_name == "vatt-k8s" and deployment.enforce_parameter_schema
        assert deployment.entrypoint == f"flows.{deployment.flow_name}.{deployment.flow_name}"
        overrides = deployment.parameters["overrides"]
        assert any(item.startswith("data.versions_uri=s3://") for item in overrides)
        if deployment.flow_name != "ingest":
            assert "cluster.target=kubernetes" in overrides
            load_config("tiny", overrides)  # every override names a real key
    retrain = flows["flows.retrain.retrain"]
    for parameters in BAD_PARAMETERS:
        with pytest.raises(ParameterTypeError):
            retrain.validate_parameters(parameters)
    assert retrain.validate_parameters({"preset": "tiny", "overrides": ["train.seed=1"]})[
        "overrides"] == ["train.seed=1"]


def test_bad_parameters_are_rejected_before_any_work(prefect_api, tmp_path):
    from prefect import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.exceptions import PrefectHTTPStatusError

    from flows.deployments import build_deployments
    from flows.retrain import retrain

    deployment = next(d for d in build_deployments(schedules=False) if d.name == "weekly")
    assert deployment.enforce_parameter_schema and deployment.concurrency_limit == 1
    deployment_id = deployment.apply()
    with get_client(sync_client=True) as client:
        for parameters in BAD_PARAMETERS:
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
                 "eval.datasets.text_video_retrieval=[synthetic-msrvtt]", "eval.tasks_if_ingested=[]",
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
