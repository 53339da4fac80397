"""The Prefect flows against the session's real Prefect server (`prefect server start` on the
database of the session's `vatt pipeline` run), on that run's default dataset, with a local Ray
and, for the fault test, the real SeaweedFS S3 server. Nothing is mocked. The fast tier checks
what needs no server: every deployment's flow loads and its typed parameters refuse bad values."""

from __future__ import annotations

import contextlib
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
    assert f"| margin | {decision['margin']:.4f} |" in shown["vatt-gate"].data
    # a local path is no URL the UI can open: shown as text, not as a file:// link
    assert f"`{default_pipeline.checkpoint}`" in shown["vatt-checkpoint"].data
    assert all("](" not in shown[key].data for key in ("vatt-checkpoint", "vatt-report-folder"))
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

    from vatt_flows.ingest import ingest

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


def test_the_timing_table_is_prefects_record_of_the_task_runs():
    """The `vatt-timing` rows: each task run's total run time as Prefect records it, in the
    order the runs started, the flow's time outside them (Prefect's overhead) and the total."""
    from datetime import datetime, timedelta, timezone
    from uuid import uuid4

    from prefect.client.schemas.objects import TaskRun

    from vatt_flows.artifacts import timing_rows

    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    runs = [TaskRun(name=name, task_key=name, dynamic_key="0", flow_run_id=uuid4(),
                    start_time=start + timedelta(seconds=at), total_run_time=timedelta(seconds=took))
            for name, at, took in (("evaluate-3c1", 70, 20.0), ("pretrain-9fa", 10, 50.0))]
    rows = timing_rows(runs, 100.0)
    assert rows == [{"stage": "pretrain", "seconds": 50.0, "share": "50.0%"},
                    {"stage": "evaluate", "seconds": 20.0, "share": "20.0%"},
                    {"stage": "prefect overhead", "seconds": 30.0, "share": "30.0%"},
                    {"stage": "total", "seconds": 100.0, "share": "100.0%"}]


BAD_PARAMETERS = [{"preset": "no-such-preset"}, {"promote": "maybe"},
                  {"overrides": "model.sharing=agnostic"}, {"overrides": ["model.video.drop_rate"]},
                  {"data_rev": "--output=/etc/passwd"},
                  # an interpolation would be resolved from the worker's environment and saved
                  {"overrides": ["eval.output_path=${oc.env:AWS_SECRET_ACCESS_KEY}"]},
                  {"overrides": ["data.path=s3://b/$${oc.env:AWS_SECRET_ACCESS_KEY}"]},
                  {"config": "best.json"}, {"config": "--help.yaml"}]


def test_every_deployment_loads_its_flow_and_its_parameters_are_typed():
    """Without a server: each deployment of prefect.yaml names a flow that loads from its
    entrypoint, and the flow's own parameter check refuses what the API refuses."""
    from prefect.exceptions import ParameterTypeError

    from vatt_flows.deployments import (build_deployments, build_pool_deployments, load_flow,
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
        assert deployment.entrypoint == f"vatt_flows.{deployment.flow_name}.{deployment.flow_name}"
        overrides = deployment.parameters["overrides"]
        assert any(item.startswith("data.versions_uri=s3://") for item in overrides)
        if deployment.flow_name != "ingest":
            assert "cluster.target=kubernetes" in overrides
            load_config("tiny", overrides)  # every override names a real key
    retrain = flows["vatt_flows.retrain.retrain"]
    for parameters in BAD_PARAMETERS:
        with pytest.raises(ParameterTypeError):
            retrain.validate_parameters(parameters)
    assert retrain.validate_parameters({"preset": "tiny", "overrides": ["train.seed=1"]})[
        "overrides"] == ["train.seed=1"]
    # a `$` that starts no interpolation is a literal; a config file is a path ending in .yaml
    assert retrain.validate_parameters({"overrides": ["data.path=s3://b/$x$"],
                                        "config": "sweeps/x/best.yaml"})["config"] == \
        "sweeps/x/best.yaml"
    pretrain = flows["vatt_flows.pretrain.pretrain"]
    assert pretrain.validate_parameters({"config": "best.yml"})["config"] == "best.yml"
    for flow in (retrain, pretrain):  # in process the refusal says how to pass the value
        with pytest.raises(ParameterTypeError, match=r"eval\.output_path=VALUE.*AWS_SECRET_ACCESS_KEY"):
            flow.validate_parameters({"overrides": ["eval.output_path=${oc.env:HOME}"]})


def test_vatt_pipeline_takes_a_config_file_and_refuses_bad_input_before_prefect_starts(
        tmp_path, monkeypatch, capsys):
    """`vatt pipeline --config FILE` and `--preset PATH.yaml` become the retrain flow's `config`
    (absolute: the run's record names the file); a missing or broken file, or an interpolation,
    is refused before Prefect starts."""
    from vatt_flows.pipeline import pipeline_parameters
    from vatt.cli import main
    from vatt.config import to_yaml

    monkeypatch.chdir(tmp_path)
    (tmp_path / "best.yaml").write_text(to_yaml(load_config("tiny", ["model.video.drop_rate=0.25"])))
    parameters = pipeline_parameters("best.yaml", ["train.seed=2"])
    assert parameters["config"] == str(tmp_path / "best.yaml") and parameters["preset"] == "tiny"
    assert parameters["overrides"] == ["train.seed=2"]
    assert pipeline_parameters("mbs")["preset"] == "mbs" and pipeline_parameters("mbs")["config"] is None

    (tmp_path / "broken.yaml").write_text("model: {sharing: [\n")
    monkeypatch.setenv("VATT_TEST_CANARY", "canary-0b1d-not-a-real-key")
    refused = {("--config", "missing.yaml"): "missing.yaml: no such YAML file",
               ("--preset", "missing.yaml"): "config file missing.yaml does not exist",
               ("--config", "broken.yaml"): "broken.yaml does not parse as YAML",
               ("eval.output_path=${oc.env:VATT_TEST_CANARY}",): "eval.output_path=VALUE",
               ("--config", "best.yaml", "--source", "nope"): "source: Input should be"}
    for argv, said in refused.items():
        assert main(["pipeline", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert said in err and "canary-0b1d" not in err, err
    assert not (tmp_path / "data").exists() and not (tmp_path / "runs").exists()


def test_locations_are_links_only_when_a_browser_opens_them(prefect_api, tmp_path):
    """A checkpoint, a report folder or a data version: an http(s) URL is a link; a local path
    or an s3:// URI (the UI cannot open file:// or s3://) is shown as text. (Prefect stores a
    link artifact as Markdown, `[text](url)`, so the data says which it is.)"""
    from prefect import flow, get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from vatt_flows.artifacts import publish_location

    local = tmp_path / "run `odd`" / "checkpoint_00000300"
    cases = {"vatt-test-http": "https://store.example/vatt/report/index.html",
             "vatt-test-s3": "s3://vatt/runs/tiny-1/checkpoint_00000300",
             "vatt-test-local": str(local)}

    @flow(name="publish-locations-test")
    def publish_all() -> None:  # artifacts belong to a run (outside one is deprecated)
        for key, uri in cases.items():
            publish_location(key, uri, "Latest checkpoint", "test")

    publish_all()
    with get_client(sync_client=True) as client:
        found = {a.key: a for a in client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=list(cases))))}
    assert found["vatt-test-http"].data == f"[Latest checkpoint]({cases['vatt-test-http']})"
    assert f"`{cases['vatt-test-s3']}`" in found["vatt-test-s3"].data
    assert f"`` {local} ``" in found["vatt-test-local"].data  # a path with backticks stays whole
    for key in ("vatt-test-s3", "vatt-test-local"):  # no link at all
        assert "](" not in found[key].data and "file://" not in found[key].data


def _schedules(client, name: str) -> list[tuple[str, str, bool]]:
    return sorted((s.schedule.cron, s.schedule.timezone or "", s.active)
                  for s in client.read_deployment_by_name(name).schedules)


def test_schedules_edited_in_the_ui_survive_a_restart_of_serve(prefect_api, tmp_path):
    """`vatt serve` registers prefect.yaml's deployments at every start: the schedules a user
    edited in the UI (here through the same API calls the UI makes) stay as edited, and an edit
    of prefect.yaml's schedules still reaches the server. Scratch deployment names, so that the
    session's served `weekly` is left alone."""
    import yaml
    from prefect import get_client
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.exceptions import ObjectNotFound

    from vatt_flows.deployments import PREFECT_YAML, build_deployments, register, served_entries

    spec = yaml.safe_load(PREFECT_YAML.read_text())
    spec["deployments"] = [dict(entry, name=f"{entry['name']}-schedules-test")
                           for entry in spec["deployments"]
                           if entry["name"] in ("weekly", "on-demand") and not entry.get("work_pool")]
    path = tmp_path / "prefect.yaml"
    path.write_text(yaml.safe_dump(spec))
    weekly, on_demand = "retrain/weekly-schedules-test", "ingest/on-demand-schedules-test"

    def start_serve(paused: bool = False) -> None:
        # what `vatt serve` does before serving, then `serve`'s own registration of the same
        for deployment in register(build_deployments(path, paused=paused), served_entries(path)):
            deployment.apply()

    with get_client(sync_client=True) as client:
        try:
            start_serve()
            assert _schedules(client, weekly) == [("0 3 * * 1", "UTC", True)]
            assert _schedules(client, on_demand) == []
            # the UI: the weekly schedule moved and paused, a schedule added to on-demand
            deployment = client.read_deployment_by_name(weekly)
            client.update_deployment_schedule(
                deployment.id, deployment.schedules[0].id, active=False,
                schedule=CronSchedule(cron="30 5 * * 2", timezone="Europe/Paris"))
            client.create_deployment_schedules(client.read_deployment_by_name(on_demand).id,
                                               [(CronSchedule(cron="0 0 1 * *"), True)])
            start_serve()  # a restart
            assert _schedules(client, weekly) == [("30 5 * * 2", "Europe/Paris", False)]
            assert _schedules(client, on_demand) == [("0 0 1 * *", "", True)]

            # prefect.yaml's cron edited: the newer decision, for that deployment only
            spec["deployments"][0]["schedules"][0]["cron"] = "0 4 * * 1"
            path.write_text(yaml.safe_dump(spec))
            start_serve()
            assert _schedules(client, weekly) == [("0 4 * * 1", "UTC", True)]
            assert _schedules(client, on_demand) == [("0 0 1 * *", "", True)]

            # deleted in the UI: stays deleted; `vatt serve --no-schedules`: paused, kept
            deployment = client.read_deployment_by_name(weekly)
            client.delete_deployment_schedule(deployment.id, deployment.schedules[0].id)
            start_serve(paused=True)
            assert _schedules(client, weekly) == []
            assert client.read_deployment_by_name(on_demand).paused
            assert _schedules(client, on_demand) == [("0 0 1 * *", "", True)]
        finally:  # every scratch deployment (each on-demand entry got the scratch name)
            for deployment in client.read_deployments():
                if deployment.name.endswith("-schedules-test"):
                    with contextlib.suppress(ObjectNotFound):
                        client.delete_deployment(deployment.id)


def test_bad_parameters_are_rejected_before_any_work(prefect_api, tmp_path):
    from prefect import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.exceptions import PrefectHTTPStatusError

    from vatt_flows.deployments import build_deployments
    from vatt_flows.pretrain import pretrain
    from vatt_flows.retrain import retrain

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

    # a config file that is not there, or does not parse, is refused the same way
    broken = tmp_path.parent / f"{tmp_path.name}-broken.yaml"
    broken.write_text("train: {optim: [\n")
    for flow, config, said in ((retrain, tmp_path / "best.yaml", "best.yaml does not exist"),
                               (pretrain, broken, "broken.yaml does not parse as YAML")):
        state = flow(config=str(config), overrides=[f"train.storage_path={tmp_path}"],
                     return_state=True)
        assert state.is_failed() and said in state.message, state.message
        runs = task_runs(state.state_details.flow_run_id)
        assert set(runs) == {"load-config"} and runs["load-config"].state.is_failed()
    assert list(tmp_path.iterdir()) == []


def test_transient_object_store_fault_is_retried_and_the_run_succeeds(
        prefect_api, default_pipeline, s3_env, tmp_path):
    """The registry's bucket stops answering (the S3 server is paused) when the evaluate flow
    starts: its first S3 task times out, is retried with backoff, and the run completes."""
    from vatt_flows.evaluate import evaluate

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
