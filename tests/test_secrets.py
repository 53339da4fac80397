"""No secret leaves the environment. The session's `vatt pipeline` ran with a canary secret in
its environment (conftest.SECRET_CANARY, as AWS_SECRET_ACCESS_KEY and VATT_SECRET_CANARY), and
this test tries once more to bring it in, through an override of the `retrain` flow against the
session's Prefect server. Nothing written holds it: no file of the pipeline's project folder
(run folder and checkpoints, registry, reports, data, DVC cache and remote, Prefect's database
and the console log), no flow run, artifact or log the Prefect API serves. Not searched: Ray's
own session logs under the system's temp folder (shared by every Ray on the machine)."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import SECRET_CANARY, SECRET_CANARY_VARS

CHUNK = 16 << 20


def files_holding(root: Path, needle: bytes) -> list[str]:
    """Every file under `root` whose bytes hold `needle` (read in chunks that overlap)."""
    found = []
    for path in sorted(root.rglob("*")):
        if path.is_symlink() or not path.is_file():
            continue
        tail = b""
        with open(path, "rb") as stream:
            while chunk := stream.read(CHUNK):
                if needle in tail + chunk:
                    found.append(str(path.relative_to(root)))
                    break
                tail = chunk[-len(needle):]
    return found


def prefect_records() -> list[str]:
    """Every flow run, artifact and log the Prefect API serves, as JSON text."""
    from prefect import get_client

    records: list[str] = []
    with get_client(sync_client=True) as client:
        for read in (client.read_flow_runs, client.read_artifacts, client.read_logs):
            offset = 0
            while page := read(limit=200, offset=offset):
                records += [item.model_dump_json() for item in page]
                offset += len(page)
    return records


def test_nothing_the_pipeline_or_a_flow_wrote_holds_a_secret_of_its_environment(
        default_pipeline, prefect_api, monkeypatch):
    from vatt_flows.retrain import retrain

    # an override that would resolve the secret in this process is refused before it is
    monkeypatch.setenv(SECRET_CANARY_VARS[1], SECRET_CANARY)
    attempt = f"eval.output_path=${{oc.env:{SECRET_CANARY_VARS[1]}}}"
    state = retrain(overrides=[attempt], return_state=True)
    refused = str(state.result(raise_on_failure=False))
    assert state.is_failed() and "eval.output_path=VALUE" in refused, (state.message, refused)

    project = default_pipeline.project
    # the search reads what is there: the run folder's name is in Prefect's database and the
    # registry, and the refused override in the database as given (unresolved)
    run_name = default_pipeline.checkpoint.parent.name.encode()
    assert ".prefect/prefect.db" in files_holding(project, run_name)
    assert "artifacts/registry/registry.json" in files_holding(project, run_name)
    assert any(path.startswith(".prefect/prefect.db")
               for path in files_holding(project, attempt.encode()))
    assert (project / "runs").is_dir() and (project / "artifacts" / "eval").is_dir()

    assert files_holding(project, SECRET_CANARY.encode()) == []
    records = prefect_records()
    assert any(run_name.decode() in record for record in records)
    assert [record[:300] for record in records if SECRET_CANARY in record] == []
    # the pipeline's own outputs, read as the user reads them
    registry = json.loads((project / "artifacts" / "registry" / "registry.json").read_text())
    assert SECRET_CANARY not in json.dumps(registry)
