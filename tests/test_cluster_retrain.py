"""Retraining that runs in the cluster, end to end, in the cluster in a box.

A run of the `retrain/cluster-weekly` deployment of prefect.yaml, registered with `vatt deploy`
and triggered through the Prefect API as the UI does, goes the whole way a team's cluster takes
it:

- the real Prefect server (the session's) and the real Prefect Kubernetes worker
  (`prefect worker start --type kubernetes --pool vatt-k8s`, as k8s/prefect/worker.yaml runs
  it, with the ServiceAccount vatt-prefect-worker's token and its Role of k8s/rbac), on the
  work pool that worker.yaml's init container creates (its script, run here);
- the worker creates the flow run's Job from k8s/prefect/base-job-template.json; the real
  job controller makes its Pod, the real scheduler binds it, the stand-in kubelet runs
  `prefect flow-run execute` in the image's Python (tests/kube_box.py: the wheel, no source
  tree; the object store's settings from the ConfigMap and Secret vatt-object-store);
- in that pod the flow ingests the generated dataset, publishes its version to SeaweedFS,
  and creates two RayJobs from the gpu overlay (as its identity: vatt-flow-run), training and
  then evaluation; KubeRay's operator is played (tests/kuberay_play.py): a Ray cluster of
  pods per RayJob, the workers bound by the scheduler to the GPU node (node selector,
  toleration, nvidia.com/gpu), the entrypoint submitted by a submitter Job;
- the checkpoint, the report and the registry's decision land in object storage, the flow
  run completes, the UI's artifacts are there, and the RayJobs are gone;
- least privilege, read from the API server's audit log after the module's runs: each account
  was refused nothing and used its Role (nothing granted that no code called, but for the calls
  named in UNUSED_HERE), the Ray pods' account made no request at all, and every pod created
  met the Pod Security Standard `restricted` that k8s/namespace labels the namespace with (the
  1.20 API server has no PodSecurity admission: tests/pod_security.py plays it).

What only a real cluster proves: the image itself (built from the Dockerfile; here its Python
is the wheel beside this interpreter's dependencies), container isolation, networking and DNS
(every pod here shares 127.0.0.1), GPUs (the box overlay trains on CPUs: see
tests/fixtures/k8s-box), KubeRay's own operator, and Prefect's worker inside a pod.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from conftest import REPO_ROOT, poll, stop_process_group, vatt_command
from kuberay_play import PlayedKubeRay

pytestmark = pytest.mark.slow

NAMESPACE = "vatt"
WORKER = f"system:serviceaccount:{NAMESPACE}:vatt-prefect-worker"
FLOW_RUN = f"system:serviceaccount:{NAMESPACE}:vatt-flow-run"
RAY = f"system:serviceaccount:{NAMESPACE}:vatt-ray"
POOL = "vatt-k8s"
POD_SECURITY = "pod-security.kubernetes.io/"
BOX_MANIFESTS = REPO_ROOT / "tests" / "fixtures" / "k8s-box"
FLOW_RUN_TIMEOUT_S = 25 * 60


def _kustomize(folder: Path) -> list[dict]:
    out = subprocess.run(["kubectl", "kustomize", str(folder)], text=True, capture_output=True,
                         check=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def _install_platform(box, s3_server) -> list[dict]:
    """What k8s/README.md's install does in the namespace, as far as the box runs it: the
    namespace's Pod Security labels (k8s/namespace), the RBAC of k8s/rbac, the object store's ConfigMap of k8s/object-store (its endpoint set to the
    test's SeaweedFS, as a user edits it) and the Secret of keys (`kubectl create secret`).
    Returns the RBAC objects (removed again at the module's end: the box is the session's)."""
    api = box.api
    [namespace] = _kustomize(REPO_ROOT / "k8s" / "namespace")
    api.kubectl("label", "namespace", NAMESPACE, "--overwrite",
                *[f"{key}={value}" for key, value in namespace["metadata"]["labels"].items()
                  if key.startswith(POD_SECURITY)])
    rbac = _kustomize(REPO_ROOT / "k8s" / "rbac")
    api.kubectl("apply", "-n", NAMESPACE, "-f", "-", input=yaml.safe_dump_all(rbac))
    [config_map] = _kustomize(REPO_ROOT / "k8s" / "object-store")
    assert "AWS_ENDPOINT_URL_S3" in config_map["data"]
    config_map["data"]["AWS_ENDPOINT_URL_S3"] = s3_server.endpoint_url
    api.kubectl("apply", "-n", NAMESPACE, "-f", "-", input=json.dumps(config_map))
    api.kubectl("create", "-n", NAMESPACE, "secret", "generic", "vatt-object-store",
                f"--from-literal=AWS_ACCESS_KEY_ID={s3_server.env['AWS_ACCESS_KEY_ID']}",
                f"--from-literal=AWS_SECRET_ACCESS_KEY={s3_server.env['AWS_SECRET_ACCESS_KEY']}")
    return rbac


def _uninstall_platform(box, rbac: list[dict]) -> None:
    """Leaves the session's box as the module found it: no rights for vatt-worker, no object-store
    settings, no flow-run Jobs (their pods go with them), no Pod Security labels."""
    api = box.api
    api.kubectl("label", "namespace", NAMESPACE,
                *[f"{POD_SECURITY}{mode}-" for mode in ("enforce", "enforce-version", "warn",
                                                          "warn-version", "audit",
                                                          "audit-version")])
    api.kubectl("delete", "-n", NAMESPACE, "--ignore-not-found", "-f", "-",
                input=yaml.safe_dump_all(rbac))
    api.kubectl("delete", "-n", NAMESPACE, "--ignore-not-found", "configmap,secret",
                "vatt-object-store")
    api.kubectl("delete", "-n", NAMESPACE, "jobs", "-l", "prefect.io/flow-run-id",
                "--ignore-not-found", "--wait=false")
    api.kubectl("delete", "-n", NAMESPACE, "rayjobs", "--all", "--ignore-not-found",
                "--wait=false")


def _worker_deployment() -> dict:
    rendered = _kustomize(REPO_ROOT / "k8s" / "prefect")
    return next(doc for doc in rendered
                if doc["kind"] == "Deployment" and doc["metadata"]["name"] == "vatt-prefect-worker")


def _create_work_pool(prefect_server, tmp_path: Path) -> None:
    """The worker Deployment's init container, run here: its own script (it writes the pool's
    base job template with the worker's image and namespace as defaults and creates the pool),
    with the ConfigMap's file where the container mounts it."""
    deployment = _worker_deployment()
    init = next(c for c in deployment["spec"]["template"]["spec"]["initContainers"]
                if c["name"] == "create-work-pool")
    script = init["command"][-1]
    script = script.replace("/etc/vatt/base-job-template.json",
                            str(REPO_ROOT / "k8s" / "prefect" / "base-job-template.json"))
    script = script.replace("/tmp/base-job-template.json", str(tmp_path / "template.json"))
    env = {item["name"]: item.get("value", "") for item in init["env"] if "value" in item}
    env.update(POD_NAMESPACE=NAMESPACE, PREFECT_API_URL=prefect_server.api)
    venv_bin = str(Path(sys.executable).parent)
    done = subprocess.run(["sh", "-ec", script], text=True, capture_output=True, timeout=300,
                          env={**prefect_server.env, **env,
                               "PATH": f"{venv_bin}{os.pathsep}{os.environ['PATH']}"})
    assert done.returncode == 0, done.stdout + done.stderr


def _start_worker(box, prefect_server, tmp_path: Path) -> subprocess.Popen:
    """The worker container's command, with the worker's ServiceAccount token (the box's token
    file plays the mounted token) and the environment worker.yaml gives it. Its healthcheck
    port (8080) is left out: other programs on this machine may hold it."""
    deployment = _worker_deployment()
    container = next(c for c in deployment["spec"]["template"]["spec"]["containers"]
                     if c["name"] == "prefect-worker")
    command = [arg for arg in container["command"] if arg != "--with-healthcheck"]
    assert command[:4] == ["prefect", "worker", "start", "--pool"] and POOL in command
    kubeconfig = box.api.kubeconfig(tmp_path / "worker-kubeconfig", token=box.api.tokens[WORKER])
    env = {**prefect_server.env, "KUBECONFIG": str(kubeconfig),
           "PREFECT_INTEGRATIONS_KUBERNETES_OBSERVER_NAMESPACES": NAMESPACE,
           "PREFECT_HOME": str(tmp_path / "worker-prefect-home"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT,
                                cwd=tmp_path, start_new_session=True)


def _flow_run(prefect_server, flow_run_id: str):
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: prefect_server.api}):
        with get_client(sync_client=True) as client:
            return client.read_flow_run(flow_run_id)


def _diagnose(box, operator: PlayedKubeRay, worker_log: Path, name: str) -> str:
    pods = box.api.kubectl("get", "pods", "-o", "wide", check=False).stdout
    events = box.api.kubectl("get", "events", "--sort-by=.lastTimestamp", check=False).stdout
    logs = []
    for pod in box.kubelet.pods():
        for run in pod.all_runs():
            logs.append(f"--- {pod.name}/{run.container}:\n"
                        f"{run.log_path.read_text(errors='replace')[-3000:]}")
    return (f"{name}\npods:\n{pods}\nevents:\n{events[-4000:]}\nworker:\n"
            f"{worker_log.read_text(errors='replace')[-3000:]}\noperator: {operator.history}\n"
            f"{operator.errors}\n" + "\n".join(logs[-8:]))


@dataclass
class Platform:
    """The platform installed in the box, with the worker and the played operator running."""

    box: Any
    prefect: Any
    operator: PlayedKubeRay
    worker: subprocess.Popen
    worker_log: Path
    bucket: str  # this module's prefix in the test bucket
    installed_at: datetime.datetime  # before the module's first request to the API server

    def overrides(self, *more: str) -> list[str]:
        """The cluster settings a deployment run gets: the box overlay, this module's object
        storage, and a short budget (what is proven is the path, not the model)."""
        return ["cluster.target=kubernetes", "cluster.accelerator=gpu",
                f"cluster.manifests={BOX_MANIFESTS}", "cluster.poll_s=1",
                "cluster.timeout_s=1500", f"train.storage_path={self.bucket}/runs",
                f"data.versions_uri={self.bucket}/datasets",
                f"eval.output_path={self.bucket}/eval",
                f"eval.registry_path={self.bucket}/registry",
                "data.ingest.synthetic_scale=0.05", "data.ingest.num_workers=1",
                "train.optim.total_steps=4", "train.optim.warmup_steps=1",
                "train.log_every=2", "train.checkpoint_every=2", "eval.tasks_if_ingested=[]",
                "eval.probe.epochs=5", *more]

    def run(self, deployment: str, parameters: dict) -> Any:
        """Triggers a run of `deployment` through the API, as the UI's Run button does."""
        from prefect.deployments import run_deployment
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: self.prefect.api}):
            return run_deployment(deployment, timeout=0, parameters=parameters)

    def state(self, flow_run_id) -> Any:
        self.operator.check()
        self.box.check()
        return _flow_run(self.prefect, flow_run_id).state

    def wait_for(self, flow_run_id, what: str, done=lambda state: state.is_final()) -> Any:
        def reached():
            state = self.state(flow_run_id)
            return state if state is not None and done(state) else None

        try:
            return poll(reached, what, FLOW_RUN_TIMEOUT_S, self.worker, self.worker_log,
                        interval_s=1.0)
        except AssertionError as err:
            raise AssertionError(self.diagnose(str(err))) from None

    def diagnose(self, what: str) -> str:
        return _diagnose(self.box, self.operator, self.worker_log, what)


@pytest.fixture(scope="module")
def platform(kube_box, s3_server, prefect_server, tmp_path_factory) -> Iterator[Platform]:
    """k8s/README.md's install in the box (RBAC, object-store settings and keys), the work pool
    as the worker's init container creates it, `vatt deploy`, the worker and the operator."""
    tmp_path = tmp_path_factory.mktemp("cluster-retrain")
    installed_at = datetime.datetime.now(datetime.timezone.utc)
    rbac = _install_platform(kube_box, s3_server)
    _create_work_pool(prefect_server, tmp_path)
    deployed = subprocess.run([*vatt_command(), "deploy"], cwd=REPO_ROOT, text=True,
                              capture_output=True, env=prefect_server.env, timeout=300)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    for name in ("retrain/cluster-weekly", "pretrain/cluster", "evaluate/cluster",
                 "ingest/cluster"):
        assert f"deployment {name} on work pool {POOL}" in deployed.stdout, deployed.stdout
    worker = _start_worker(kube_box, prefect_server, tmp_path)
    env_backup = dict(os.environ)
    os.environ.update(s3_server.env)  # this process reads the results from the object store
    try:
        with PlayedKubeRay(kube_box.api, NAMESPACE) as operator:
            yield Platform(kube_box, prefect_server, operator, worker,
                           tmp_path / "worker.log",
                           f"s3://{s3_server.bucket}/box-{uuid.uuid4().hex[:6]}", installed_at)
    finally:
        os.environ.clear()
        os.environ.update(env_backup)
        stop_process_group(worker, grace_s=10)
        _uninstall_platform(kube_box, rbac)


def test_the_cluster_retrain_deployment_runs_end_to_end_in_the_cluster(platform):
    from vatt.storage import ObjectStore

    started = time.monotonic()
    flow_run = platform.run("retrain/cluster-weekly", {
        "preset": "tiny", "overrides": platform.overrides(), "source": "synthetic"})
    state = platform.wait_for(flow_run.id, "the cluster retrain flow run")
    assert state.is_completed(), platform.diagnose(f"{state.type}: {state.message}")
    print(f"\n[cluster retrain] {time.monotonic() - started:.0f} s from trigger to Completed")
    _check_outcome(platform.box, platform.prefect, flow_run.id, platform.bucket,
                   ObjectStore.from_config(), platform.operator.history_of(flow_run.id),
                   platform.operator.placements_of(flow_run.id))


def _data_version(platform: Platform) -> str:
    """A published data version to train on: the one the retrain test published, or (when it
    did not run) a small generated dataset ingested and published from here."""
    from vatt.config import load_config
    from vatt.data.ingest import ingest
    from vatt.data.publish import publish, read_published
    from vatt.storage import ObjectStore

    store = ObjectStore.from_config()
    versions = sorted({name.split("/")[0] for name in store.list(f"{platform.bucket}/datasets")})
    for version in versions:
        uri = f"{platform.bucket}/datasets/{version}"
        if read_published(uri, store) is not None:
            return uri
    folder = Path(tempfile.mkdtemp(prefix="box-data-"))
    cfg = load_config("tiny", ["data.ingest.synthetic_scale=0.05", "data.ingest.num_workers=1"])
    ingest(cfg, "synthetic", str(folder / "raw"), folder / "data", progress=False)
    return publish(folder / "data", f"{platform.bucket}/datasets", store).uri


def _flow_run_jobs(platform: Platform, flow_run_id) -> list[dict]:
    """The Kubernetes Jobs the worker created for a flow run (one per execution)."""
    return json.loads(platform.box.api.kubectl(
        "get", "jobs", "-l", f"prefect.io/flow-run-id={flow_run_id}", "-o",
        "json").stdout)["items"]


def test_a_flow_run_pod_killed_mid_training_and_retried_follows_the_same_rayjob(platform):
    """The flow-run pod's container is killed while its RayJob trains (OOMKilled, or its node
    lost: SIGKILL, no chance to clean up). The pod fails, its Job fails (backoffLimit 0), the
    worker marks the flow run Crashed; the flow run is retried from the API, as the UI's Retry
    does, and the worker starts a new Job. The new pod's flow has the same run name (pinned to
    the flow run), finds the run's RayJob and follows it: one Ray cluster, one training, and
    the flow run completes with the run's checkpoint."""
    import signal

    from prefect import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.states import AwaitingRetry

    from vatt.storage import ObjectStore

    data = _data_version(platform)
    flow_run = platform.run("pretrain/cluster", {
        "preset": "tiny", "overrides": platform.overrides(f"data.path={data}",
                                                          "train.optim.total_steps=8")})
    key = str(flow_run.id)[:8]
    poll(lambda: any(key in job and status == "Running"
                     for job, status, _ in platform.operator.history),
         "the run's RayJob to run", 600)
    [job] = _flow_run_jobs(platform, flow_run.id)
    [pod] = json.loads(platform.box.api.kubectl(
        "get", "pods", "-l", f"job-name={job['metadata']['name']}", "-o", "json").stdout)["items"]
    container = platform.box.kubelet.container(NAMESPACE, pod["metadata"]["name"])
    os.killpg(container.process.pid, signal.SIGKILL)
    crashed = platform.wait_for(flow_run.id, "the worker to mark the flow run crashed")
    assert crashed.is_crashed(), platform.diagnose(f"{crashed.type}: {crashed.message}")
    with temporary_settings({PREFECT_API_URL: platform.prefect.api}):
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(flow_run.id, AwaitingRetry(), force=True)
    state = platform.wait_for(flow_run.id, "the retried flow run")
    assert state.is_completed(), platform.diagnose(f"{state.type}: {state.message}")
    jobs = _flow_run_jobs(platform, flow_run.id)
    assert len(jobs) == 2, [j["metadata"]["name"] for j in jobs]  # one execution per Job
    trainings = [cluster for job, cluster in platform.operator.created if key in job]
    assert len(trainings) == 1, platform.operator.created  # never a second training
    [rayjob] = {job for job, _ in platform.operator.created if key in job}
    assert any(name.endswith("model.pt")
               for name in ObjectStore.from_config().list(f"{platform.bucket}/runs/{rayjob}"))


def test_a_rayjob_that_fails_fails_the_flow_run_with_its_reason(platform):
    """The training entrypoint fails inside the Ray cluster (a dataset that is not in the data
    version): the RayJob ends Failed, and the flow run fails with KubeRay's reason and the
    submitter's log, read through the API from the submitter pod."""
    data = _data_version(platform)
    flow_run = platform.run("pretrain/cluster", {
        "preset": "tiny", "overrides": platform.overrides(f"data.path={data}",
                                                          "train.dataset=no-such-dataset")})
    state = platform.wait_for(flow_run.id, "the failing flow run")
    assert state.is_failed(), platform.diagnose(f"{state.type}: {state.message}")
    assert "ended Failed" in state.message and "AppFailed" in state.message, state.message
    assert "no-such-dataset" in state.message, state.message  # the submitter's log tail
    key = str(flow_run.id)[:8]
    # a failed RayJob is kept for `kubectl describe` (cluster.cleanup=on_success); deleted
    # here, as its user would, so that its Ray workers give the GPU node's GPUs back
    kept = [name for name in platform.box.api.kubectl("get", "rayjobs", "-o", "name").stdout.split()
            if key in name]
    assert len(kept) == 1, kept
    platform.box.api.kubectl("delete", kept[0], "--wait=false")


def _check_outcome(box, prefect_server, flow_run_id, bucket: str, store, history,
                   placements) -> None:
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from vatt.data.publish import resolve_published

    with temporary_settings({PREFECT_API_URL: prefect_server.api}):
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(flow_run_id)
            artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    assert run.state.is_completed()
    # the flow ran in a pod of the Job the worker made from the base job template, on the CPU
    # node (it asks for no GPU), as vatt-flow-run
    [job] = json.loads(box.api.kubectl("get", "jobs", "-l", f"prefect.io/flow-run-id={flow_run_id}",
                                       "-o", "json").stdout)["items"]

    def flow_pods() -> list[dict]:
        return json.loads(box.api.kubectl(
            "get", "pods", "-l", f"job-name={job['metadata']['name']}", "-o",
            "json").stdout)["items"]

    # the flow run is final a moment before its process exits
    box.poll(lambda: all(pod["status"]["phase"] == "Succeeded" for pod in flow_pods()),
             "the flow-run pod to exit", 120)
    [flow_pod] = flow_pods()
    assert flow_pod["spec"]["nodeName"] == box.cpu_node
    assert flow_pod["spec"]["serviceAccountName"] == "vatt-flow-run"
    assert flow_pod["status"]["phase"] == "Succeeded"
    keys = {artifact.key for artifact in artifacts}
    assert {"vatt-data-version", "vatt-training", "vatt-metrics", "vatt-report", "vatt-gate",
            "vatt-checkpoint", "vatt-timing"} <= keys, keys
    # the data version: published once, complete, named in the run's record
    versions = {name.split("/")[0] for name in store.list(f"{bucket}/datasets")}
    assert len(versions) == 1, versions
    [version] = versions
    record = resolve_published(f"{bucket}/datasets/{version}", store)
    assert record["version"] == version and "synthetic-howto100m" in record["datasets"]
    # training: its checkpoint in object storage, recording the data version it read
    checkpoints = [name for name in store.list(f"{bucket}/runs") if name.endswith("model.pt")]
    assert checkpoints, store.list(f"{bucket}/runs")
    # evaluation: the report, the registry's decision and the job's outcome, all in S3
    reports = [name for name in store.list(f"{bucket}/eval") if name.endswith("results.json")]
    outcomes = [name for name in store.list(f"{bucket}/eval") if name.startswith("jobs/")]
    assert len(reports) == 1 and len(outcomes) == 1, store.list(f"{bucket}/eval")
    outcome = json.loads(store.read_bytes(f"{bucket}/eval/{outcomes[0]}"))
    assert outcome["decision"]["promoted"] is True  # the first model of an empty registry
    assert outcome["data_version"]["published_version"] == version
    assert outcome["report"].startswith(f"{bucket}/eval/")
    assert store.list(f"{bucket}/registry"), "the registry holds the decision"
    # two RayJobs, training then evaluation, each Complete, then deleted (cleanup on success)
    rayjobs = []
    for name, _, _ in history:
        if name not in rayjobs:
            rayjobs.append(name)
    assert len(rayjobs) == 2 and rayjobs[1] == f"{rayjobs[0]}-eval", history
    for name in rayjobs:
        assert (name, "Complete", "SUCCEEDED") in history, history
    # the real scheduler placed each Ray cluster: the workers (one nvidia.com/gpu each, the GKE
    # node selector and toleration) on the GPU node, the head on the CPU node
    for name in rayjobs:
        nodes = {role: {node for (job, pod_role, _), node in placements.items()
                        if job == name and pod_role == role} for role in ("head", "worker")}
        assert nodes == {"head": {box.cpu_node}, "worker": {box.gpu_node}}, placements
        assert sum(1 for (job, role, _) in placements if job == name and role == "worker") == 2
    # deleting the RayJobs took their clusters, pods and submitters with them (the real GC)
    def left() -> list[str]:
        names = box.api.kubectl("get", "rayjobs,rayclusters,jobs.batch,pods", "-o",
                                "name").stdout.split()
        return [name for name in names if any(job in name for job in rayjobs)]

    box.poll(lambda: not left(), "the garbage collector to delete the RayJobs' objects", 120)


# Granted, and called by code the runs above do not reach (each names the call)
UNUSED_HERE = {
    WORKER: {
        ("batch", "jobs", "delete"),  # cancelling a flow run (worker.kill_infrastructure)
        ("batch", "jobs", "get"),  # a Job's DELETED event: a crash or a deletion (_read_job_uid)
        ("", "pods/log", "get"),  # the observer forwarding a crashed run's log tail, when it,
        # not the worker, sees the run crash (settings.observer.forward_crashed_run_logs)
    },
    FLOW_RUN: set(),
}


def _granted(rbac: list[dict], account: str) -> set[tuple[str, str, str]]:
    name = account.rsplit(":", 1)[-1]
    [role] = [doc for doc in rbac if doc["kind"] == "Role" and doc["metadata"]["name"] == name]
    return {(group, resource, verb) for rule in role["rules"] for group in rule["apiGroups"]
            for resource in rule["resources"] for verb in rule["verbs"]}


def _since(events: list[dict], moment: datetime.datetime) -> list[dict]:
    return [event for event in events if datetime.datetime.fromisoformat(
        event["requestReceivedTimestamp"].replace("Z", "+00:00")) >= moment]


def test_each_account_used_its_role_and_nothing_else_and_every_pod_was_restricted(platform):
    """Read from the API server's audit log after the module's flow runs (run the whole module:
    the runs above are what it reads; the worker is stopped first, as the server logs a watch
    when it ends). The Prefect worker and the flow runs were refused
    nothing and called every right their Roles give them (less UNUSED_HERE); the Ray pods'
    account, whose token is not mounted, made no request; every pod created in the namespace
    meets the Pod Security Standard the namespace's label names (`restricted`), checked as
    the PodSecurity admission controller would (tests/pod_security.py)."""
    from pod_security import violations

    rbac = _kustomize(REPO_ROOT / "k8s" / "rbac")
    # the API server writes a watch's audit events when the watch ends: the worker's watches
    # (its observer's, open since it started) end with the worker, stopped here (the last test)
    stop_process_group(platform.worker, grace_s=10)

    def watches_logged() -> list[dict] | None:
        events = _since(platform.box.api.audit_events(), platform.installed_at)
        ended = [e for e in events if e["user"]["username"] == WORKER and e["verb"] == "watch"]
        return events if ended else None

    events = platform.box.poll(watches_logged, "the worker's watches in the audit log", 60)
    by_user: dict[str, list[dict]] = {}
    for event in events:
        by_user.setdefault(event["user"]["username"], []).append(event)
    assert by_user.get(FLOW_RUN), "no flow run called the API: run the whole module"
    for account in (WORKER, FLOW_RUN):
        refused = [(e["verb"], e["objectRef"].get("resource"), e["requestURI"])
                   for e in by_user[account] if e.get("responseStatus", {}).get("code") == 403]
        assert refused == [], f"{account} was refused: {refused}"
        used = set()
        for event in by_user[account]:
            if "objectRef" not in event:  # API discovery (/api, /apis/..., /version): any user's
                assert event["verb"] == "get" and event["requestURI"].startswith(
                    ("/api", "/version")), event["requestURI"]
                continue
            ref = event["objectRef"]
            resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource")
                                          else "")
            used.add((ref.get("apiGroup", ""), resource, event["verb"]))
            assert ref.get("namespace") == NAMESPACE, event["requestURI"]
        granted = _granted(rbac, account)
        assert used <= granted  # (no 403 says the same, from the server's side)
        assert granted - used == UNUSED_HERE[account], (
            f"{account}'s Role grants what no code called: {sorted(granted - used - UNUSED_HERE[account])}"
            f"; or UNUSED_HERE names what was called: {sorted(UNUSED_HERE[account] & used)}")
    assert RAY not in by_user, [e["requestURI"] for e in by_user[RAY]]

    labels = json.loads(platform.box.api.kubectl("get", "namespace", NAMESPACE, "-o",
                                                 "json").stdout)["metadata"]["labels"]
    assert labels[f"{POD_SECURITY}enforce"] == "restricted"
    created = [event["requestObject"] for event in events
               if event["verb"] == "create" and event["objectRef"]["resource"] == "pods"
               and event["objectRef"].get("namespace") == NAMESPACE
               and event.get("responseStatus", {}).get("code") == 201]
    ours = [pod for pod in created
            if (pod["metadata"].get("labels") or {}).get("app.kubernetes.io/name") == "vatt"
            or "prefect.io/flow-run-id" in (pod["metadata"].get("labels") or {})]
    roles = {(pod["metadata"].get("labels") or {}).get("app.kubernetes.io/component")
             for pod in ours}
    assert {"ray-head", "ray-worker", "ray-job-submitter"} <= roles, roles
    assert any("prefect.io/flow-run-id" in (pod["metadata"].get("labels") or {}) for pod in ours)
    for pod in ours:
        name = pod["metadata"].get("name") or pod["metadata"].get("generateName")
        assert violations(pod["spec"], pod["metadata"].get("annotations")) == [], name
        if (pod["metadata"].get("labels") or {}).get("app.kubernetes.io/component", "").startswith("ray"):
            assert pod["spec"].get("serviceAccountName") == "vatt-ray", name
            assert pod["spec"].get("automountServiceAccountToken") is False, name
    print(f"\n[least privilege] {len(events)} audited requests, {len(ours)} pods checked; "
          + ", ".join(f"{user.rsplit(':', 1)[-1]}: {len(calls)}"
                      for user, calls in sorted(by_user.items())))
