"""The RayJob itself, run as KubeRay would run it, from the Prefect `pretrain` flow with
cluster.target=kubernetes.

- A Ray head started on this machine with `ray start --head`, in an environment like a KubeRay
  head pod's: the object store's endpoint and keys in its environment (the pods get them from
  the vatt-object-store ConfigMap and Secret), this environment's `vatt` on PATH, a working
  directory that is not the project.
- The real Kubernetes API server of tests/kube.py, the RayJob CRD, the platform's RBAC; the
  flow talks to it with the worker's identity.
- No KubeRay operator can run here, so the test plays it: it watches RayJobs and submits each
  one's `entrypoint` and `runtimeEnvYAML`, unchanged, through Ray's Job Submission API
  (`JobSubmissionClient`, as KubeRay's submitter does), and mirrors Ray's job status into the
  RayJob's status.

The flow then reads the checkpoint back from SeaweedFS. A wrong entrypoint, a config that does
not travel, or an environment that only works in the developer's shell fails here.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from conftest import REPO_ROOT, _free_ports

NAMESPACE = "vatt"
WORKER = f"system:serviceaccount:{NAMESPACE}:vatt-worker"
BUCKET = "vatt-data"
SHORT = ["train.optim.total_steps=4", "train.optim.warmup_steps=1", "train.log_every=2",
         "train.checkpoint_every=2"]


@pytest.fixture(scope="module")
def ray_head(s3_server):
    """A Ray head of its own (`ray start --head --block` in its own process group, stopped by
    signalling that group: `ray stop` would stop every Ray on the machine)."""
    # every port of its own: another Ray on the machine (a test's, a user's) keeps its defaults
    gcs, dashboard, agent_http, agent_grpc, metrics, runtime_env = _free_ports(6)
    temp_dir = tempfile.mkdtemp(prefix="rayk", dir="/tmp")  # short: Ray's socket paths
    workdir = tempfile.mkdtemp(prefix="vatt-head-")
    venv_bin = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_", "AWS_", "PYTHONPATH", "VIRTUAL_ENV"))}
    env.update(s3_server.env)
    env["PATH"] = f"{venv_bin}{os.pathsep}{env.get('PATH', '')}"
    # Ray 2.60's token authentication, as KubeRay sets it up (authOptions.mode=token): the
    # head and the job's driver have the token; the submitter sends it
    token = secrets.token_hex(16)
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    log_path = Path(temp_dir) / "ray-start.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [str(Path(venv_bin) / "ray"), "start", "--head", "--block", f"--port={gcs}",
             "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
             f"--dashboard-agent-listen-port={agent_http}",
             f"--dashboard-agent-grpc-port={agent_grpc}", f"--metrics-export-port={metrics}",
             f"--runtime-env-agent-port={runtime_env}", "--num-cpus=2", "--include-dashboard=true",
             f"--temp-dir={temp_dir}", "--disable-usage-stats"],
            cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        _wait_for_jobs_api(address, token, process, log_path)
        yield RayHead(address, token)
    finally:
        # the head's processes get SIGTERM together; `ray start --block` itself has not ended
        # on it within 15 s here, so the group is killed after a short grace
        for sig, wait in ((signal.SIGTERM, 3), (signal.SIGKILL, 5)):
            try:
                os.killpg(process.pid, sig)
                process.wait(wait)
                break
            except (ProcessLookupError, subprocess.TimeoutExpired):
                continue
        shutil.rmtree(temp_dir, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)


@dataclass(frozen=True)
class RayHead:
    address: str  # the dashboard: Ray's Job Submission API
    token: str  # its auth token

    def client(self):
        """A JobSubmissionClient that sends the token as KubeRay's submitter does (a bearer
        token; this process's own Ray auth settings play no part)."""
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.address, headers={"Authorization": f"Bearer {self.token}"})


def _wait_for_jobs_api(address: str, token: str, process: subprocess.Popen, log_path: Path) -> None:
    deadline, last = time.monotonic() + 120, None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"`ray start --head` exited {process.returncode}:\n"
                               f"{log_path.read_text()[-3000:]}")
        try:
            RayHead(address, token).client().list_jobs()
            return
        except Exception as err:  # noqa: BLE001 - not up yet
            last = err
            time.sleep(1.0)
    raise RuntimeError(f"Ray's job API at {address} not up after 120 s (last: {last!r}):\n"
                       f"{log_path.read_text()[-3000:]}")


class PlayedOperator:
    """What KubeRay does for a RayJob in K8sJobMode, reduced to what can run here: submit the
    entrypoint with its runtime env to the head's Job Submission API and mirror the job's
    status into the RayJob's status (Initializing -> Running -> Complete / Failed)."""

    def __init__(self, kube_api, head: RayHead):
        from kubernetes import client

        self.custom = client.CustomObjectsApi(kube_api.api_client())
        self.jobs = head.client()
        self.stop = threading.Event()
        self.submitted: dict[str, str] = {}  # RayJob name -> Ray submission id
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _status(self, name: str, **status) -> None:
        self.custom.patch_namespaced_custom_object_status(
            "ray.io", "v1", NAMESPACE, "rayjobs", name, {"status": status})

    def _run(self) -> None:
        try:
            while not self.stop.is_set():
                listed = self.custom.list_namespaced_custom_object("ray.io", "v1", NAMESPACE,
                                                                   "rayjobs")
                for item in listed["items"]:
                    self._reconcile(item)
                time.sleep(0.5)
        except BaseException as err:  # noqa: BLE001 - reported by the test
            self.errors.append(err)

    def _reconcile(self, item: dict) -> None:
        from ray.job_submission import JobStatus

        name, spec = item["metadata"]["name"], item["spec"]
        if name not in self.submitted:
            self._status(name, jobDeploymentStatus="Initializing")
            runtime_env = yaml.safe_load(spec.get("runtimeEnvYAML") or "") or {}
            self.submitted[name] = self.jobs.submit_job(
                entrypoint=spec["entrypoint"], runtime_env=runtime_env,
                submission_id=f"{name}-{uuid.uuid4().hex[:6]}")
            self._status(name, jobDeploymentStatus="Running", jobStatus="PENDING",
                         jobId=self.submitted[name])
            return
        current = (item.get("status") or {}).get("jobDeploymentStatus")
        if current in ("Complete", "Failed"):
            return
        status = self.jobs.get_job_status(self.submitted[name])
        if status == JobStatus.SUCCEEDED:
            self._status(name, jobDeploymentStatus="Complete", jobStatus=status.value)
        elif status in (JobStatus.FAILED, JobStatus.STOPPED):
            info = self.jobs.get_job_info(self.submitted[name])
            self._status(name, jobDeploymentStatus="Failed", jobStatus=status.value,
                         reason="AppFailed", message=info.message or "")
        else:
            self._status(name, jobDeploymentStatus="Running", jobStatus=status.value)

    def logs(self) -> str:
        return "\n".join(f"--- {name}:\n{self.jobs.get_job_logs(sid)[-4000:]}"
                         for name, sid in self.submitted.items())

    def __enter__(self) -> "PlayedOperator":
        self.thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop.set()
        self.thread.join(10)


@pytest.fixture(scope="module")
def s3_data(s3_server, default_pipeline) -> str:
    """The default pipeline's ingested data, in the object store (where pods read it)."""
    from vatt.config import StorageConfig
    from vatt.storage import ObjectStore

    uri = f"s3://{BUCKET}/k8s-data"
    env = dict(os.environ)
    os.environ.update(s3_server.env)
    try:
        ObjectStore.from_config(StorageConfig()).upload_dir(default_pipeline.data, uri)
    finally:
        os.environ.clear()
        os.environ.update(env)
    return uri


def test_pretrain_flow_runs_the_rayjob_on_ray_and_reads_the_checkpoint_back(
        kube_api, ray_head, s3_env, s3_data, prefect_api, tmp_path, monkeypatch):
    from flows.pretrain import pretrain as pretrain_flow
    from vatt.storage import ObjectStore

    rbac = subprocess.run(["kubectl", "kustomize", str(REPO_ROOT / "k8s" / "rbac")], text=True,
                          capture_output=True, check=True).stdout
    kube_api.kubectl("apply", "-n", NAMESPACE, "-f", "-", input=rbac)
    kubeconfig = kube_api.kubeconfig(tmp_path / "kubeconfig", token=kube_api.tokens[WORKER])
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.chdir(tmp_path)  # nothing of the checkout is where the flow runs either
    run_name = f"k8s-{uuid.uuid4().hex[:6]}"
    overrides = ["cluster.target=kubernetes", "cluster.accelerator=cpu",
                 f"cluster.manifests={REPO_ROOT / 'k8s'}",
                 "cluster.poll_s=1", "cluster.timeout_s=900",
                 f"train.storage_path=s3://{BUCKET}/k8s-runs", f"data.path={s3_data}", *SHORT]
    try:
        with PlayedOperator(kube_api, ray_head) as operator:
            result = pretrain_flow(preset="tiny", overrides=overrides, run_name=run_name)
    finally:  # the server is shared by the session: leave the worker without rights again
        kube_api.kubectl("delete", "-n", NAMESPACE, "--ignore-not-found", "-f", "-", input=rbac)
    assert not operator.errors, operator.errors
    assert list(operator.submitted) == [run_name], operator.submitted
    checkpoint = result["checkpoint"]
    assert checkpoint.startswith(f"s3://{BUCKET}/k8s-runs/{run_name}/checkpoint_"), (
        checkpoint, operator.logs())
    store = ObjectStore()
    assert store.exists(f"{checkpoint}/model.pt")
    logs = operator.jobs.get_job_logs(operator.submitted[run_name])
    assert "step 4/4" in logs, logs[-3000:]  # the training progress line, in the job's logs
    # cluster.cleanup=on_success: the RayJob is gone
    from kubernetes import client

    with pytest.raises(client.exceptions.ApiException) as gone:
        client.CustomObjectsApi(kube_api.api_client()).get_namespaced_custom_object(
            "ray.io", "v1", NAMESPACE, "rayjobs", run_name)
    assert gone.value.status == 404
