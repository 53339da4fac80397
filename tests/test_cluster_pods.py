"""`jobs.follow` says why a RayJob waits, read from its pods and their events in a cluster in a
box (tests/kube_box.py): the real kube-scheduler places (or cannot place) the pods on a GKE GPU
node with 2 GPUs and a CPU node, and the stand-in kubelet runs them as processes and reports
their containers' states and logs.

The test plays the KubeRay operator's first steps: it creates the RayCluster's pods with the
label `ray.io/cluster` (from the RayJob's worker template, or a container that crashes) and sets
`status.rayClusterName`, as KubeRay does while a job is Initializing.
"""

from __future__ import annotations

import copy
import json
import uuid

import pytest

from conftest import REPO_ROOT
from vatt.cluster import jobs
from vatt.cluster.client import KubeClient
from vatt.cluster.render import render_job
from vatt.config import load_config

pytestmark = pytest.mark.slow  # the cluster in a box
NAMESPACE = "vatt"


class _Enough(Exception):
    """Raised from an on_status callback: the test has seen what it waited for."""


@pytest.fixture
def admin(kube_box) -> KubeClient:
    return KubeClient(kube_box.api.api_client(), NAMESPACE)


@pytest.fixture
def played(kube_box, admin):
    """A RayJob of the gpu overlay and, as KubeRay's part, a RayCluster name in its status and
    pods created under that name; everything removed after the test."""
    from kubernetes import client

    core = client.CoreV1Api(kube_box.api.api_client())
    custom = client.CustomObjectsApi(kube_box.api.api_client())
    made: list[str] = []
    run = f"why-{uuid.uuid4().hex[:6]}"
    cfg = load_config("tiny", [f"train.run_name={run}", f"cluster.manifests={REPO_ROOT / 'k8s'}",
                               "cluster.accelerator=gpu", "cluster.poll_s=0.2",
                               "train.storage_path=s3://vatt-data/runs",
                               "data.path=s3://vatt-data/data"])
    rendered = render_job(cfg)
    cluster = f"{rendered.name}-abcde"

    class Played:
        name = rendered.name
        rayjob = rendered.rayjob

        @staticmethod
        def create_rayjob(rayjob) -> None:
            admin.create_rayjob(rayjob)
            custom.patch_namespaced_custom_object_status(
                "ray.io", "v1", NAMESPACE, "rayjobs", rendered.name,
                {"status": {"jobDeploymentStatus": "Initializing", "rayClusterName": cluster}})

        @staticmethod
        def create_pod(suffix: str, spec: dict) -> str:
            name = f"{cluster}-{suffix}"
            kube_box.api.kubectl("create", "-n", NAMESPACE, "-f", "-", input=json.dumps({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "labels": {"ray.io/cluster": cluster,
                                                      "ray.io/node-type": "worker"}},
                "spec": {"restartPolicy": "Always", **spec}}))
            made.append(name)
            return name

    yield Played
    for name in made:
        core.delete_namespaced_pod(name, NAMESPACE, grace_period_seconds=0)
    admin.delete_rayjob(rendered.name)
    kube_box.poll(lambda: not any(core.list_namespaced_pod(
        NAMESPACE, label_selector=f"ray.io/cluster={cluster}").items),
        "the test's pods to be gone", 60)


def _follow_until(admin: KubeClient, name: str, wanted: str) -> jobs.JobStatus:
    """Follows RayJob `name` until its progress line carries `wanted`; that status."""
    seen: list[jobs.JobStatus] = []

    def until_wanted(status: jobs.JobStatus) -> None:
        seen.append(status)
        if wanted in status.waiting:
            raise _Enough

    try:
        jobs.follow(admin, name, 120.0, 0.2, until_wanted)
    except _Enough:
        return seen[-1]
    raise AssertionError(f"following {name} ended without {wanted!r}: {seen[-1:]}")


def test_a_worker_asking_more_gpus_than_any_node_has_is_unschedulable(kube_box, admin, played):
    """Worker pods of the gpu overlay asking for 4 GPUs where the GPU node has 2: the progress
    line carries the scheduler's own FailedScheduling message."""
    rayjob = copy.deepcopy(played.rayjob)
    worker = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    resources = worker["template"]["spec"]["containers"][0]["resources"]
    resources["requests"]["nvidia.com/gpu"] = resources["limits"]["nvidia.com/gpu"] = 4
    played.create_rayjob(rayjob)
    pod = played.create_pod("workers-worker-0", worker["template"]["spec"])
    status = _follow_until(admin, played.name, "Insufficient nvidia.com/gpu")
    assert status.waiting.startswith(f"pod {pod} cannot be scheduled: 0/2 nodes are available")
    assert f"rayjob {played.name}: Initializing" in status.line()
    assert "Insufficient nvidia.com/gpu" in status.line()


def test_a_crashing_container_is_reported_with_its_last_log_lines(kube_box, admin, played):
    played.create_rayjob(played.rayjob)
    pod = played.create_pod("workers-worker-0", {"containers": [{
        "name": "ray-worker", "image": "vatt",
        "command": ["python", "-c", "print('reading the shards'); "
                                    "raise SystemExit('bad shard: clip 17 has no frames')"]}]})
    status = _follow_until(admin, played.name, "bad shard")
    assert status.waiting.startswith(f"pod {pod}: container ray-worker exited 1 Error and is "
                                     "restarted")
    assert "its log ends: reading the shards | bad shard: clip 17 has no frames" in status.waiting


def test_a_command_that_cannot_start_is_reported(kube_box, admin, played):
    played.create_rayjob(played.rayjob)
    pod = played.create_pod("workers-worker-0", {"containers": [{
        "name": "ray-worker", "image": "vatt", "command": ["no-such-command-in-the-image"]}]})
    status = _follow_until(admin, played.name, "cannot start")
    assert status.waiting.startswith(f"pod {pod}: container ray-worker cannot start")
    assert "StartError" in status.waiting and "no-such-command-in-the-image" in status.waiting
