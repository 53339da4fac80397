"""KubeRay's operator, played by the tests as KubeRay v1.7 does it for a RayJob in K8sJobMode, on
the cluster in a box (tests/kube_box.py: real API server, controller-manager and scheduler; the
stand-in kubelet runs the pods).

For each new RayJob, `PlayedKubeRay`:

1. creates its RayCluster `<rayjob>-<5 characters>` (owned by the RayJob) and, for token auth
   (`authOptions.mode: token`), the Secret holding the token (owned by the RayCluster);
2. creates the Ray pods from the RayCluster's templates as KubeRay's pod builder does: the head
   from `headGroupSpec`, `replicas` workers of each worker group, KubeRay's labels
   (`ray.io/cluster`, `ray.io/node-type`, `ray.io/group`), owned by the RayCluster, with
   `ray start` as the container's command: `rayStartParams` as `--key=value` flags, and, as
   KubeRay derives them from the container's limits, `--num-cpus`, `--num-gpus` (from
   `nvidia.com/gpu`) and `--memory`; the auth token from the Secret through `secretKeyRef`.
   The real scheduler places them (node selectors, tolerations, `nvidia.com/gpu`), the
   stand-in kubelet runs them;
3. once every Ray pod runs and its Ray node has joined (KubeRay's readiness probes; asked of
   the head here), creates the submitter:
   a Kubernetes Job named after the RayJob from `submitterPodTemplate` (backoffLimit from
   `submitterConfig`) whose container runs `ray job submit --address ... --runtime-env-json
   ... --submission-id ... -- <entrypoint>`: the RayJob's `runtimeEnvYAML` passed as KubeRay's
   submitter passes it (as JSON), the entrypoint unchanged;
4. mirrors Ray's job status into the RayJob's status through the status subresource:
   `jobDeploymentStatus` Initializing -> Running -> Complete or Failed (reason AppFailed and
   Ray's message), `jobStatus` PENDING/RUNNING/SUCCEEDED/FAILED, `jobId`, `rayClusterName`.

Deleting the RayJob deletes the rest through the real garbage collector (owner references), and
the kubelet stops the Ray processes. What differs from KubeRay, on purpose: every pod of the box
shares the machine's network and files, so the played operator gives each Ray node ports and
temp folders of its own (GCS, dashboard, agents, worker-port ranges; the sockets of each
node's session folder) where KubeRay relies on each pod's own IP and filesystem, and it talks
to the head at 127.0.0.1 instead of through the head's Service (the box runs no kube-proxy).
No autoscaler, no suspend, no retries of a failed RayJob (`backoffLimit`), and a finished
job's cluster is not deleted after `ttlSecondsAfterFinished` (an hour in k8s/base): it goes with
its RayJob (the client deletes a successful one, `cluster.cleanup`).
"""

from __future__ import annotations

import json
import re
import secrets
import shlex
import string
import tempfile
import threading
import traceback
from dataclasses import dataclass, field
from typing import Any

import yaml

GROUP, VERSION = "ray.io", "v1"
RAY_PORTS = ("gcs", "dashboard", "agent_http", "agent_grpc", "metrics", "runtime_env",
             "node_manager", "object_manager")
WORKER_PORT_SPAN = 200  # each Ray node's own range of worker ports
TOKEN_KEY = "auth_token"


def _quantity(value: Any) -> float:
    """A Kubernetes quantity as a number (cpu "500m" -> 0.5, memory "4Gi" -> 4 * 2**30)."""
    text = str(value)
    units = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20,
             "Gi": 2**30, "Ti": 2**40}
    match = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", text)
    if not match:
        raise ValueError(f"not a quantity: {value!r}")
    number, unit = float(match.group(1)), match.group(2)
    return number * units.get(unit, 1.0)


def _with_string_quantities(spec: dict[str, Any]) -> dict[str, Any]:
    """The pod spec with its resource quantities as strings (YAML gives `nvidia.com/gpu: 1` as
    a number, which the API server accepts and the Python client's models do not)."""
    for container in [*spec.get("initContainers", []), *spec.get("containers", [])]:
        for kind in ("requests", "limits"):
            values = (container.get("resources") or {}).get(kind) or {}
            for key, value in values.items():
                values[key] = str(value)
    return spec


@dataclass
class _Played:
    """What the operator holds for one RayJob."""

    cluster: str
    uid: str  # the RayCluster's
    rayjob_uid: str  # a RayJob deleted and created again under its name is another job
    nodes: int  # Ray nodes of the cluster: the head and every worker replica
    temp: str = ""  # holds its nodes' Ray temp folders (short: Ray's socket paths)
    started: int = 0  # Ray nodes given a command so far (numbers their temp folders)
    ports: dict[str, dict[str, int]] = field(default_factory=dict)  # pod name -> ports
    head_ports: dict[str, int] = field(default_factory=dict)
    submission_id: str = ""
    submitted: bool = False
    finished: bool = False


class PlayedKubeRay:
    """The operator's loop in a thread of the test process (admin credentials, as the
    operator's own ClusterRole gives it). Use as a context manager; `errors` collects what went
    wrong inside the loop, `check()` raises it."""

    def __init__(self, api, namespace: str = "vatt", free_ports=None, poll_s: float = 0.5):
        from kubernetes import client

        from conftest import _free_ports

        api_client = api.api_client()
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.batch = client.BatchV1Api(api_client)
        self.namespace = namespace
        self.poll_s = poll_s
        self._free_ports = free_ports or _free_ports
        self.played: dict[str, _Played] = {}
        self.history: list[tuple[str, str, str]] = []  # (rayjob, deployment status, job status)
        # (rayjob, "head" or "worker", pod) -> the node the scheduler bound the pod to
        self.placements: dict[tuple[str, str, str], str] = {}
        self.created: list[tuple[str, str]] = []  # (rayjob, RayCluster) for each cluster made
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="played-kuberay", daemon=True)
        self._next_worker_port = 20000

    # -- the loop -------------------------------------------------------------------------

    def __enter__(self) -> "PlayedKubeRay":
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(15)

    def check(self) -> None:
        if self.errors:
            raise AssertionError("the played KubeRay operator failed:\n" + "\n".join(self.errors))

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                listed = self.custom.list_namespaced_custom_object(GROUP, VERSION, self.namespace,
                                                                   "rayjobs")
                names = set()
                for rayjob in listed["items"]:
                    names.add(rayjob["metadata"]["name"])
                    self._reconcile(rayjob)
                for gone in set(self.played) - names:  # deleted: the GC removes the rest
                    del self.played[gone]
            except Exception:  # noqa: BLE001 - reported by check()
                self.errors.append(traceback.format_exc())
            self._stop.wait(self.poll_s)

    def _status(self, name: str, **status: Any) -> None:
        self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, self.namespace, "rayjobs", name, {"status": status})
        deployment, job = status.get("jobDeploymentStatus", ""), status.get("jobStatus", "")
        if not self.history or self.history[-1] != (name, deployment, job):
            self.history.append((name, deployment, job))

    def _reconcile(self, rayjob: dict[str, Any]) -> None:
        name = rayjob["metadata"]["name"]
        if rayjob["metadata"].get("deletionTimestamp"):
            return
        played = self.played.get(name)
        if played is not None and played.rayjob_uid != rayjob["metadata"]["uid"]:
            played = None  # deleted and created again between two polls: a new job
        if played is None:
            if (rayjob.get("status") or {}).get("jobDeploymentStatus") in ("Complete", "Failed"):
                return  # ended before this operator started
            played = self._create_cluster(rayjob)
            self.played[name] = played
            self._status(name, jobDeploymentStatus="Initializing", rayClusterName=played.cluster,
                         jobId=played.submission_id)
            return
        if played.finished:
            return
        if not played.submitted:
            if self._cluster_ready(name, played):
                self._create_submitter(rayjob, played)
                played.submitted = True
                self._status(name, jobDeploymentStatus="Running", jobStatus="PENDING",
                             rayClusterName=played.cluster, jobId=played.submission_id)
            return
        self._mirror_job(name, played)

    # -- the Ray cluster --------------------------------------------------------------------

    def _owner(self, kind: str, name: str, uid: str) -> list[dict[str, Any]]:
        return [{"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "name": name, "uid": uid,
                 "controller": True, "blockOwnerDeletion": True}]

    def _create_cluster(self, rayjob: dict[str, Any]) -> _Played:
        name = rayjob["metadata"]["name"]
        suffix = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(5))
        cluster = f"{name}-{suffix}"
        spec = rayjob["spec"]["rayClusterSpec"]
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "RayCluster",
                "metadata": {"name": cluster, "namespace": self.namespace,
                             "labels": {"ray.io/originated-from-crd": "RayJob",
                                        "ray.io/originated-from-cr-name": name},
                             "ownerReferences": self._owner("RayJob", name,
                                                            rayjob["metadata"]["uid"])},
                "spec": spec}
        created = self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace,
                                                              "rayclusters", body)
        workers = sum(int(group.get("replicas", 1)) for group in spec.get("workerGroupSpecs") or [])
        played = _Played(cluster=cluster, uid=created["metadata"]["uid"],
                         rayjob_uid=rayjob["metadata"]["uid"], nodes=1 + workers,
                         submission_id=f"{name}-{secrets.token_hex(3)}")
        played.temp = tempfile.mkdtemp(prefix="rk", dir="/tmp")
        self.created.append((name, cluster))
        owner = self._owner("RayCluster", cluster, played.uid)
        if (spec.get("authOptions") or {}).get("mode") == "token":
            self.core.create_namespaced_secret(self.namespace, {
                "metadata": {"name": cluster, "ownerReferences": owner},
                "stringData": {TOKEN_KEY: secrets.token_hex(24)}})
        head = spec["headGroupSpec"]
        played.head_ports = self._ports()
        self._create_ray_pod(played, owner, f"{cluster}-head", "head", "headgroup", head,
                             played.head_ports, head=True)
        for group in spec.get("workerGroupSpecs") or []:
            for index in range(int(group.get("replicas", 1))):
                pod = f"{cluster}-{group['groupName']}-worker-{secrets.token_hex(3)}"
                self._create_ray_pod(played, owner, pod, "worker", group["groupName"], group,
                                     self._ports(), head=False)
        return played

    def _ports(self) -> dict[str, int]:
        return dict(zip(RAY_PORTS, self._free_ports(len(RAY_PORTS))))

    def _ray_start(self, played: _Played, group: dict[str, Any], container: dict[str, Any],
                   ports: dict[str, int], head: bool) -> list[str]:
        """`ray start` as KubeRay builds it for a pod of `group`, with the box's ports."""
        params = {str(k): str(v) for k, v in (group.get("rayStartParams") or {}).items()}
        limits = (container.get("resources") or {}).get("limits") or {}
        if "num-cpus" not in params and "cpu" in limits:
            params["num-cpus"] = str(max(1, int(_quantity(limits["cpu"]))))
        if "num-gpus" not in params and "nvidia.com/gpu" in limits:
            params["num-gpus"] = str(int(_quantity(limits["nvidia.com/gpu"])))
        if "memory" not in params and "memory" in limits:
            params["memory"] = str(int(_quantity(limits["memory"])))
        params.pop("dashboard-host", None)  # the box: 127.0.0.1 below
        args = ["ray", "start", "--block", "--disable-usage-stats", "--node-ip-address=127.0.0.1"]
        args += [f"--{key}={value}" for key, value in params.items()]
        low = self._next_worker_port
        self._next_worker_port += WORKER_PORT_SPAN
        args += [f"--dashboard-agent-listen-port={ports['agent_http']}",
                 f"--dashboard-agent-grpc-port={ports['agent_grpc']}",
                 f"--metrics-export-port={ports['metrics']}",
                 f"--runtime-env-agent-port={ports['runtime_env']}",
                 f"--node-manager-port={ports['node_manager']}",
                 f"--object-manager-port={ports['object_manager']}",
                 f"--min-worker-port={low}", f"--max-worker-port={low + WORKER_PORT_SPAN - 1}"]
        # each node its own session folder (its sockets: in a pod they are the pod's own files)
        played.started += 1
        args += [f"--temp-dir={played.temp}/n{played.started}"]
        if head:
            args += ["--head", f"--port={ports['gcs']}", "--dashboard-host=127.0.0.1",
                     f"--dashboard-port={ports['dashboard']}", "--include-dashboard=true"]
        else:
            args += [f"--address=127.0.0.1:{played.head_ports['gcs']}"]
        return args

    def _auth_env(self, played: _Played) -> list[dict[str, Any]]:
        return [{"name": "RAY_AUTH_MODE", "value": "token"},
                {"name": "RAY_AUTH_TOKEN", "valueFrom": {"secretKeyRef": {
                    "name": played.cluster, "key": TOKEN_KEY}}}]

    def _create_ray_pod(self, played: _Played, owner: list[dict[str, Any]], name: str,
                        node_type: str, group_name: str, group: dict[str, Any],
                        ports: dict[str, int], head: bool) -> None:
        template = json.loads(json.dumps(group["template"]))  # a copy
        metadata = template.setdefault("metadata", {})
        labels = metadata.setdefault("labels", {})
        labels.update({"ray.io/cluster": played.cluster, "ray.io/node-type": node_type,
                       "ray.io/group": group_name,
                       "app.kubernetes.io/created-by": "kuberay-operator"})
        spec = template["spec"]
        container = spec["containers"][0]
        container["command"] = self._ray_start(played, group, container, ports, head)
        container.pop("args", None)
        container["env"] = [*(container.get("env") or []), *self._auth_env(played)]
        spec.setdefault("restartPolicy", "Always")  # KubeRay's default for Ray pods
        played.ports[name] = ports
        self.core.create_namespaced_pod(self.namespace, {
            "metadata": {**metadata, "name": name, "namespace": self.namespace,
                         "ownerReferences": owner},
            "spec": _with_string_quantities(spec)})

    def ray_pods(self, played: _Played) -> list[Any]:
        return self.core.list_namespaced_pod(
            self.namespace, label_selector=f"ray.io/cluster={played.cluster}").items

    def _cluster_ready(self, name: str, played: _Played) -> bool:
        pods = self.ray_pods(played)
        if not pods or any(pod.status.phase != "Running" for pod in pods):
            return False
        for pod in pods:
            role = pod.metadata.labels["ray.io/node-type"]
            self.placements[(name, role, pod.metadata.name)] = pod.spec.node_name
        # KubeRay's readiness probes hold a Ray pod unready until its raylet is up; the box's
        # kubelet runs no probes, so the operator asks the head how many nodes are alive
        return self._alive_nodes(played) >= played.nodes

    def _alive_nodes(self, played: _Played) -> int:
        import urllib.request

        request = urllib.request.Request(
            f"http://127.0.0.1:{played.head_ports['dashboard']}/api/v0/nodes?limit=100",
            headers={"Authorization": f"Bearer {self._token(played)}"})
        try:
            with urllib.request.urlopen(request, timeout=5) as answer:
                nodes = json.loads(answer.read())["data"]["result"]["result"]
        except Exception:  # noqa: BLE001 - the head's dashboard is not up yet
            return 0
        return sum(1 for node in nodes if node.get("state") == "ALIVE")

    def _token(self, played: _Played) -> str:
        import base64

        secret = self.core.read_namespaced_secret(played.cluster, self.namespace)
        return base64.b64decode(secret.data[TOKEN_KEY]).decode()

    def _jobs(self, played: _Played):
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(f"http://127.0.0.1:{played.head_ports['dashboard']}",
                                   headers={"Authorization": f"Bearer {self._token(played)}"})

    # -- the job ----------------------------------------------------------------------------

    def _create_submitter(self, rayjob: dict[str, Any], played: _Played) -> None:
        spec = rayjob["spec"]
        template = json.loads(json.dumps(spec.get("submitterPodTemplate") or {
            "spec": {"restartPolicy": "Never", "containers": [{"name": "ray-job-submitter",
                                                               "image": "vatt"}]}}))
        runtime_env = yaml.safe_load(spec.get("runtimeEnvYAML") or "") or {}
        container = template["spec"]["containers"][0]
        container["command"] = ["ray", "job", "submit",
                                f"--address=http://127.0.0.1:{played.head_ports['dashboard']}",
                                f"--runtime-env-json={json.dumps(runtime_env)}",
                                f"--submission-id={played.submission_id}", "--",
                                *shlex.split(spec["entrypoint"])]
        container["env"] = [*(container.get("env") or []), *self._auth_env(played)]
        labels = template.setdefault("metadata", {}).setdefault("labels", {})
        labels["ray.io/cluster"] = played.cluster
        _with_string_quantities(template["spec"])
        backoff = int((spec.get("submitterConfig") or {}).get("backoffLimit", 2))
        self.batch.create_namespaced_job(self.namespace, {
            "metadata": {"name": rayjob["metadata"]["name"], "namespace": self.namespace,
                         "ownerReferences": self._owner("RayJob", rayjob["metadata"]["name"],
                                                        rayjob["metadata"]["uid"])},
            "spec": {"backoffLimit": backoff, "template": template}})

    def _mirror_job(self, name: str, played: _Played) -> None:
        from ray.job_submission import JobStatus

        try:
            status = self._jobs(played).get_job_status(played.submission_id)
        except Exception:  # noqa: BLE001 - the submitter has not submitted it yet
            return
        common = {"rayClusterName": played.cluster, "jobId": played.submission_id}
        if status == JobStatus.SUCCEEDED:
            self._status(name, jobDeploymentStatus="Complete", jobStatus=status.value, **common)
            played.finished = True
        elif status in (JobStatus.FAILED, JobStatus.STOPPED):
            info = self._jobs(played).get_job_info(played.submission_id)
            self._status(name, jobDeploymentStatus="Failed", jobStatus=status.value,
                         reason="AppFailed", message=info.message or "", **common)
            played.finished = True
        else:
            self._status(name, jobDeploymentStatus="Running", jobStatus=status.value, **common)

    def history_of(self, key: Any) -> list[tuple[str, str, str]]:
        """The status changes of the RayJobs whose names hold `key` (a flow run's id: the run
        name is pinned to its first 8 characters)."""
        key = str(key)[:8]
        return [entry for entry in self.history if key in entry[0]]

    def placements_of(self, key: Any) -> dict[tuple[str, str, str], str]:
        key = str(key)[:8]
        return {entry: node for entry, node in self.placements.items() if key in entry[0]}

    def job_logs(self, name: str) -> str:
        played = self.played.get(name)
        if played is None:
            return f"(rayjob {name}: not played, or deleted)"
        try:
            return self._jobs(played).get_job_logs(played.submission_id)
        except Exception as err:  # noqa: BLE001 - for messages only
            return f"(rayjob {name}: no logs: {err})"


__all__ = ["PlayedKubeRay"]
