"""The cluster in a box (tests/kube_box.py, fixture `kube_box`) schedules and runs pods as a GKE
cluster with a GPU node pool would.

Real: kube-apiserver 1.20 with etcd, and the kube-controller-manager (Job controller, garbage
collector, service-account token controller) and kube-scheduler of that release: they create
a Job's pods, bind pods to nodes by resources, node selectors and taints, and record why a pod
cannot be placed. Played: the nodes. Their Node objects carry GKE's labels, capacity and GPU
taint; the stand-in kubelet reports them Ready and runs each pod bound to them as a process
group of this machine, from the image's Python (the project's wheel, `box_venv`) in a copy of
the image's WORKDIR (`box_image`), with the environment the kubelet would resolve, and reports
the pod's status, serves its logs and finishes its deletion as the kubelet does.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from conftest import REPO_ROOT, poll
from kube_box import (GKE_ACCELERATOR_LABEL, GPU_RESOURCE, H100_80GB, BoxVenv, Image, KubeBox,
                      build_image_folder, expand)

NAMESPACE = "vatt"
SCHEDULE_S = 60.0  # the scheduler and the kubelet's resync on 2 busy cores: seconds at most
GPU_SELECTOR = {GKE_ACCELERATOR_LABEL: H100_80GB}
GPU_TOLERATION = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def _pod(name: str, command: list[str], gpus: int = 0, **spec: Any) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "main", "image": "vatt:test", "command": command}
    if gpus:
        container["resources"] = {"limits": {GPU_RESOURCE: str(gpus)}}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"restartPolicy": "Never", "containers": [container], **spec}}


def _core(box: KubeBox) -> client.CoreV1Api:
    return client.CoreV1Api(box.api.api_client())


def _read_pod(box: KubeBox, name: str) -> client.V1Pod | None:
    try:
        return _core(box).read_namespaced_pod(name, NAMESPACE)
    except ApiException as err:
        if err.status == 404:
            return None
        raise


def _phase_is(box: KubeBox, name: str, *phases: str) -> client.V1Pod | None:
    pod = _read_pod(box, name)
    return pod if pod is not None and pod.status.phase in phases else None


def _scheduling_failure(box: KubeBox, name: str) -> str:
    """The message of the scheduler's FailedScheduling event for pod `name`, or ""."""
    events = _core(box).list_namespaced_event(NAMESPACE,
                                              field_selector=f"involvedObject.name={name}")
    return next((event.message for event in events.items if event.reason == "FailedScheduling"),
                "")


def _kubectl_env() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if key != "KUBECONFIG"}


# ---------------------------------------------------------------------------------------------
# The image's parts, without a cluster


def test_box_venv_imports_the_wheel_not_the_checkout(box_venv: BoxVenv, tmp_path: Path):
    """The image installs the wheel (`pip install /tmp/vatt-src[k8s]`, source removed): in the
    box venv, vatt, vatt_flows and vatt_tuning come from its site-packages, the checkout's
    editable finder is not loaded, and `vatt`, `ray`, `prefect` and `dvc` are scripts of that
    venv."""
    probe = ("import sys, vatt, vatt_flows, vatt_tuning; "
             "print(vatt.__file__, vatt_flows.__file__, vatt_tuning.__file__); "
             "print(any('__editable__' in name for name in sys.modules))")
    done = subprocess.run([str(box_venv.python), "-c", probe], cwd=tmp_path, env={
        "PATH": f"{box_venv.bin}:/usr/bin:/bin"}, capture_output=True, text=True, check=True)
    files, editable = done.stdout.splitlines()
    for module_file in files.split():
        assert Path(module_file).is_relative_to(box_venv.site_packages), done.stdout
        assert not Path(module_file).is_relative_to(REPO_ROOT), done.stdout
    assert editable == "False", "the checkout's editable finder was loaded in the box venv"
    for script in ("vatt", "ray", "prefect", "dvc"):
        first_line = (box_venv.bin / script).read_text().splitlines()[0]
        assert first_line == f"#!{box_venv.python}", f"{script}: {first_line}"
    help_text = subprocess.run([str(box_venv.bin / "vatt"), "--help"], cwd=tmp_path,
                               capture_output=True, text=True, check=True).stdout
    assert "pipeline" in help_text


def test_the_image_folder_is_what_the_dockerfile_copies_into_its_workdir(box_image: Image):
    assert box_image.workdir == "/home/vatt"
    assert box_image.cmd == ("vatt", "--help")
    assert box_image.env["HOME"] == "/home/vatt"
    assert (box_image.folder / "k8s" / "kustomization.yaml").read_bytes() == (
        REPO_ROOT / "k8s" / "kustomization.yaml").read_bytes()
    assert not (box_image.folder / "k8s" / "secrets").exists()  # .dockerignore: k8s/secrets/
    assert not (box_image.folder / "vatt").exists()  # `COPY . /tmp/vatt-src` is not the home


def test_the_image_folder_follows_what_a_dockerfile_copies(tmp_path: Path):
    """A Dockerfile that later copies more into the WORKDIR (prefect.yaml, a folder by a
    relative destination) gets it, from the last stage only, less .dockerignore's paths."""
    repo = tmp_path / "repo"
    for name in ("prefect.yaml", "k8s/a.yaml", "k8s/secrets/key", "conf/x.yaml", "conf/x.pem",
                 "builder-only.txt"):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(name)
    (repo / ".dockerignore").write_text("k8s/secrets/\n**/*.pem\n")
    (repo / "Dockerfile").write_text(
        "FROM python:3.11 AS build\nWORKDIR /home/vatt\nCOPY builder-only.txt /home/vatt/\n"
        "FROM python:3.11-slim\nENV HOME=/home/vatt \\\n    APP=vatt\nWORKDIR $HOME\n"
        "COPY --chown=1000:1000 k8s /home/vatt/k8s\nCOPY prefect.yaml ./\n"
        "COPY [\"conf\", \"settings/\"]\nCOPY . /tmp/src\nENTRYPOINT [\"vatt\"]\n")
    image = build_image_folder(tmp_path / "out", repo)
    found = sorted(path.relative_to(image.folder).as_posix()
                   for path in image.folder.rglob("*") if path.is_file())
    assert found == ["k8s/a.yaml", "prefect.yaml", "settings/x.yaml"]
    assert image.env == {"HOME": "/home/vatt", "APP": "vatt"}
    assert image.entrypoint == ("vatt",) and image.cmd == ()


def test_dollar_paren_expansion_is_kubernetes_own():
    values = {"A": "1", "EMPTY": ""}
    assert expand("$(A)-$(EMPTY)-$(MISSING)", values) == "1--$(MISSING)"
    assert expand("$$(A) costs $$5 $x $(A", values) == "$(A) costs $5 $x $(A"


# ---------------------------------------------------------------------------------------------
# The box: real scheduling, played nodes


@pytest.mark.slow
def test_a_gpu_job_runs_on_the_gpu_node_from_the_image(kube_box: KubeBox,
                                                       monkeypatch: pytest.MonkeyPatch):
    """A Job asking for one GPU on a GKE H100 node: the real job controller creates its pod,
    the real scheduler binds it to the GPU node (node selector, toleration, GPU capacity), the
    stand-in kubelet runs it from the box venv with the env it resolves from the spec (a
    ConfigMap through envFrom, a Secret key, $(VAR) expansion, the downward API) and nothing
    of this process's environment, and the Job completes; its log comes through the API."""
    name = _unique("gpu-job")
    core, batch = _core(kube_box), client.BatchV1Api(kube_box.api.api_client())
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "not-for-pods")  # must not reach the pod
    core.create_namespaced_config_map(NAMESPACE, {"metadata": {"name": name},
                                                  "data": {"GREETING": "hello"}})
    core.create_namespaced_secret(NAMESPACE, {"metadata": {"name": name},
                                              "stringData": {"token": "s3cr3t"}})
    script = ("import os, vatt; print('vatt from', vatt.__file__); "
              "print('env', os.environ['BOX_GREETING'], os.environ['MESSAGE'], "
              "os.environ['TOKEN'], os.environ['NODE']); "
              "print('leaked', sorted(k for k in os.environ if k.startswith(('AWS_', 'PREFECT_', "
              "'RAY_', 'PYTEST')))); print('cwd', os.getcwd()); "
              "print('k8s', os.path.exists('k8s/kustomization.yaml'))")
    container = {
        "name": "train", "image": "vatt:0.1.0-gpu", "command": ["python", "-c", script],
        "resources": {"limits": {GPU_RESOURCE: "1"}},
        "envFrom": [{"configMapRef": {"name": name}, "prefix": "BOX_"}],
        "env": [{"name": "MESSAGE", "value": "$(BOX_GREETING) world"},
                {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": name, "key": "token"}}},
                {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}]}
    batch.create_namespaced_job(NAMESPACE, {
        "metadata": {"name": name},
        "spec": {"backoffLimit": 0, "template": {"spec": {
            "restartPolicy": "Never", "nodeSelector": GPU_SELECTOR,
            "tolerations": [GPU_TOLERATION], "containers": [container]}}}})
    kube_box.poll(lambda: batch.read_namespaced_job_status(name, NAMESPACE).status.succeeded,
                  f"Job {name} succeeded", SCHEDULE_S)
    (pod,) = core.list_namespaced_pod(NAMESPACE, label_selector=f"job-name={name}").items
    assert pod.spec.node_name == kube_box.gpu_node
    assert pod.status.phase == "Succeeded"
    (state,) = pod.status.container_statuses
    assert state.state.terminated.exit_code == 0 and state.state.terminated.reason == "Completed"
    log = core.read_namespaced_pod_log(pod.metadata.name, NAMESPACE)  # the kubelet's endpoint
    assert f"vatt from {kube_box.venv.site_packages}/vatt/__init__.py" in log, log
    assert f"env hello hello world s3cr3t {kube_box.gpu_node}" in log, log
    assert "leaked []" in log, log
    assert "k8s True" in log, log  # the image's WORKDIR, a copy of it
    run = kube_box.kubelet.container(NAMESPACE, pod.metadata.name)
    assert f"cwd {run.working_dir}" in log
    batch.delete_namespaced_job(name, NAMESPACE, propagation_policy="Background")
    kube_box.poll(lambda: not core.list_namespaced_pod(
        NAMESPACE, label_selector=f"job-name={name}").items, f"Job {name}'s pod deleted",
        SCHEDULE_S)


@pytest.mark.slow
def test_a_pod_talks_to_the_api_server_as_its_service_account(kube_box: KubeBox):
    """The stand-in kubelet gives a pod its service account's credentials (a KUBECONFIG; a
    real kubelet mounts the token): `default` gets the token the real token controller
    signed, vatt-flow-run the server's static one. RBAC then knows who asks."""
    names = {account: _unique(f"whoami-{account}") for account in ("default", "vatt-flow-run")}
    core = _core(kube_box)
    for account, name in names.items():
        core.create_namespaced_pod(NAMESPACE, _pod(name, ["kubectl", "get", "pods"],
                                                   serviceAccountName=account))
    for account, name in names.items():
        kube_box.poll(lambda name=name: _phase_is(kube_box, name, "Failed", "Succeeded"),
                      f"pod {name}", SCHEDULE_S)
        log = core.read_namespaced_pod_log(name, NAMESPACE)
        assert f'"system:serviceaccount:{NAMESPACE}:{account}" cannot list resource "pods"' in log


@pytest.mark.slow
def test_a_pod_asking_for_more_gpus_than_a_node_has_stays_pending(kube_box: KubeBox):
    """The GPU node offers 2 `nvidia.com/gpu`: the real scheduler leaves a pod asking for 3
    unbound and says why in a FailedScheduling event."""
    name = _unique("three-gpus")
    _core(kube_box).create_namespaced_pod(NAMESPACE, _pod(
        name, ["python", "-c", "print(1)"], gpus=3, nodeSelector=GPU_SELECTOR,
        tolerations=[GPU_TOLERATION]))
    message = kube_box.poll(lambda: _scheduling_failure(kube_box, name),
                            f"FailedScheduling of {name}", SCHEDULE_S)
    assert f"Insufficient {GPU_RESOURCE}" in message, message
    pod = _read_pod(kube_box, name)
    assert pod is not None and pod.status.phase == "Pending" and pod.spec.node_name is None
    _core(kube_box).delete_namespaced_pod(name, NAMESPACE)  # unbound: goes at once


@pytest.mark.slow
def test_a_pod_without_the_gpu_toleration_stays_off_the_gpu_node(kube_box: KubeBox):
    """GKE's taint keeps pods that do not tolerate it off the GPU node: one that names no node
    lands on the CPU node and runs; one that selects the GPU node stays Pending."""
    anywhere, selecting = _unique("no-toleration"), _unique("selects-gpu")
    core = _core(kube_box)
    core.create_namespaced_pod(NAMESPACE, _pod(anywhere, ["python", "-c", "print(1)"]))
    core.create_namespaced_pod(NAMESPACE, _pod(selecting, ["python", "-c", "print(1)"],
                                               nodeSelector=GPU_SELECTOR))
    pod = kube_box.poll(lambda: _phase_is(kube_box, anywhere, "Succeeded"), f"pod {anywhere}",
                        SCHEDULE_S)
    assert pod.spec.node_name == kube_box.cpu_node
    message = kube_box.poll(lambda: _scheduling_failure(kube_box, selecting),
                            f"FailedScheduling of {selecting}", SCHEDULE_S)
    assert "taint" in message and GPU_RESOURCE in message, message
    assert _read_pod(kube_box, selecting).spec.node_name is None
    core.delete_namespaced_pod(selecting, NAMESPACE)


@pytest.mark.slow
def test_a_failing_command_fails_the_pod_with_its_exit_code(kube_box: KubeBox):
    """restartPolicy Never and exit code 3: phase Failed, the container terminated with 3 and
    reason Error, as the kubelet reports it; the output is in the container's log."""
    name = _unique("fails")
    _core(kube_box).create_namespaced_pod(NAMESPACE, _pod(
        name, ["python", "-c", "import sys; print('about to fail'); sys.exit(3)"]))
    pod = kube_box.poll(lambda: _phase_is(kube_box, name, "Failed", "Succeeded"), f"pod {name}",
                        SCHEDULE_S)
    assert pod.status.phase == "Failed"
    terminated = pod.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason) == (3, "Error")
    log_path = kube_box.kubelet.container(NAMESPACE, name).log_path
    assert log_path.read_text() == "about to fail\n"


@pytest.mark.slow
def test_logs_follow_the_container_until_it_ends(kube_box: KubeBox, tmp_path: Path):
    """`kubectl logs -f` through the API server streams from the stand-in kubelet's endpoint
    and ends when the container does; `--tail` cuts as the kubelet does."""
    name = _unique("follow")
    _core(kube_box).create_namespaced_pod(NAMESPACE, _pod(name, [
        "python", "-c", "import time; print('one', flush=True); time.sleep(2); print('two')"]))
    kube_box.poll(lambda: _phase_is(kube_box, name, "Running", "Succeeded"), f"pod {name}",
                  SCHEDULE_S)
    config = kube_box.api.kubeconfig(tmp_path / "kubeconfig")
    followed = subprocess.run(["kubectl", f"--kubeconfig={config}", "logs", "-f", name],
                              capture_output=True, text=True, timeout=60, env=_kubectl_env(),
                              check=False)
    assert followed.returncode == 0, followed.stderr
    assert followed.stdout == "one\ntwo\n"
    assert kube_box.api.kubectl("logs", "--tail=1", name).stdout == "two\n"


@pytest.mark.slow
def test_deleting_a_running_pod_stops_its_process_and_the_pod_goes(kube_box: KubeBox):
    """A delete of a running pod: the kubelet sends SIGTERM to its process group and, once it
    ended, makes the final delete the API server waits for; the object goes."""
    name = _unique("long")
    core = _core(kube_box)
    core.create_namespaced_pod(NAMESPACE, _pod(name, [
        "python", "-c", "import time; print('up', flush=True); time.sleep(600)"]))
    kube_box.poll(lambda: _phase_is(kube_box, name, "Running"), f"pod {name} Running", SCHEDULE_S)
    run = kube_box.kubelet.container(NAMESPACE, name)
    poll(lambda: run.log_path.read_text() == "up\n", f"pod {name}'s output", SCHEDULE_S)
    assert run.process is not None and run.process.poll() is None
    core.delete_namespaced_pod(name, NAMESPACE)  # the default grace: 30 s
    kube_box.poll(lambda: _read_pod(kube_box, name) is None, f"pod {name} gone", SCHEDULE_S)
    assert run.process.returncode == -15  # SIGTERM, not the kill after the grace period
    with pytest.raises(ProcessLookupError):
        os.killpg(run.process.pid, 0)  # nothing of its process group is left
