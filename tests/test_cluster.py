"""vatt.cluster and `vatt submit` against a real Kubernetes API server (tests/kube.py: Debian's
kube-apiserver 1.20 beside etcd, RBAC on, token identities) with KubeRay's CRDs installed.

No KubeRay operator runs here: where a test needs the RayJob to move, the test plays the
operator and patches `status` through the status subresource, as KubeRay does. The RayJobs
themselves run, on real Ray clusters in a cluster in a box, in tests/test_cluster_retrain.py.
"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
import time
import uuid

import pytest
import yaml

from conftest import REPO_ROOT, poll, vatt_command
from helpers import tiny_data_folder
from k8s_validate import validate
from vatt.cluster import jobs
from vatt.cluster.client import (InvalidObjectError, JobExistsError, KubeClient,
                                 PermissionDeniedError, TransientClusterError)
from vatt.cluster.render import JOB_CONFIG_ENV, RenderError, job_name, render_job
from vatt.config import load_config, replace, to_dict

NAMESPACE = "vatt"
# k8s/rbac's accounts: the client runs as the flow runs' (`vatt submit` users get its Role)
WORKER = f"system:serviceaccount:{NAMESPACE}:vatt-flow-run"
PREFECT_WORKER = f"system:serviceaccount:{NAMESPACE}:vatt-prefect-worker"
RAY = f"system:serviceaccount:{NAMESPACE}:vatt-ray"
NOPERM = f"system:serviceaccount:{NAMESPACE}:vatt-noperm"
S3_PATHS = ["train.storage_path=s3://vatt-data/runs", "data.path=s3://vatt-data/data"]


def _cfg(run_name: str, *overrides: str):
    return load_config("tiny", [*S3_PATHS, f"train.run_name={run_name}",
                                f"cluster.manifests={REPO_ROOT / 'k8s'}", "cluster.poll_s=0.2",
                                "cluster.timeout_s=120", *overrides])


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


# ---------------------------------------------------------------------------------------------
# Rendering (no server)


def test_job_names_are_dns_labels_of_at_most_47_characters():
    assert job_name("tiny-20261202-101500") == "tiny-20261202-101500"
    assert job_name("My_Run.2") == "my-run-2"
    assert job_name("2026 run") == "vatt-2026-run"
    long_a, long_b = job_name("x" * 80 + "a"), job_name("x" * 80 + "b")
    assert len(long_a) <= 47 and len(long_b) <= 47 and long_a != long_b


@pytest.mark.parametrize("accelerator, hardware", [
    ("cpu", ()), ("gpu", ("train.use_gpu=true", "train.num_workers=2")),
    ("tpu", ("train.use_tpu=true", "train.tpu_topology=4x4", "train.tpu_accelerator_type=TPU-V6E",
             "train.num_workers=4"))])
def test_rendered_job_carries_the_config_and_validates(accelerator, hardware):
    cfg = _cfg("render-check", f"cluster.accelerator={accelerator}", "model.video.drop_rate=0.25")
    rendered = render_job(cfg)
    spec = rendered.rayjob["spec"]
    assert rendered.rayjob["metadata"]["name"] == "render-check"
    assert spec["entrypoint"] == f"vatt pretrain --config-env {JOB_CONFIG_ENV}"
    shipped = yaml.safe_load(yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"][JOB_CONFIG_ENV])
    # the config travels whole, with the overlay's hardware settings (what its pods have): the
    # run resumes under its name with the same settings
    assert rendered.hardware == hardware
    expected = to_dict(replace(cfg, list(hardware)))
    expected["cluster"]["target"] = "local"  # it trains on the RayJob's own Ray
    assert shipped == expected
    assert shipped["model"]["video"]["drop_rate"] == 0.25 and shipped["train"]["run_name"] == "render-check"
    assert all(doc["metadata"].get("namespace") == NAMESPACE for doc in rendered.documents)
    for doc in rendered.documents:
        assert validate(doc) == [], (doc["kind"], validate(doc))


def test_the_evaluation_job_is_rendered_beside_its_run_and_its_entrypoint_parses():
    """evaluate_on_cluster's RayJob: named after the run plus -eval, the same overlay, an
    entrypoint that `vatt evaluate` parses into the checkpoint, outcome and overrides given."""
    import shlex

    from vatt.cli import build_parser
    from vatt.cluster.render import EVALUATE_SUFFIX, STEP_LABEL

    cfg = _cfg("run-x", "eval.output_path=s3://vatt-data/eval",
               "eval.registry_path=s3://vatt-data/registry")
    checkpoint = "s3://vatt-data/runs/run-x/checkpoint_000001"
    command = ("evaluate", "--checkpoint", checkpoint, "--outcome",
               "s3://vatt-data/eval/jobs/run-x-eval.json", "--on-worker",
               "data.path=s3://vatt-data/datasets/sha256-abc", "eval.probe.epochs=3")
    rendered = render_job(cfg, command=command, suffix=EVALUATE_SUFFIX)
    assert rendered.name == "run-x-eval"
    assert rendered.rayjob["metadata"]["labels"][STEP_LABEL] == "evaluate"
    entrypoint = rendered.rayjob["spec"]["entrypoint"]
    assert entrypoint.startswith(f"vatt evaluate --config-env {JOB_CONFIG_ENV} --checkpoint ")
    args = build_parser().parse_args(shlex.split(entrypoint)[1:])
    assert (args.checkpoint, args.on_worker, args.no_promote) == (checkpoint, True, False)
    assert args.outcome.endswith("/jobs/run-x-eval.json")
    assert args.overrides == ["data.path=s3://vatt-data/datasets/sha256-abc",
                              "eval.probe.epochs=3"]
    for doc in rendered.documents:
        assert validate(doc) == [], (doc["kind"], validate(doc))
    # reports and the registry are written by the pods: local folders are refused
    with pytest.raises(RenderError, match="eval.output_path='artifacts/eval'"):
        render_job(_cfg("run-x"), command=command, suffix=EVALUATE_SUFFIX)


def test_local_paths_are_refused_before_anything_is_rendered():
    cfg = load_config("tiny", ["train.run_name=x", f"cluster.manifests={REPO_ROOT / 'k8s'}"])
    with pytest.raises(RenderError, match="train.storage_path='runs'.*data.path='data'"):
        render_job(cfg)


@pytest.mark.parametrize("target", ["cpu", "gpu", "tpu"])
def test_submit_dry_run_prints_valid_manifests(target, tmp_path):
    done = subprocess.run([*vatt_command(), "submit", "--target", target, "--dry-run",
                           "train.run_name=dry", f"cluster.manifests={REPO_ROOT / 'k8s'}",
                           *S3_PATHS], cwd=tmp_path, text=True, capture_output=True)
    assert done.returncode == 0, done.stderr
    documents = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
    kinds = [doc["kind"] for doc in documents]
    assert kinds.count("RayJob") == 1
    for doc in documents:
        assert validate(doc) == [], (doc["kind"], validate(doc))
    worker = next(doc for doc in documents if doc["kind"] == "RayJob")["spec"][
        "rayClusterSpec"]["workerGroupSpecs"][0]
    limits = worker["template"]["spec"]["containers"][0]["resources"]["limits"]
    accelerators = {"nvidia.com/gpu", "google.com/tpu"} & set(limits)
    assert accelerators == {"cpu": set(), "gpu": {"nvidia.com/gpu"}, "tpu": {"google.com/tpu"}}[target]


def test_tpu_config_reaches_ray_train_scaling_config():
    from vatt.train.pretrain import scaling_config

    cfg = load_config("tiny", ["train.use_tpu=true", "train.num_workers=4",
                               "train.tpu_topology=4x4", "train.tpu_accelerator_type=TPU-V6E"])
    scaling = scaling_config(cfg)
    assert scaling.use_tpu and not scaling.use_gpu
    assert (scaling.topology, scaling.accelerator_type) == ("4x4", "TPU-V6E")
    assert scaling.resources_per_worker["TPU"] == 4.0
    with pytest.raises(Exception, match="train.tpu_topology"):
        load_config("tiny", ["train.use_tpu=true", "train.num_workers=4"])


# ---------------------------------------------------------------------------------------------
# Against the API server


@pytest.fixture(scope="module")
def rbac(kube_api):
    """The platform's RBAC (k8s/rbac) applied in the namespace, as a cluster admin would; removed
    again after the module (the server is shared by the session)."""
    rendered = subprocess.run(["kubectl", "kustomize", str(REPO_ROOT / "k8s" / "rbac")],
                              text=True, capture_output=True, check=True).stdout
    kube_api.kubectl("apply", "-n", NAMESPACE, "-f", "-", input=rendered)
    yield [doc for doc in yaml.safe_load_all(rendered) if doc]
    kube_api.kubectl("delete", "-n", NAMESPACE, "--ignore-not-found", "-f", "-", input=rendered)


@pytest.fixture
def worker(kube_api, rbac) -> KubeClient:
    return KubeClient(kube_api.api_client(kube_api.tokens[WORKER]), NAMESPACE, attempts=3)


@pytest.fixture
def operator(kube_api):
    """The test's stand-in for the KubeRay operator: patches a RayJob's status (admin)."""
    from kubernetes import client

    custom = client.CustomObjectsApi(kube_api.api_client())

    def set_status(name: str, **status):
        for _ in range(100):  # the RayJob may not exist yet when the client is just submitting
            try:
                return custom.patch_namespaced_custom_object_status(
                    "ray.io", "v1", NAMESPACE, "rayjobs", name, {"status": status})
            except client.exceptions.ApiException as err:
                if err.status != 404:
                    raise
                time.sleep(0.1)
        raise AssertionError(f"rayjob {name} never appeared")

    return set_status


def _exists(kube_api, name: str) -> bool:
    """Whether RayJob `name` is stored (read as the admin)."""
    from kubernetes import client

    try:
        client.CustomObjectsApi(kube_api.api_client()).get_namespaced_custom_object(
            "ray.io", "v1", NAMESPACE, "rayjobs", name)
        return True
    except client.exceptions.ApiException as err:
        if err.status != 404:
            raise
        return False


def _run_in_thread(fn):
    box: dict = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as err:  # noqa: BLE001 - handed to the test
            box["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, box


def test_client_follows_a_job_to_complete_and_cleans_up(worker, operator):
    cfg = _cfg(_unique("complete"))
    rendered = render_job(cfg)
    seen = []
    thread, box = _run_in_thread(lambda: jobs.run_job(cfg, worker, rendered, on_status=seen.append))
    for deployment, job in (("Initializing", ""), ("Running", "PENDING"), ("Running", "RUNNING"),
                            ("Complete", "SUCCEEDED")):
        operator(rendered.name, jobDeploymentStatus=deployment, **({"jobStatus": job} if job else {}))
        # the next state only once the client has seen this one
        poll(lambda: any((s.deployment, s.job) == (deployment, job) for s in seen),
             f"the client to see {deployment}/{job}", 30, interval_s=0.05)
    thread.join(30)
    assert "error" not in box, box.get("error")
    outcome = box["value"]
    assert [(s.deployment, s.job) for s in outcome.history if s.deployment] == [
        ("Initializing", ""), ("Running", "PENDING"), ("Running", "RUNNING"),
        ("Complete", "SUCCEEDED")]
    assert outcome.status.succeeded and outcome.deleted
    assert worker.find_rayjob(rendered.name) is None  # cluster.cleanup=on_success
    assert "rayjob" in seen[-1].line() and "Complete" in seen[-1].line()


def test_a_failed_job_says_why_and_is_kept_for_inspection(worker, operator):
    cfg = _cfg(_unique("failed"))
    rendered = render_job(cfg)
    seen = []
    thread, box = _run_in_thread(lambda: jobs.run_job(cfg, worker, rendered, on_status=seen.append))
    operator(rendered.name, jobDeploymentStatus="Running", jobStatus="RUNNING")
    poll(lambda: any(s.deployment == "Running" for s in seen), "the client to see Running", 30,
         interval_s=0.05)
    operator(rendered.name, jobDeploymentStatus="Failed", jobStatus="FAILED", reason="AppFailed",
             message="Job entrypoint command failed with exit code 2")
    thread.join(30)
    error = box.get("error")
    assert isinstance(error, jobs.JobFailedError), box
    text = str(error)
    assert "ended Failed" in text and "AppFailed" in text and "exit code 2" in text
    assert "kept for inspection" in text and "submitter log" in text.lower()
    assert worker.find_rayjob(rendered.name) is not None  # on_success keeps failures
    worker.delete_rayjob(rendered.name)


def test_cleanup_always_deletes_a_failed_job_too(worker, operator):
    cfg = _cfg(_unique("always"), "cluster.cleanup=always")
    rendered = render_job(cfg)
    thread, box = _run_in_thread(lambda: jobs.run_job(cfg, worker, rendered))
    operator(rendered.name, jobDeploymentStatus="ValidationFailed", reason="ValidationFailed",
             message="spec.rayClusterSpec is required")
    thread.join(30)
    assert isinstance(box.get("error"), jobs.JobFailedError)
    assert "deleted" in str(box["error"]) and worker.find_rayjob(rendered.name) is None


def test_following_times_out_with_how_to_keep_following(worker):
    cfg = _cfg(_unique("slow"), "cluster.timeout_s=0.5")
    rendered = render_job(cfg)
    jobs.submit(worker, rendered)
    with pytest.raises(jobs.FollowTimeout, match=f"kubectl get rayjob {rendered.name} -n vatt -w"):
        jobs.follow(worker, rendered.name, cfg.cluster.timeout_s, cfg.cluster.poll_s)
    worker.delete_rayjob(rendered.name)


def test_409_says_the_job_exists_and_how_to_resume_or_rename(worker):
    rendered = render_job(_cfg(_unique("twice")))
    jobs.submit(worker, rendered)
    with pytest.raises(JobExistsError) as caught:
        jobs.submit(worker, rendered)
    text = str(caught.value)
    assert "already exists" in text and f"kubectl delete rayjob {rendered.name}" in text
    assert "train.run_name" in text
    worker.delete_rayjob(rendered.name)


def test_a_retried_flow_attaches_to_its_running_job_or_recreates_a_failed_one(worker, operator):
    rendered = render_job(_cfg(_unique("attach")))
    created = jobs.submit(worker, rendered)
    operator(rendered.name, jobDeploymentStatus="Running", jobStatus="RUNNING")
    again = jobs.submit(worker, rendered, attach=True)
    assert again["metadata"]["uid"] == created["metadata"]["uid"]  # followed, not re-created
    operator(rendered.name, jobDeploymentStatus="Failed", jobStatus="FAILED", reason="AppFailed")
    fresh = jobs.submit(worker, rendered, attach=True)
    assert fresh["metadata"]["uid"] != created["metadata"]["uid"]  # re-created: resumes the run
    worker.delete_rayjob(rendered.name)


def test_403_names_the_verb_and_resource_the_identity_lacks(kube_api, rbac):
    noperm = KubeClient(kube_api.api_client(kube_api.tokens[NOPERM]), NAMESPACE, attempts=1)
    rendered = render_job(_cfg(_unique("denied")))
    with pytest.raises(PermissionDeniedError) as caught:
        jobs.submit(noperm, rendered)
    text = str(caught.value)
    assert "lacks the 'create' verb on 'rayjobs.ray.io' in namespace vatt" in text
    assert "k8s/rbac" in text


def test_422_names_the_field_the_server_rejected(worker):
    rendered = render_job(_cfg(_unique("invalid")))
    body = rendered.rayjob
    body["spec"]["backoffLimit"] = "three"
    with pytest.raises(InvalidObjectError, match=r"spec\.backoffLimit"):
        worker.create_rayjob(body)


def test_connection_refused_is_retried_with_backoff_then_reported(kube_api):
    from kubernetes import client

    api = kube_api.api_client()
    api.configuration.host = "https://127.0.0.1:9"  # nothing listens there
    api.configuration.retries = False
    pauses = []
    unreachable = KubeClient(client.ApiClient(api.configuration), NAMESPACE, attempts=4,
                             sleep=pauses.append)
    with pytest.raises(TransientClusterError, match="after 4 tries"):
        unreachable.get_rayjob("anything")
    assert len(pauses) == 3 and pauses[0] < pauses[1] < pauses[2]  # exponential


class _Overloaded(http.server.BaseHTTPRequestHandler):
    """An HTTP server that answers 503 (with Retry-After) twice, then 404: a stand-in for an
    overloaded API server, which the real one here cannot be made to be."""

    answers = [503, 429]

    def do_GET(self):  # noqa: N802 - http.server's name
        status = self.answers.pop(0) if self.answers else 404
        body = b'{"kind":"Status","message":"busy"}' if status != 404 else (
            b'{"kind":"Status","message":"rayjobs.ray.io \\"x\\" not found","reason":"NotFound"}')
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Retry-After", "0.25")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_429_and_5xx_are_retried_honouring_retry_after():
    from kubernetes import client

    server = http.server.HTTPServer(("127.0.0.1", 0), _Overloaded)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    configuration = client.Configuration()
    configuration.host = f"http://127.0.0.1:{server.server_port}"
    configuration.retries = False
    pauses = []
    busy = KubeClient(client.ApiClient(configuration), NAMESPACE, attempts=5, sleep=pauses.append)
    assert busy.find_rayjob("x") is None  # 503, 429, then a real answer: not found
    assert len(pauses) == 2 and all(0.25 <= pause <= 0.25 * 1.25 for pause in pauses)
    server.shutdown()


# ---------------------------------------------------------------------------------------------
# RBAC: what the worker may do, exactly


def _allowed(kube_api, token: str, verb: str, resource: str, group: str = "",
             subresource: str = "", namespace: str = NAMESPACE) -> bool:
    from kubernetes import client

    review = client.AuthorizationV1Api(kube_api.api_client(token)).create_self_subject_access_review(
        {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
         "spec": {"resourceAttributes": {"namespace": namespace, "verb": verb, "group": group,
                                         "resource": resource, "subresource": subresource}}})
    return review.status.allowed


# What each account's code calls (verb, resource, group, subresource), asked of the server:
# prefect-kubernetes' worker and observer; vatt.cluster.client.KubeClient; Ray pods nothing.
NEEDED = {
    PREFECT_WORKER: [(verb, "jobs", "batch", "") for verb in ("create", "get", "list", "watch",
                                                              "delete")]
    + [("list", "pods", "", ""), ("watch", "pods", "", ""), ("get", "pods", "", "log")],
    WORKER: [(verb, "rayjobs", "ray.io", "") for verb in ("create", "get", "delete")]
    + [("list", "pods", "", ""), ("get", "pods", "", "log"), ("list", "events", "", "")],
    RAY: [],
}
DENIED_TO_ALL = [
    ("get", "secrets", "", ""), ("list", "secrets", "", ""), ("create", "pods", "", ""),
    ("delete", "pods", "", ""), ("create", "pods", "", "exec"), ("create", "pods", "", "attach"),
    ("create", "serviceaccounts", "", "token"), ("create", "roles", "rbac.authorization.k8s.io", ""),
    ("create", "rolebindings", "rbac.authorization.k8s.io", ""), ("create", "configmaps", "", ""),
    ("patch", "rayjobs", "ray.io", "status"), ("update", "rayjobs", "ray.io", ""),
    ("create", "rayclusters", "ray.io", ""), ("delete", "rayclusters", "ray.io", ""),
    ("delete", "namespaces", "", ""), ("create", "customresourcedefinitions", "apiextensions.k8s.io", ""),
]
DENIED = {
    PREFECT_WORKER: DENIED_TO_ALL + [("create", "rayjobs", "ray.io", ""), ("get", "rayjobs", "ray.io", "")],
    WORKER: DENIED_TO_ALL + [("create", "jobs", "batch", ""), ("watch", "pods", "", ""),
                             ("get", "pods", "", "")],
    RAY: DENIED_TO_ALL + [("list", "pods", "", ""), ("get", "rayjobs", "ray.io", ""),
                          ("list", "events", "", "")],
}
ACCOUNTS = {PREFECT_WORKER: "prefect-worker", WORKER: "flow-run", RAY: "ray"}


@pytest.mark.parametrize("account", ACCOUNTS, ids=ACCOUNTS.values())
def test_rbac_grants_each_account_what_its_code_calls_and_nothing_more(kube_api, rbac, account):
    token = kube_api.tokens[account]
    for verb, resource, group, sub in NEEDED[account]:
        assert _allowed(kube_api, token, verb, resource, group, sub), (verb, resource, sub)
        # and only in its own namespace
        assert not _allowed(kube_api, token, verb, resource, group, sub, namespace="default")
    for verb, resource, group, sub in DENIED[account]:
        assert not _allowed(kube_api, token, verb, resource, group, sub), (verb, resource, sub)
    kinds = {doc["kind"] for doc in rbac}
    assert not kinds & {"ClusterRole", "ClusterRoleBinding"}


def test_the_server_refuses_each_account_what_its_role_leaves_out(kube_api, rbac):
    """Real requests, not reviews: reading a Secret, creating a Pod directly, a flow run making
    a Job or a RayCluster (each takes a pod template that could mount any Secret), the worker
    making a RayJob, anything in another namespace, and a Ray pod's account asking anything."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    pod = {"metadata": {"name": _unique("direct")},
           "spec": {"containers": [{"name": "c", "image": "vatt"}]}}
    job = {"metadata": {"name": _unique("job")},
           "spec": {"template": {"spec": {**pod["spec"], "restartPolicy": "Never"}}}}
    cluster = {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": _unique("rc")},
               "spec": {"headGroupSpec": {"rayStartParams": {}, "template": pod}}}
    rayjob = render_job(_cfg(_unique("not-yours"))).rayjob

    def refused(account: str, call, *args) -> None:
        api_client = kube_api.api_client(kube_api.tokens[account])
        with pytest.raises(ApiException) as caught:
            call(api_client)(*args)
        assert caught.value.status == 403, (account, caught.value.body)
        assert account in caught.value.body  # the server knew who asked

    core, batch = client.CoreV1Api, client.BatchV1Api
    custom = client.CustomObjectsApi
    for account in ACCOUNTS:
        refused(account, lambda c: core(c).read_namespaced_secret, "vatt-object-store", NAMESPACE)
        refused(account, lambda c: core(c).list_namespaced_secret, NAMESPACE)
        refused(account, lambda c: core(c).create_namespaced_pod, NAMESPACE, pod)
        refused(account, lambda c: core(c).list_namespaced_pod, "default")
        refused(account, lambda c: custom(c).create_namespaced_custom_object, "ray.io", "v1",
                NAMESPACE, "rayclusters", cluster)
    refused(WORKER, lambda c: batch(c).create_namespaced_job, NAMESPACE, job)
    refused(WORKER, lambda c: custom(c).create_namespaced_custom_object, "ray.io", "v1",
            "default", "rayjobs", rayjob)
    refused(PREFECT_WORKER, lambda c: custom(c).create_namespaced_custom_object, "ray.io", "v1",
            NAMESPACE, "rayjobs", rayjob)
    refused(RAY, lambda c: custom(c).get_namespaced_custom_object, "ray.io", "v1", NAMESPACE,
            "rayjobs", "anything")
    refused(RAY, lambda c: core(c).list_namespaced_pod, NAMESPACE)


def test_vatt_submit_waits_for_the_job_and_exits_by_its_outcome(kube_api, rbac, operator,
                                                               s3_server, tmp_path):
    """The CLI end to end with the worker's kubeconfig: publish the local data folder's version
    (data.versions_uri), create the RayJob reading it, follow, Complete, exit 0."""
    from vatt.data.publish import content_version

    kubeconfig = kube_api.kubeconfig(tmp_path / "kubeconfig", token=kube_api.tokens[WORKER])
    run = _unique("cli")
    data = tiny_data_folder(tmp_path / "data")
    versions = f"s3://{s3_server.bucket}/datasets-{run}"
    command = [*vatt_command(), "submit", "--target", "gpu", "--wait", f"train.run_name={run}",
               f"cluster.manifests={REPO_ROOT / 'k8s'}", "cluster.poll_s=0.2",
               "train.storage_path=s3://vatt-data/runs", f"data.versions_uri={versions}"]
    env = {**__import__("os").environ, **s3_server.env, "KUBECONFIG": str(kubeconfig)}
    process = subprocess.Popen(command, cwd=tmp_path, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)
    reader.start()
    poll(lambda: _exists(kube_api, job_name(run)), "vatt submit to create the RayJob", 120, process)
    # the job reads exactly the version published for it
    version_uri = f"{versions}/{content_version(data)}"
    rayjob = yaml.safe_load(kube_api.kubectl("get", "rayjob", job_name(run), "-o", "yaml").stdout)
    shipped = yaml.safe_load(yaml.safe_load(rayjob["spec"]["runtimeEnvYAML"])["env_vars"][JOB_CONFIG_ENV])
    assert shipped["data"]["path"] == version_uri
    operator(job_name(run), jobDeploymentStatus="Running", jobStatus="RUNNING")
    poll(lambda: any(": Running (ray job RUNNING)" in line for line in lines),
         "vatt submit to say the job runs", 120, process)
    operator(job_name(run), jobDeploymentStatus="Complete", jobStatus="SUCCEEDED")
    process.wait(timeout=120)
    reader.join(30)
    output = "".join(lines)
    assert process.returncode == 0, output
    assert f"rayjob {job_name(run)}: Running (ray job RUNNING)" in output
    assert f"rayjob {job_name(run)}: Complete" in output
    assert f"run folder: s3://vatt-data/runs/{run}" in output
    assert f"data version {content_version(data)}: {version_uri}" in output


# ---------------------------------------------------------------------------------------------
# Faults: permanent ones are named at once; a create that may have succeeded is idempotent


def test_an_untrusted_certificate_is_named_at_once_not_retried(kube_api, tmp_path, monkeypatch):
    """A kubeconfig whose certificate-authority did not sign the server's certificate: one try,
    an error naming the cause and the CA file, no backoff."""
    from vatt.cluster.client import PermanentClusterError, api_client_from_kubeconfig

    wrong_ca = tmp_path / "other-ca.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=some-other-ca", "-keyout", str(tmp_path / "other-ca.key"),
                    "-out", str(wrong_ca)], check=True, capture_output=True)
    kubeconfig = kube_api.kubeconfig(tmp_path / "kubeconfig")
    config = json.loads(kubeconfig.read_text())
    config["clusters"][0]["cluster"]["certificate-authority"] = str(wrong_ca)
    kubeconfig.write_text(json.dumps(config))
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    pauses: list[float] = []
    untrusting = KubeClient(api_client_from_kubeconfig(), NAMESPACE, attempts=5,
                            sleep=pauses.append)
    tries = []
    get = untrusting.custom.get_namespaced_custom_object
    untrusting.custom.get_namespaced_custom_object = lambda *a, **k: tries.append(1) or get(*a, **k)
    with pytest.raises(PermanentClusterError) as caught:
        untrusting.get_rayjob("anything")
    text = str(caught.value)
    assert "certificate is not trusted by the kubeconfig's certificate-authority" in text
    assert str(wrong_ca) in text and "CERTIFICATE_VERIFY_FAILED" in text
    assert len(tries) == 1 and pauses == []


def test_refused_credentials_are_named_at_once_not_retried(kube_api):
    from vatt.cluster.client import PermanentClusterError

    pauses: list[float] = []
    stranger = KubeClient(kube_api.api_client("not-a-token"), NAMESPACE, attempts=5,
                          sleep=pauses.append)
    with pytest.raises(PermanentClusterError, match="did not accept the credentials.*401"):
        stranger.get_rayjob("anything")
    assert pauses == []


class _LostAnswer(http.server.BaseHTTPRequestHandler):
    """A proxy in front of the real API server whose first POST loses its answer: forwarded (the
    object is created) or dropped (it is not), the client gets 504 either way, as from a load
    balancer that timed out. Everything else is forwarded as is."""

    upstream: str = ""
    ca_file: str = ""
    forward_first_post = True
    posts: list = []

    def _forward(self, body: bytes | None) -> tuple[int, bytes]:
        import urllib3

        pool = urllib3.PoolManager(cert_reqs="CERT_REQUIRED", ca_certs=self.ca_file, retries=False)
        headers = {key: value for key, value in self.headers.items()
                   if key.lower() in ("authorization", "content-type", "accept")}
        answer = pool.request(self.command, self.upstream + self.path, body=body, headers=headers)
        return answer.status, answer.data

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802 - http.server's name
        self._answer(*self._forward(None))

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.posts.append(json.loads(body))
        if len(self.posts) == 1:
            if self.forward_first_post:
                self._forward(body)
            self._answer(504, b'{"kind":"Status","message":"gateway timeout"}')
            return
        self._answer(*self._forward(body))

    def log_message(self, *args):
        pass


def _behind_lost_answer(kube_api, token: str, forward_first_post: bool):
    from kubernetes import client

    handler = type("Handler", (_LostAnswer,), {
        "upstream": kube_api.url, "ca_file": str(kube_api.ca_file),
        "forward_first_post": forward_first_post, "posts": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    configuration = kube_api.api_client(token).configuration
    configuration.host = f"http://127.0.0.1:{server.server_port}"
    configuration.retries = False
    return server, handler, KubeClient(client.ApiClient(configuration), NAMESPACE, attempts=3,
                                       sleep=lambda _: None)


def test_a_create_whose_answer_was_lost_returns_its_own_rayjob(kube_api, rbac):
    from vatt.cluster.client import CREATE_TOKEN_LABEL

    server, handler, worker = _behind_lost_answer(kube_api, kube_api.tokens[WORKER], True)
    rendered = render_job(_cfg(_unique("lost")))
    created = worker.create_rayjob(rendered.rayjob)  # 504, then the real 409: its own object
    assert len(handler.posts) == 2
    token = handler.posts[0]["metadata"]["labels"][CREATE_TOKEN_LABEL]
    assert handler.posts[1]["metadata"]["labels"][CREATE_TOKEN_LABEL] == token
    assert created["metadata"]["labels"][CREATE_TOKEN_LABEL] == token
    assert CREATE_TOKEN_LABEL not in rendered.rayjob["metadata"]["labels"]  # body untouched
    KubeClient(kube_api.api_client(), NAMESPACE).delete_rayjob(rendered.name)
    server.shutdown()


def test_a_lost_create_meeting_someone_elses_rayjob_still_says_it_exists(kube_api, rbac):
    rendered = render_job(_cfg(_unique("theirs")))
    admin = KubeClient(kube_api.api_client(), NAMESPACE)
    admin.create_rayjob(rendered.rayjob)  # someone else's, of the same name
    server, handler, worker = _behind_lost_answer(kube_api, kube_api.tokens[WORKER], False)
    with pytest.raises(JobExistsError, match="already exists"):
        worker.create_rayjob(rendered.rayjob)  # 504 (dropped), then the real 409
    assert len(handler.posts) == 2
    admin.delete_rayjob(rendered.name)
    server.shutdown()


# ---------------------------------------------------------------------------------------------
# Following: why a job waits, and how long to follow it


class _Enough(Exception):
    """Raised from an on_status callback: the test has seen what it waited for."""


def test_a_job_no_operator_acts_on_says_so_once(worker, caplog):
    """No KubeRay operator here: after cluster.operator_wait_s with no status at all, the progress
    line says so and how to check, and the reason is logged once, not at every poll."""
    cfg = _cfg(_unique("nooperator"), "cluster.operator_wait_s=1")
    rendered = render_job(cfg)
    jobs.submit(worker, rendered)
    said: list[jobs.JobStatus] = []

    def three_polls_saying_why(status: jobs.JobStatus) -> None:
        if status.waiting:
            said.append(status)
        if len(said) == 3:
            raise _Enough

    caplog.set_level("INFO", logger="vatt.cluster")
    with pytest.raises(_Enough):
        jobs.follow(worker, rendered.name, cfg.cluster.timeout_s, cfg.cluster.poll_s,
                    three_polls_saying_why, operator_wait_s=cfg.cluster.operator_wait_s)
    line = said[-1].line()
    assert f"rayjob {rendered.name}: waiting for the operator" in line
    assert "no operator is acting on RayJobs" in line and "kubectl get deploy -A | grep kuberay" in line
    assert sum("no operator is acting" in record.getMessage() for record in caplog.records) == 1
    worker.delete_rayjob(rendered.name)


def test_following_stops_at_the_rayjobs_own_deadline(worker, monkeypatch):
    """cluster.timeout_s (7 days by default) yields to the RayJob's activeDeadlineSeconds plus
    the start-up margin, and the timeout says which deadline it was."""
    rendered = render_job(_cfg(_unique("deadline")))
    active = rendered.rayjob["spec"]["activeDeadlineSeconds"]
    default_timeout = load_config("tiny").cluster.timeout_s
    assert jobs.follow_deadline(default_timeout, rendered.rayjob)[0] == active + jobs.START_MARGIN_S
    assert jobs.follow_deadline(60.0, rendered.rayjob) == (60.0, "cluster.timeout_s")
    rendered.rayjob["spec"]["activeDeadlineSeconds"] = 1
    monkeypatch.setattr(jobs, "START_MARGIN_S", 1.0)  # a short margin, for the test's sake
    jobs.submit(worker, rendered)
    with pytest.raises(jobs.FollowTimeout) as caught:
        jobs.follow(worker, rendered.name, 120.0, 0.2)
    assert "spec.activeDeadlineSeconds=1 plus 1 s for start-up" in str(caught.value)
    assert f"kubectl get rayjob {rendered.name} -n vatt -w" in str(caught.value)
    worker.delete_rayjob(rendered.name)


def test_ctrl_c_stops_following_not_the_job(kube_api, rbac, s3_server, tmp_path):
    """SIGINT to `vatt submit --wait` while it follows: exit 130, the kubectl commands to follow
    or cancel the job, and the RayJob still there."""
    import os
    import signal

    kubeconfig = kube_api.kubeconfig(tmp_path / "kubeconfig", token=kube_api.tokens[WORKER])
    run = _unique("sigint")
    tiny_data_folder(tmp_path / "data")
    command = [*vatt_command(), "submit", "--target", "gpu", "--wait", f"train.run_name={run}",
               f"cluster.manifests={REPO_ROOT / 'k8s'}", "cluster.poll_s=0.2",
               "train.storage_path=s3://vatt-data/runs",
               f"data.versions_uri=s3://{s3_server.bucket}/datasets-{run}"]
    env = {**os.environ, **s3_server.env, "KUBECONFIG": str(kubeconfig)}

    def as_a_shell_starts_it() -> None:
        # a shell starts a foreground command with Ctrl-C's default disposition; this test
        # process may not have it (a library it loaded may ignore or block SIGINT, and a child
        # inherits both: Python then never raises KeyboardInterrupt)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])

    process = subprocess.Popen(command, cwd=tmp_path, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               preexec_fn=as_a_shell_starts_it)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)
    reader.start()
    name = job_name(run)
    poll(lambda: any(f"rayjob {name}: waiting for the operator" in line for line in lines),
         "vatt submit to follow the RayJob", 120, process)
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        reader.join(10)
        pytest.fail("vatt submit still ran 60 s after Ctrl-C:\n" + "".join(lines))
    reader.join(30)
    output = "".join(lines)
    assert process.returncode == 130, output
    assert f"stopped following; rayjob {name} in namespace vatt keeps running" in output
    assert f"`kubectl get rayjob {name} -n vatt -w`" in output
    assert f"`kubectl delete rayjob {name} -n vatt`" in output
    assert "Traceback" not in output
    assert _exists(kube_api, name)  # the job was not stopped
    kube_api.kubectl("delete", "rayjob", name)


# what a kubelet reports of a pod (its status subresource), played here: the session's API
# server has no nodes (the cluster in a box, test_cluster_pods.py, has real ones)
_POD_STATES = {
    "image-pull": ({"containerStatuses": [{
        "name": "ray-worker", "image": "vatt-gpu:missing", "imageID": "", "ready": False,
        "restartCount": 0, "state": {"waiting": {
            "reason": "ImagePullBackOff",
            "message": 'Back-off pulling image "vatt-gpu:missing"'}}}]},
        "cannot pull image vatt-gpu:missing: ImagePullBackOff: Back-off pulling image"),
    "oom": ({"containerStatuses": [{
        "name": "ray-worker", "image": "vatt-gpu", "imageID": "", "ready": True,
        "restartCount": 2, "state": {"running": {"startedAt": "2026-12-06T10:00:00Z"}},
        "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled",
                                     "startedAt": "2026-12-06T09:00:00Z",
                                     "finishedAt": "2026-12-06T09:59:00Z"}}}]},
        "container ray-worker was OOM-killed (memory limit 2Gi; 2 restarts)"),
    "unschedulable": ({"conditions": [{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "message": "0/3 nodes are available: 3 node(s) had taint {nvidia.com/gpu: present}, "
                   "that the pod didn't tolerate."}]},
        "cannot be scheduled: 0/3 nodes are available: 3 node(s) had taint {nvidia.com/gpu"),
}


@pytest.fixture
def no_events(kube_api, rbac):
    """A client whose identity may follow a RayJob and read pods, but not list events."""
    grant = [("create", "role", "follow-without-events", "--verb=get,list",
              "--resource=rayjobs.ray.io,pods,pods/log"),
             ("create", "rolebinding", "follow-without-events", "--role=follow-without-events",
              f"--serviceaccount={NAMESPACE}:vatt-noperm")]
    for args in grant:
        kube_api.kubectl(*args, "-n", NAMESPACE)
    yield KubeClient(kube_api.api_client(kube_api.tokens[NOPERM]), NAMESPACE, attempts=1)
    for kind in ("rolebinding", "role"):
        kube_api.kubectl("delete", kind, "follow-without-events", "-n", NAMESPACE)


@pytest.mark.parametrize("state", sorted(_POD_STATES))
def test_the_progress_line_says_what_the_pods_report(kube_api, worker, no_events, operator,
                                                     state, caplog):
    """Image pull errors and OOM kills from the containers' states, the scheduler's condition;
    an identity that may not list events still follows, said once."""
    from kubernetes import client

    status_patch, wanted = _POD_STATES[state]
    rendered = render_job(_cfg(_unique(state)))
    jobs.submit(worker, rendered)
    cluster = f"{rendered.name}-abcde"
    pod = f"{cluster}-workers-worker-0"
    core = client.CoreV1Api(kube_api.api_client())
    core.create_namespaced_pod(NAMESPACE, {
        "metadata": {"name": pod, "labels": {"ray.io/cluster": cluster}},
        "spec": {"containers": [{"name": "ray-worker", "image": "vatt-gpu", "resources": {
            "limits": {"memory": "2Gi"}}}]}})
    core.patch_namespaced_pod_status(pod, NAMESPACE, {"status": status_patch})
    operator(rendered.name, jobDeploymentStatus="Initializing", rayClusterName=cluster)
    follower = no_events if state == "unschedulable" else worker
    seen: list[jobs.JobStatus] = []

    def until_said(status: jobs.JobStatus) -> None:
        seen.append(status)
        if len([s for s in seen if wanted in s.waiting]) == 2:
            raise _Enough

    caplog.set_level("INFO", logger="vatt.cluster")
    with pytest.raises(_Enough):
        jobs.follow(follower, rendered.name, 60.0, 0.2, until_said)
    assert seen[-1].waiting.startswith(f"pod {pod}")
    if follower is no_events:
        unreadable = [r for r in caplog.records if "cannot read the job's events" in r.getMessage()]
        assert len(unreadable) == 1 and "lacks the 'list' verb on 'events'" in unreadable[0].getMessage()
    core.delete_namespaced_pod(pod, NAMESPACE, grace_period_seconds=0)
    worker.delete_rayjob(rendered.name)


def test_a_server_address_without_a_host_is_named_at_once_not_retried():
    """A configuration fault (the kubeconfig's `server:` names no host): no try can mend it."""
    from kubernetes import client

    from vatt.cluster.client import PermanentClusterError

    configuration = client.Configuration()
    configuration.host = "https://"
    configuration.retries = False
    pauses: list[float] = []
    misconfigured = KubeClient(client.ApiClient(configuration), NAMESPACE, attempts=5,
                               sleep=pauses.append)
    with pytest.raises(PermanentClusterError,
                       match=r"server address is not usable: No host specified\. Fix"):
        misconfigured.get_rayjob("anything")
    assert pauses == []


def test_a_driver_in_a_kuberay_pod_reads_the_clusters_maximum_from_its_raycluster(kube_api,
                                                                                tmp_path):
    """Ray 2.60's autoscaler does not report its cluster config to the GCS, so a sweep's driver
    on the head of k8s/raycluster's RayCluster (whose workers scale from zero) would see only the
    head. In a KubeRay pod (KubeRay sets RAY_CLUSTER_NAME and RAY_CLUSTER_NAMESPACE in every Ray
    container) the preflight reads the RayCluster as the autoscaler does (Ray's own
    AutoscalingConfigProducer, with the pod's service-account token: the head runs as the
    account KubeRay gives its autoscaler, which may get its RayCluster): here against the real
    API server, the token and CA where a pod has them played by files and the API server's
    address by the variables the kubelet sets."""
    import urllib.parse

    rendered = subprocess.run(["kubectl", "kustomize", str(REPO_ROOT / "k8s" / "raycluster")],
                              text=True, capture_output=True, check=True).stdout
    [cluster] = [doc for doc in yaml.safe_load_all(rendered) if doc]
    name = _unique("sweep")
    cluster["metadata"]["name"] = name
    kube_api.kubectl("create", "--validate=false", "-f", "-", input=json.dumps(cluster))
    token = tmp_path / "token"
    token.write_text(kube_api.admin_token)
    server = urllib.parse.urlsplit(kube_api.url)
    script = f"""
import json
from ray.autoscaler._private.kuberay import node_provider
node_provider.IN_CLUSTER_TOKEN_PATH = {str(token)!r}
node_provider.IN_CLUSTER_CA_CERT_PATH = {str(kube_api.ca_file)!r}
from vatt.train.preflight import kuberay_node_groups_max
print(json.dumps([kuberay_node_groups_max({{"RAY_CLUSTER_NAME": {name!r},
                                            "RAY_CLUSTER_NAMESPACE": {NAMESPACE!r}}}),
                  kuberay_node_groups_max({{}})]))
"""
    env = {**os.environ, "KUBERNETES_SERVICE_HOST": server.hostname,
           "KUBERNETES_SERVICE_PORT_HTTPS": str(server.port)}
    try:
        done = subprocess.run([sys.executable, "-c", script], text=True, capture_output=True,
                              env=env, timeout=120)
        assert done.returncode == 0, done.stderr[-3000:]
        in_kuberay, elsewhere = json.loads(done.stdout.strip().splitlines()[-1])
        # the worker group at maxReplicas (4 pods of 8 CPUs and 32 GiB), the head left out
        assert in_kuberay["CPU"] == 4 * 8 and in_kuberay["memory"] == 4 * 32 * 2**30
        assert elsewhere is None  # not in a KubeRay pod: nothing to read
        # a pod without a token (the Ray pods of a RayJob: vatt-ray) reads nothing, quietly
        no_token = script.replace(repr(str(token)), repr(str(tmp_path / "absent")))
        done = subprocess.run([sys.executable, "-c", no_token], text=True,
                              capture_output=True, env=env, timeout=120)
        assert done.returncode == 0, done.stderr[-3000:]
        assert json.loads(done.stdout.strip().splitlines()[-1]) == [None, None]
    finally:
        kube_api.kubectl("delete", "raycluster", name, "--ignore-not-found")
