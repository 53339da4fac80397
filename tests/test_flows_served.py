"""The platform as a user runs it: `prefect server start`, `vatt serve` serving the
deployments of prefect.yaml, a `retrain` run triggered through the API as the UI does, picked
up by the served process; its training crashes (a Ray Train worker is killed, no restarts
allowed), the run is retried as the UI's Retry button does, and it resumes training from its
checkpoint. Then a real browser (Debian's chromium, headless, driven by Playwright) opens the
UI and finds the deployment, the completed run and its artifacts. Nothing is mocked."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from conftest import REPO_ROOT, PrefectServer, poll, stop_process_group, vatt_command
from helpers import latest_registered_checkpoint, train_worker_processes

pytestmark = pytest.mark.slow

SCREENSHOTS = REPO_ROOT / "artifacts" / "ui-test"
TOTAL, EVERY = 40, 10


def _api(server: PrefectServer, path: str, body: dict) -> list | dict:
    request = urllib.request.Request(f"{server.api}{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())


@dataclass(frozen=True)
class Served(PrefectServer):
    pid: int = 0  # the `vatt serve` process: flow runs, their Ray and its workers descend from it


@pytest.fixture(scope="module")
def served(prefect_server, default_pipeline) -> Iterator[Served]:
    """`vatt serve` in the pipeline's project, until the module ends."""
    log = default_pipeline.project / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([*vatt_command(), "serve"], cwd=default_pipeline.project,
                                env=prefect_server.env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)

    from vatt_flows.deployments import load_flow, served_entries

    declared = sorted((load_flow(entry["entrypoint"]).name, entry["name"])
                      for entry in served_entries())

    def deployments() -> list[tuple[str, str]]:
        """The served deployments on the server (no work pool: the session's server also holds
        the cluster's, which `vatt deploy` registered on vatt-k8s in test_cluster_retrain)."""
        flows = {f["id"]: f["name"] for f in _api(prefect_server, "/flows/filter", {})}
        return sorted((flows.get(d["flow_id"], "?"), d["name"])
                      for d in _api(prefect_server, "/deployments/filter", {})
                      if not d.get("work_pool_name"))

    try:
        # every served deployment of prefect.yaml (registered one after the other)
        poll(lambda: deployments() == declared, "vatt serve registering the deployments",
                  180, proc, log)
        assert ("retrain", "weekly") in declared
        yield Served(prefect_server.url, prefect_server.env, prefect_server.home, proc.pid)
    finally:
        stop_process_group(proc, signal.SIGINT)


@pytest.fixture(scope="module")
def retried_run(served, default_pipeline, tmp_path_factory) -> dict:
    """A triggered `retrain` whose training is killed mid-run, then retried from the API."""
    from prefect import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.states import Cancelled, Scheduled

    runs = tmp_path_factory.mktemp("served-runs")
    overrides = [f"data.path={default_pipeline.data}", f"train.storage_path={runs}",
                 f"eval.output_path={runs / 'eval'}", f"eval.registry_path={runs / 'registry'}",
                 f"train.optim.total_steps={TOTAL}", "train.optim.warmup_steps=2",
                 f"train.checkpoint_every={EVERY}", "train.log_every=5",
                 "train.global_batch_size=16", "train.max_failures=0",
                 # what the UI test looks at; no fine-tuning (eval.tasks_if_ingested)
                 "eval.tasks=[text_video_retrieval]", "eval.tasks_if_ingested=[]",
                 "eval.datasets.text_video_retrieval=[synthetic-msrvtt]"]
    with temporary_settings({PREFECT_API_URL: served.api}):
        # as the UI's "Run" does: a flow run of the deployment, picked up by the served process
        flow_run = run_deployment("retrain/weekly", parameters={"overrides": overrides}, timeout=0)
        with get_client(sync_client=True) as client:
            def state_of(run_id):
                return client.read_flow_run(run_id).state

            poll(lambda: state_of(flow_run.id).is_running(), "the served run to start", 300)
            # one retrain at a time: a second run waits for the deployment's concurrency slot
            second = run_deployment("retrain/weekly", parameters={"overrides": overrides},
                                    timeout=0)
            waited = poll(lambda: state_of(second.id).name == "AwaitingConcurrencySlot"
                               and state_of(second.id), "the second run to wait for its slot", 300)
            client.set_flow_run_state(second.id, Cancelled(message="concurrency checked"),
                                      force=True)
            assert state_of(flow_run.id).is_running()

        def first_checkpoint():
            folders = [p for p in runs.iterdir() if p.is_dir() and p.name.startswith("tiny-")]
            return folders and latest_registered_checkpoint(folders[0]) and folders[0]

        run_folder = poll(first_checkpoint, "the served run's first checkpoint", 600)
        import psutil

        workers = train_worker_processes(psutil.Process(served.pid))
        assert workers, "no Ray Train worker to kill"
        workers[0].kill()  # a crash: with train.max_failures=0 the training and the run fail

        with get_client(sync_client=True) as client:
            def final_state():
                state = client.read_flow_run(flow_run.id).state
                return state if state.is_final() else None

            failed = poll(final_state, "the crashed run to fail", 300)
            assert failed.is_failed() or failed.is_crashed(), failed
            # the UI's "Retry": the same flow run back to Scheduled (AwaitingRetry)
            client.set_flow_run_state(flow_run.id, Scheduled(name="AwaitingRetry",
                                                             message="Retry from the test"),
                                      force=True)
            done = poll(final_state, "the retried run", 900)
            final = client.read_flow_run(flow_run.id)
    return {"flow_run": final, "state": done, "failed": failed, "run_folder": run_folder,
            "second_waited": waited}


def test_served_run_is_retried_and_resumes_training_from_its_checkpoint(retried_run):
    state, flow_run = retried_run["state"], retried_run["flow_run"]
    assert state.is_completed(), state.message
    assert flow_run.run_count == 2
    folder: Path = retried_run["run_folder"]
    # one Ray Train run for both tries: its name is pinned to the flow run
    assert folder.name.endswith(str(flow_run.id)[:8]) and flow_run.name in folder.name
    history = json.loads((folder / "history.json").read_text())
    assert [row["step"] for row in history] == list(range(5, TOTAL + 1, 5))
    state_json = json.loads((folder / f"checkpoint_{TOTAL:08d}" / "state.json").read_text())
    assert len(state_json["started_from"]) == 2, state_json["started_from"]
    resumed_at = state_json["started_from"][1]
    assert resumed_at % EVERY == 0 and EVERY <= resumed_at < TOTAL  # not from step 0
    assert all(row["attempt"] == 1 for row in history if row["step"] > resumed_at)


def test_retrain_runs_one_at_a_time(retried_run):
    # the second run triggered while the first trained was held by the deployment's limit
    assert retried_run["second_waited"].name == "AwaitingConcurrencySlot"


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, ("Debian's chromium is needed for the browser test: `apt-get install -y "
                   "chromium` (.ci/run does it)")
    return found


def test_the_ui_shows_the_deployment_the_run_and_its_artifacts(served, retried_run):
    from playwright.sync_api import expect, sync_playwright

    flow_run_id = str(retried_run["flow_run"].id)
    found = _api(served, "/artifacts/filter",
                 {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}})
    ids = {a["key"]: a["id"] for a in found if a.get("key")}
    assert {"vatt-metrics", "vatt-report"} <= set(ids)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    base = served.url
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=_chromium(), headless=True,
            args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        # the page may only reach this server (the UI would try analytics hosts otherwise)
        context.route("**/*", lambda route: route.continue_()
                      if route.request.url.startswith((base, "data:")) else route.abort())
        context.set_default_timeout(60_000)
        page = context.new_page()
        try:
            page.goto(f"{base}/deployments")
            expect(page.get_by_role("link", name="weekly", exact=True)).to_be_visible()
            expect(page.get_by_text("retrain", exact=True).first).to_be_visible()
            page.screenshot(path=str(SCREENSHOTS / "deployments.png"))

            page.goto(f"{base}/runs/flow-run/{flow_run_id}")
            expect(page.get_by_text(retried_run["flow_run"].name).first).to_be_visible()
            expect(page.get_by_text("Completed", exact=True).first).to_be_visible()
            page.screenshot(path=str(SCREENSHOTS / "flow-run.png"))

            page.goto(f"{base}/artifacts/artifact/{ids['vatt-metrics']}")
            table = page.locator("table")  # one row per (task, dataset), headline metrics
            expect(table.get_by_text("text_video_retrieval").first).to_be_visible()
            expect(table.get_by_text("synthetic-msrvtt").first).to_be_visible()
            expect(table.get_by_text(re.compile(r"R@10 \d")).first).to_be_visible()
            page.screenshot(path=str(SCREENSHOTS / "metrics.png"), full_page=True)

            page.goto(f"{base}/artifacts/artifact/{ids['vatt-report']}")
            plot = 'img[alt="text_video_retrieval@synthetic-msrvtt rank histogram"]'
            expect(page.locator(plot)).to_be_visible()
            page.wait_for_function(f"""() => {{ const i = document.querySelector('{plot}');
                                              return i && i.complete && i.naturalWidth > 0; }}""")
            page.screenshot(path=str(SCREENSHOTS / "report.png"), full_page=True)
        finally:
            browser.close()
