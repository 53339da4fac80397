"""A cluster in a box: real Kubernetes scheduling, and pods that really run on this machine.

What is real: kube-apiserver and etcd (tests/kube.py, a server of the box's own), and the
kube-controller-manager (the Job, ReplicaSet, garbage-collector, namespace, service-account and
token controllers, among others) and kube-scheduler of the same 1.20 release, started by
`control_plane`. What the tests play: the machines. `add_node` creates Node objects (a GKE GPU
host and a CPU node, `add_gke_gpu_node` / `add_cpu_node`), and `StandInKubelet` does a kubelet's
part for them: it reports them Ready, runs every Pod bound to them as local processes, reports
the Pods' status through the status subresource, serves their logs to the API server
(`kubectl logs`) and finishes their deletion.

The pods run the image's Python: `build_box_venv` makes a virtualenv with the project installed
from its wheel (not editable, no source tree beside it), as in the Dockerfile's image, and
`build_image_folder` mirrors what the Dockerfile copies into its WORKDIR (e.g. k8s/).
`cluster_in_a_box` puts it all together; conftest's session fixtures `box_venv`, `box_image`
and `kube_box` build each once.

    def test_something(kube_box):
        kube_box.api.kubectl("run", "hello", "--image=vatt", "--restart=Never", "--",
                             "vatt", "--help")
        kube_box.poll(lambda: phase("hello") == "Succeeded", "pod hello", timeout_s=60)
        run = kube_box.kubelet.container("vatt", "hello")   # its process and log file
        print(run.log_path.read_text())                     # also: kubectl logs hello

How the stand-in kubelet differs from a real one, each on purpose and documented where it
happens: containers are processes of this machine's user in their own process groups, with no
image pull, no isolation, no resource limits, no probes (a started container is Ready), no
securityContext; every pod's IP is 127.0.0.1 (pods share the machine's ports); each pod gets a
fresh copy of the image folder as its working folder and HOME (a container's own filesystem);
of volumes only emptyDir mounted at /dev/shm or /tmp runs (the machine's /dev/shm; /tmp becomes
the pod's TMPDIR), any other mount keeps the container waiting with a message saying so. As a
container's PID namespace would, the end of its main process ends all of its processes, also
those that started sessions of their own (found by a marker in their environment).
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import http.server
import ipaddress
import json
import os
import re
import shlex
import shutil
import signal
import ssl
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import traceback
import urllib.parse
import venv
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Self

from kube import (KubeAPI, KubeBinaries, _log_tail, _start, _stop, find_binaries,
                  kube_api_server)

GPU_RESOURCE = "nvidia.com/gpu"
GKE_ACCELERATOR_LABEL = "cloud.google.com/gke-accelerator"
GKE_NODEPOOL_LABEL = "cloud.google.com/gke-nodepool"
H100_80GB = "nvidia-h100-80gb"
# GKE taints its GPU node pools so that only pods that tolerate it (ask for a GPU) land there
GPU_TAINT_KEY, GPU_TAINT_VALUE = GPU_RESOURCE, "present"
NOT_READY_TAINT_KEY = "node.kubernetes.io/not-ready"
MACHINE_PATH = "/usr/local/bin:/usr/bin:/bin"  # after the box venv's bin, as in the image
RESYNC_S = 0.2  # the kubelet relists its pods this often (a real one's PLEG relists every 1 s)
CONTAINER_MARKER = "VATT_BOX_CONTAINER"  # in every container process's environment
STOP_GRACE_CAP_S = 10.0  # a deleted pod's grace period, at most: tests should not wait 30 s
EXIT_GRACE_S = 2.0  # when the box stops: SIGTERM, then SIGKILL after this
API_PATIENCE_S = 30.0  # how long the kubelet retries an API server that does not answer
CONTROL_PLANE_READY_S = 60.0
# a real kubelet's crash-loop backoff: 10 s, doubling, at most 5 minutes
BACKOFF_INITIAL_S, BACKOFF_MAX_S = 10.0, 300.0


class ApiError(Exception):
    """An API call the server refused; `status` is its HTTP status."""

    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        super().__init__(f"{method} {path}: HTTP {status}: {body[:2000]}")
        self.status = status


class _Rest:
    """JSON over the API server's REST API as one identity (the admin unless `token`), over
    verified TLS on kept-alive connections. Plain dicts: the objects are Kubernetes JSON."""

    def __init__(self, api: KubeAPI, token: str | None = None) -> None:
        import urllib3

        self._url = api.url
        self._headers = {"Authorization": f"Bearer {token or api.admin_token}",
                         "Accept": "application/json"}
        self._pool = urllib3.PoolManager(cert_reqs="CERT_REQUIRED", ca_certs=str(api.ca_file),
                                         retries=False, timeout=urllib3.Timeout(connect=5, read=30))

    def call(self, method: str, path: str, body: Any = None,
             content_type: str = "application/json", **query: Any) -> dict[str, Any]:
        url = f"{self._url}{path}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        headers = dict(self._headers)
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body).encode()
        response = self._pool.request(method, url, body=data, headers=headers)
        text = response.data.decode(errors="replace")
        if response.status >= 400:
            raise ApiError(method, path, response.status, text)
        return json.loads(text) if text else {}

    def get(self, path: str, **query: Any) -> dict[str, Any] | None:
        """The object at `path`, or None when there is none (404)."""
        try:
            return self.call("GET", path, **query)
        except ApiError as err:
            if err.status == 404:
                return None
            raise

    def merge_patch(self, path: str, patch: dict[str, Any]) -> dict[str, Any]:
        return self.call("PATCH", path, patch, content_type="application/merge-patch+json")


def _now() -> str:
    """An API timestamp (RFC 3339, whole seconds, UTC), as the kubelet writes them."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------------------------------------
# The control plane: kube-controller-manager and kube-scheduler


class ControlPlaneError(RuntimeError):
    """A control-plane process exited; the message holds its log's tail."""


@dataclass
class ControlPlane:
    controller_manager: subprocess.Popen
    scheduler: subprocess.Popen
    controller_manager_log: Path
    scheduler_log: Path

    def check(self) -> None:
        """Raises ControlPlaneError, with the log's tail, when either process has exited."""
        for name, proc, log in (("kube-controller-manager", self.controller_manager,
                                 self.controller_manager_log),
                                ("kube-scheduler", self.scheduler, self.scheduler_log)):
            if proc.poll() is not None:
                raise ControlPlaneError(f"{name} exited with code {proc.returncode} ({log}):\n"
                                        f"{_log_tail(log)}")


@contextlib.contextmanager
def control_plane(api: KubeAPI, root: Path,
                  binaries: KubeBinaries | None = None) -> Iterator[ControlPlane]:
    """Starts kube-controller-manager and kube-scheduler against `api` as its admin (each in its
    own process group, logs in `root`), waits until the controllers work, yields, and stops
    both on exit."""
    binaries = binaries or find_binaries()
    root.mkdir(parents=True, exist_ok=True)
    kubeconfig = api.kubeconfig(root / "admin.kubeconfig")
    controller_manager_log = root / "kube-controller-manager.log"
    scheduler_log = root / "kube-scheduler.log"
    controller_manager = scheduler = None
    try:
        controller_manager = _start([
            str(binaries.controller_manager), f"--kubeconfig={kubeconfig}",
            # no cloud and no node lifecycle: the tests' Node objects have no machine behind
            # them to allocate pod CIDRs to or to watch for heartbeats; no Services get IPs
            "--controllers=*,-nodeipam,-nodelifecycle,-cloud-node-lifecycle,-service,-route",
            "--leader-elect=false",
            # the tokens controller signs service-account tokens with the server's key, and
            # puts the server's CA beside them, as on a real cluster
            f"--service-account-private-key-file={api.key_file}", f"--root-ca-file={api.ca_file}",
            "--port=0", "--secure-port=0",  # no health endpoints: nothing here probes them
            "--use-service-account-credentials=false",  # every controller as the admin
            "--logtostderr=true", "--v=1"], controller_manager_log, root)
        scheduler = _start([
            str(binaries.scheduler), f"--kubeconfig={kubeconfig}", "--leader-elect=false",
            "--port=0", "--secure-port=0", "--logtostderr=true", "--v=1"], scheduler_log, root)
        plane = ControlPlane(controller_manager, scheduler, controller_manager_log, scheduler_log)
        _wait_until_controllers_work(api, plane)
        yield plane
    finally:
        _stop(scheduler)
        _stop(controller_manager)


def _wait_until_controllers_work(api: KubeAPI, plane: ControlPlane) -> None:
    """Until the service-account controller has made namespace vatt's `default` account: then
    the controller-manager's informers have synced and its controllers run."""
    rest = _Rest(api)
    deadline = time.monotonic() + CONTROL_PLANE_READY_S
    while time.monotonic() < deadline:
        plane.check()
        if rest.get("/api/v1/namespaces/vatt/serviceaccounts/default") is not None:
            return
        time.sleep(0.2)
    raise ControlPlaneError(
        f"kube-controller-manager made no `default` ServiceAccount in namespace vatt within "
        f"{CONTROL_PLANE_READY_S:.0f} s; log {plane.controller_manager_log}:\n"
        f"{_log_tail(plane.controller_manager_log)}")


# ---------------------------------------------------------------------------------------------
# Nodes


@dataclass(frozen=True)
class Taint:
    key: str
    value: str
    effect: str  # NoSchedule, PreferNoSchedule or NoExecute

    def to_json(self) -> dict[str, str]:
        return {"key": self.key, "value": self.value, "effect": self.effect}


def add_node(api: KubeAPI, name: str, labels: dict[str, str], capacity: dict[str, str],
             taints: Sequence[Taint] = ()) -> None:
    """Creates Node `name` with `labels` and `taints`, whose status offers `capacity` (also as
    allocatable). The API server's admission adds the `not-ready` taint; the node's kubelet
    (StandInKubelet) reports it Ready and lifts that taint."""
    rest = _Rest(api)
    labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
              "kubernetes.io/arch": "amd64", **labels}
    rest.call("POST", "/api/v1/nodes", {
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels},
        "spec": {"taints": [taint.to_json() for taint in taints]}})
    # capacity lives in the status, which a create ignores: written as a kubelet would
    rest.merge_patch(f"/api/v1/nodes/{name}/status",
                     {"status": {"capacity": capacity, "allocatable": capacity}})


def add_gke_gpu_node(api: KubeAPI, name: str, gpus: int = 2,
                     accelerator: str = H100_80GB, pool: str = "gpu-pool") -> None:
    """A GKE GPU host as GKE labels and taints it: pods reach it with the node selector
    `cloud.google.com/gke-accelerator` and a toleration of `nvidia.com/gpu`."""
    add_node(api, name,
             labels={GKE_ACCELERATOR_LABEL: accelerator, GKE_NODEPOOL_LABEL: pool},
             capacity={GPU_RESOURCE: str(gpus), "cpu": "32", "memory": "256Gi", "pods": "110"},
             taints=[Taint(GPU_TAINT_KEY, GPU_TAINT_VALUE, "NoSchedule")])


def add_cpu_node(api: KubeAPI, name: str, pool: str = "cpu-pool") -> None:
    """A CPU node without taints: flow-run pods, Ray heads and RayJob submitters."""
    add_node(api, name, labels={GKE_NODEPOOL_LABEL: pool},
             capacity={"cpu": "16", "memory": "64Gi", "pods": "110"})


def _report_node_ready(rest: _Rest, name: str, kubelet_port: int, kubelet_version: str) -> None:
    """What a kubelet reports of its node (the Ready condition with heartbeat times, where its
    API listens, its addresses), then what the node lifecycle controller would do on seeing it
    Ready: lift the `not-ready` taint. That controller is off here (it would also mark the
    nodes NotReady once heartbeats stopped), so without this no pod would be scheduled."""
    now = _now()
    rest.merge_patch(f"/api/v1/nodes/{name}/status", {"status": {
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                        "message": "the stand-in kubelet is posting ready status",
                        "lastHeartbeatTime": now, "lastTransitionTime": now}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": kubelet_port}},
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"},
                      {"type": "Hostname", "address": name}],
        "nodeInfo": {"kubeletVersion": kubelet_version, "kubeProxyVersion": kubelet_version,
                     "operatingSystem": "linux", "architecture": "amd64",
                     "containerRuntimeVersion": "vatt-standin://0", "osImage": "vatt kube box",
                     "kernelVersion": os.uname().release, "machineID": "", "systemUUID": "",
                     "bootID": ""}}})
    node = rest.get(f"/api/v1/nodes/{name}")
    assert node is not None, f"node {name} vanished"
    taints = node["spec"].get("taints") or []
    kept = [taint for taint in taints if taint["key"] != NOT_READY_TAINT_KEY]
    if kept != taints:
        rest.merge_patch(f"/api/v1/nodes/{name}", {"spec": {"taints": kept}})


# ---------------------------------------------------------------------------------------------
# The image: its Python (build_box_venv) and its working folder (build_image_folder)


@dataclass(frozen=True)
class BoxVenv:
    path: Path
    python: Path
    bin: Path
    site_packages: Path
    wheel: Path


def _checkout_files(repo: Path) -> list[str]:
    """What a commit of the checkout would hold: tracked and not-ignored files."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                         cwd=repo, check=True, capture_output=True, text=True).stdout
    return [name for name in out.split("\0") if name and (repo / name).is_file()]


def build_box_venv(root: Path, repo: Path) -> BoxVenv:
    """A virtualenv in `root` with `repo`'s project installed from its wheel, not editable, no
    source tree beside it: what the image's `pip install /tmp/vatt-src[k8s]` leaves. The
    dependencies are not installed again (torch alone is 5.5 GB): a .pth file puts this
    interpreter's site-packages on the venv's path. A .pth path line only adds that folder;
    the folder's own .pth files are not processed, so the editable install's finder there stays
    off and `import vatt` finds the wheel's copy. The dependencies' console scripts (ray,
    prefect, dvc, ...) are written into the venv's bin as pip writes them."""
    root.mkdir(parents=True, exist_ok=True)
    source = root / "source"  # a clean copy: no build/ or egg-info of the checkout's own
    for name in _checkout_files(repo):
        target = source / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / name, target)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
          "-w", str(root / "dist"), str(source)], "building the project's wheel")
    (wheel,) = (root / "dist").glob("*.whl")
    shutil.rmtree(source)
    path = root / "venv"
    venv.EnvBuilder(symlinks=True, with_pip=False).create(path)  # on the base interpreter
    python = path / "bin" / "python"
    # before the .pth: pip would otherwise see this checkout's editable vatt 0.1.0 as installed
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
          "--no-index", "--quiet", str(wheel)], "installing the wheel into the box venv")
    purelib = "import sysconfig; print(sysconfig.get_path('purelib'))"
    site_packages = Path(_run([str(python), "-c", purelib], "").strip())
    dependencies = Path(sysconfig.get_path("purelib"))
    (site_packages / "vatt-box-dependencies.pth").write_text(f"{dependencies}\n")
    _write_console_scripts(path / "bin", python, dependencies,
                           skip={metadata.Distribution.at(d).metadata["Name"].lower()
                                 for d in site_packages.glob("*.dist-info")})
    return BoxVenv(path=path, python=python, bin=path / "bin", site_packages=site_packages,
                   wheel=wheel)


def _run(args: list[str], what: str) -> str:
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{what or shlex.join(args)} failed ({done.returncode}): "
                           f"{shlex.join(args)}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout


# pip's console-script wrapper
_SCRIPT = """#!{python}
# -*- coding: utf-8 -*-
import re
import sys
from {module} import {name}
if __name__ == '__main__':
    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])
    sys.exit({call}())
"""


def _write_console_scripts(bin_dir: Path, python: Path, site_packages: Path,
                           skip: set[str]) -> None:
    """A wrapper in `bin_dir`, run by `python`, for every console script of the distributions
    in `site_packages` but those named in `skip` (installed in the venv itself)."""
    for dist in metadata.distributions(path=[str(site_packages)]):
        if (dist.metadata["Name"] or "").lower() in skip:
            continue
        for entry in dist.entry_points.select(group="console_scripts"):
            target = bin_dir / entry.name
            if target.exists() or not entry.attr:
                continue
            target.write_text(_SCRIPT.format(python=python, module=entry.module,
                                             name=entry.attr.split(".")[0], call=entry.attr))
            target.chmod(0o755)


@dataclass(frozen=True)
class Image:
    """What the Dockerfile's final stage makes of a container: its WORKDIR tree as files here,
    its environment, and the command it runs when a pod names none."""

    folder: Path  # the WORKDIR's tree: what the COPY lines into it put there
    workdir: str  # e.g. /home/vatt
    env: dict[str, str]  # ENV of the final stage, as written (HOME among them)
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]


def build_image_folder(root: Path, repo: Path) -> Image:
    """Reads `repo`'s Dockerfile (its final stage: after the last FROM) and builds in `root` the
    folder its WORKDIR would hold: every COPY (or local ADD) whose destination lies under the
    final WORKDIR, from the build context (the repo, less .dockerignore). COPYs elsewhere
    (the source copied to /tmp to install it) are not in the working folder and are left out."""
    dockerfile = repo / "Dockerfile"
    workdir = "/"
    env: dict[str, str] = {}
    args: dict[str, str] = {}
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    copies: list[tuple[list[str], str]] = []  # (sources, absolute destination)
    for number, instruction, rest in _dockerfile_instructions(dockerfile):
        where = f"{dockerfile}:{number}"
        if instruction == "FROM":  # a new stage: only the last one is the image
            workdir, env, entrypoint, cmd, copies = "/", {}, (), (), []
        elif instruction == "ARG":
            name, _, default = rest.partition("=")
            args[name.strip()] = _substitute(default.strip().strip('"'), {**args, **env})
        elif instruction == "ENV":
            env.update(_env_pairs(rest, {**args, **env}, where))
        elif instruction == "WORKDIR":
            workdir = os.path.normpath(os.path.join(workdir, _substitute(rest, {**args, **env})))
        elif instruction in ("ENTRYPOINT", "CMD"):
            words = tuple(json.loads(rest)) if rest.startswith("[") else ("/bin/sh", "-c", rest)
            entrypoint, cmd = (words, cmd) if instruction == "ENTRYPOINT" else (entrypoint, words)
        elif instruction in ("COPY", "ADD"):
            words = _copy_words(rest, where)
            if len(words) < 2:
                raise ValueError(f"{where}: {instruction} needs a source and a destination")
            *sources, destination = (_substitute(word, {**args, **env}) for word in words)
            if destination.endswith("/") or len(sources) > 1:
                destination = destination.rstrip("/") + "/"
            absolute = os.path.join(workdir, destination)
            copies.append((sources, absolute if absolute.endswith("/")
                           else os.path.normpath(absolute)))
    folder = root / "image"
    folder.mkdir(parents=True, exist_ok=True)
    ignore = _DockerIgnore(repo / ".dockerignore")
    for sources, destination in copies:
        inside = os.path.relpath(destination.rstrip("/") or "/", workdir)
        if inside == ".." or inside.startswith("../"):
            continue
        for source in sources:
            matches = sorted(repo.glob(source)) if any(c in source for c in "*?[") \
                else [repo / source]
            if not matches or not all(m.exists() for m in matches):
                raise FileNotFoundError(f"{dockerfile}: COPY source {source!r} not found in "
                                        f"{repo}")
            for match in matches:
                target = folder / inside
                if match.is_file() and destination.endswith("/"):
                    target = target / match.name
                _copy_context(match, target, repo, ignore)
    return Image(folder=folder, workdir=workdir, env=env, entrypoint=entrypoint, cmd=cmd)


def _dockerfile_instructions(path: Path) -> Iterator[tuple[int, str, str]]:
    """(line number, INSTRUCTION, the rest) per instruction, continuation lines joined and
    comment lines dropped, as Docker reads them."""
    number, parts = 0, []
    for index, line in enumerate(path.read_text().splitlines(), start=1):
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and not parts):
            continue
        if not parts:
            number = index
        if stripped.endswith("\\"):
            parts.append(stripped[:-1])
            continue
        parts.append(stripped)
        joined = " ".join(part.strip() for part in parts)
        parts = []
        instruction, _, rest = joined.partition(" ")
        yield number, instruction.upper(), rest.strip()


def _substitute(text: str, values: dict[str, str]) -> str:
    """Docker's $NAME / ${NAME} in WORKDIR, ENV and COPY; unknown names become empty."""
    return re.sub(r"\$(?:\{(\w+)\}|(\w+))",
                  lambda m: values.get(m.group(1) or m.group(2), ""), text)


def _env_pairs(rest: str, values: dict[str, str], where: str) -> dict[str, str]:
    words = shlex.split(rest)
    if words and "=" not in words[0]:  # the legacy `ENV NAME value with spaces`
        return {words[0]: _substitute(rest.partition(" ")[2].strip(), values)}
    pairs = {}
    for word in words:
        name, equals, value = word.partition("=")
        if not equals:
            raise ValueError(f"{where}: ENV {word!r} is not NAME=value")
        pairs[name] = _substitute(value, {**values, **pairs})
    return pairs


def _copy_words(rest: str, where: str) -> list[str]:
    """A COPY's sources and destination, flags checked: --chown/--chmod/--link are about the
    image's ownership and layers (nothing here); --from copies from another image, which is no
    file of the build context."""
    while rest.startswith("--"):
        flag, _, rest = rest.partition(" ")
        rest = rest.lstrip()
        if flag.startswith("--from"):
            raise ValueError(f"{where}: COPY {flag} copies from another image; the kube box "
                             f"mirrors only what comes from the build context")
    return json.loads(rest) if rest.startswith("[") else shlex.split(rest)


class _DockerIgnore:
    """The build context's .dockerignore: a path is left out when the last pattern matching
    it, or one of its parent folders, is not a `!` exception."""

    def __init__(self, path: Path) -> None:
        self._rules: list[tuple[re.Pattern[str], bool]] = []
        if not path.exists():
            return
        for line in path.read_text().splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            keep = line.startswith("!")
            pattern = os.path.normpath(line.lstrip("!").strip().lstrip("/"))
            self._rules.append((re.compile(self._regex(pattern)), keep))

    @staticmethod
    def _regex(pattern: str) -> str:
        out = []
        index = 0
        while index < len(pattern):
            if pattern.startswith("**/", index):
                out.append("(?:.*/)?")
                index += 3
            elif pattern.startswith("**", index):
                out.append(".*")
                index += 2
            elif pattern[index] == "*":
                out.append("[^/]*")
                index += 1
            elif pattern[index] == "?":
                out.append("[^/]")
                index += 1
            else:
                out.append(re.escape(pattern[index]))
                index += 1
        return "".join(out) + "$"

    def ignored(self, relative: str) -> bool:
        parts = relative.split("/")
        candidates = ["/".join(parts[:end]) for end in range(1, len(parts) + 1)]
        result = False
        for regex, keep in self._rules:
            if any(regex.match(candidate) for candidate in candidates):
                result = not keep
        return result


def _copy_context(source: Path, target: Path, repo: Path, ignore: _DockerIgnore) -> None:
    """COPY of one source: a file to `target`, a folder's contents into `target`."""
    relative = source.relative_to(repo).as_posix()
    if ignore.ignored(relative):
        return
    if source.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
        return
    target.mkdir(parents=True, exist_ok=True)
    for child in sorted(source.iterdir()):
        _copy_context(child, target / child.name, repo, ignore)


# ---------------------------------------------------------------------------------------------
# The stand-in kubelet: what it makes of a container


class ContainerConfigError(Exception):
    """Why a container cannot start yet (a missing ConfigMap key, an unsupported volume); the
    kubelet's CreateContainerConfigError, retried on the next resync."""


def expand(text: str, values: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion (command, args and env values): $(NAME) becomes NAME's
    value when NAME is defined and stays as written when not; $$ is a literal $."""
    out = []
    index = 0
    while index < len(text):
        char = text[index]
        if char != "$" or index + 1 == len(text):
            out.append(char)
            index += 1
            continue
        following = text[index + 1]
        if following == "$":
            out.append("$")
            index += 2
        elif following == "(":
            close = text.find(")", index + 2)
            if close == -1:  # no closing paren: kept as written
                out.append(text[index:])
                break
            name = text[index + 2:close]
            out.append(values[name] if name in values else text[index:close + 1])
            index = close + 1
        else:
            out.append(char)
            index += 1
    return "".join(out)


_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")  # what the kubelet accepts from envFrom


class _SourceReader:
    """ConfigMaps and Secrets of one pod's namespace, read once per container start."""

    def __init__(self, rest: _Rest, namespace: str) -> None:
        self._rest, self._namespace = rest, namespace
        self._cache: dict[tuple[str, str], dict[str, str] | None] = {}

    def data(self, kind: str, name: str) -> dict[str, str] | None:
        """kind "configmap" or "secret": its data (a Secret's decoded), or None if there is none."""
        if (kind, name) not in self._cache:
            plural = "configmaps" if kind == "configmap" else "secrets"
            found = self._rest.get(f"/api/v1/namespaces/{self._namespace}/{plural}/{name}")
            if found is None:
                self._cache[kind, name] = None
            elif kind == "secret":
                self._cache[kind, name] = {key: base64.b64decode(value).decode(errors="replace")
                                           for key, value in (found.get("data") or {}).items()}
            else:
                self._cache[kind, name] = dict(found.get("data") or {})
        return self._cache[kind, name]

    def key(self, kind: str, reference: dict[str, Any]) -> str | None:
        """A configMapKeyRef's or secretKeyRef's value; None when optional and missing."""
        name, key, optional = reference.get("name", ""), reference["key"], reference.get("optional")
        data = self.data(kind, name)
        if data is None:
            if optional:
                return None
            raise ContainerConfigError(f'{kind} "{name}" not found')
        if key not in data:
            if optional:
                return None
            label = "ConfigMap" if kind == "configmap" else "Secret"
            raise ContainerConfigError(f"couldn't find key {key} in {label} "
                                       f"{self._namespace}/{name}")
        return data[key]


def _field_value(pod: dict[str, Any], path: str) -> str:
    """A fieldRef's value (the downward API)."""
    meta, spec = pod["metadata"], pod["spec"]
    simple = {"metadata.name": meta["name"], "metadata.namespace": meta["namespace"],
              "metadata.uid": meta["uid"], "spec.nodeName": spec.get("nodeName", ""),
              "spec.serviceAccountName": spec.get("serviceAccountName", ""),
              "status.podIP": "127.0.0.1", "status.hostIP": "127.0.0.1"}
    if path in simple:
        return simple[path]
    match = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if match:
        return (meta.get(match.group(1)) or {}).get(match.group(2), "")
    raise ContainerConfigError(f"fieldRef {path!r} is not one the stand-in kubelet resolves")


def container_env(pod: dict[str, Any], container: dict[str, Any], sources: _SourceReader,
                  service_env: dict[str, str]) -> dict[str, str]:
    """The container's environment from the pod spec (what the kubelet hands the runtime,
    which puts the image's ENV beneath it), resolved as the kubelet does: envFrom first (in
    order, with `prefix`, keys that are no valid names left out), then `env` (winning over
    envFrom; each value $(VAR)-expanded against the service variables and what is defined
    before it), then the service variables (KUBERNETES_SERVICE_HOST, ...) where the spec set
    none."""
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        kind = "configmap" if "configMapRef" in source else "secret"
        reference = source.get("configMapRef") or source.get("secretRef") or {}
        data = sources.data(kind, reference.get("name", ""))
        if data is None:
            if reference.get("optional"):
                continue
            raise ContainerConfigError(f'{kind} "{reference.get("name", "")}" not found')
        for key, value in data.items():
            name = source.get("prefix", "") + key
            if _ENV_NAME.match(name):  # the kubelet skips the others (and posts an event)
                env[name] = value
    for variable in container.get("env") or []:
        name, value_from = variable["name"], variable.get("valueFrom")
        if value_from is None:
            env[name] = expand(variable.get("value", ""), {**service_env, **env})
        elif "fieldRef" in value_from:
            env[name] = _field_value(pod, value_from["fieldRef"]["fieldPath"])
        elif "configMapKeyRef" in value_from or "secretKeyRef" in value_from:
            kind = "configmap" if "configMapKeyRef" in value_from else "secret"
            value = sources.key(kind, value_from.get("configMapKeyRef")
                                or value_from["secretKeyRef"])
            if value is not None:
                env[name] = value
        else:
            raise ContainerConfigError(f"env {name}: valueFrom {sorted(value_from)} is not one "
                                       f"the stand-in kubelet resolves")
    return {**service_env, **env}


def container_command(container: dict[str, Any], image: Image, env: dict[str, str]) -> list[str]:
    """What the container runtime runs: `command` + `args`; with only `args`, the image's
    ENTRYPOINT + `args`; with neither, ENTRYPOINT + CMD; $(VAR) expanded in command and args."""
    command, args = container.get("command"), container.get("args")
    if command:
        words = [*command, *(args or [])]
    elif args:
        words = [*image.entrypoint, *args]
    else:
        words = [*image.entrypoint, *image.cmd]
    if not words:
        raise ContainerConfigError("no command: the container names none and the image has no "
                                   "ENTRYPOINT or CMD")
    return [expand(word, env) for word in words]


# emptyDir mounts the machine provides as is: /dev/shm is the machine's (shared memory, as the
# pod's own would be); /tmp is the pod's TMPDIR
_MACHINE_MOUNTS = ("/dev/shm", "/tmp")


def _check_mounts(pod: dict[str, Any], container: dict[str, Any]) -> None:
    volumes = {volume["name"]: volume for volume in pod["spec"].get("volumes") or []}
    for mount in container.get("volumeMounts") or []:
        volume = volumes.get(mount["name"], {})
        if "emptyDir" in volume and mount["mountPath"] in _MACHINE_MOUNTS:
            continue
        kind = next((key for key in volume if key != "name"), "unknown")
        raise ContainerConfigError(
            f"volume {mount['name']!r} ({kind}) at {mount['mountPath']}: the stand-in kubelet "
            f"mounts nothing; only emptyDir at {' or '.join(_MACHINE_MOUNTS)} runs")


# ---------------------------------------------------------------------------------------------
# The stand-in kubelet: pods as processes


@dataclass
class ContainerRun:
    """One container of a pod as the stand-in kubelet runs it: its process (its own process
    group) and its log file (stdout and stderr). Tests read these."""

    namespace: str
    pod: str
    container: str  # its name in the pod spec
    log_path: Path  # <container>.<restart count>.log in the pod's folder
    working_dir: Path
    process: subprocess.Popen | None = None
    restart_count: int = 0
    started_at: str = ""
    finished_at: str = ""
    exit_code: int | None = None
    reason: str = ""  # of the termination: Completed, Error, StartError
    message: str = ""
    waiting_reason: str = "ContainerCreating"
    waiting_message: str = ""
    previous: dict[str, Any] | None = None  # the last run's `terminated` state
    restart_at: float = 0.0  # monotonic: when a crash-looping container starts again
    marker: str = ""  # the CONTAINER_MARKER value of this run's processes

    @property
    def running(self) -> bool:
        return self.process is not None and self.exit_code is None

    @property
    def terminated(self) -> bool:
        return self.exit_code is not None

    def previous_log_path(self) -> Path | None:
        if self.restart_count == 0:
            return None
        return self.log_path.with_name(f"{self.container}.{self.restart_count - 1}.log")


@dataclass
class PodRun:
    """A pod the stand-in kubelet admitted: its private folder (home/, tmp/, logs/, its
    kubeconfig) and its containers' runs."""

    uid: str
    namespace: str
    name: str
    folder: Path
    init: list[ContainerRun]
    containers: list[ContainerRun]
    image_env: dict[str, str]  # PATH, HOME, the image's ENV: beneath the pod's own
    started_at: str
    stop_deadline: float | None = None  # monotonic, once the pod is being deleted
    last_status: dict[str, Any] | None = None
    conditions_since: dict[str, str] = field(default_factory=dict)

    def all_runs(self) -> list[ContainerRun]:
        return [*self.init, *self.containers]


class StandInKubelet:
    """The kubelet of `nodes`, for tests: a thread that relists the pods every RESYNC_S and runs
    each one bound to one of its nodes as processes (see the module's docstring for how they
    differ from containers), reports their status as the kubelet does, finishes their deletion,
    and an HTTPS server answering the API server's log requests (`kubectl logs`)."""

    def __init__(self, api: KubeAPI, root: Path, nodes: Sequence[str], venv: BoxVenv,
                 image: Image) -> None:
        self.api, self.root, self.nodes = api, root, tuple(nodes)
        self.venv, self.image = venv, image
        self._rest = _Rest(api)
        self._pods: dict[str, PodRun] = {}  # what runs now, by uid
        self._admitted: list[PodRun] = []  # every pod it ran, for tests' diagnoses
        self._tmp_dirs: list[Path] = []  # the pods' /tmp folders (short paths under /tmp)
        self._containers: dict[tuple[str, str, str], ContainerRun] = {}  # the latest by name
        self._stopping = threading.Event()
        self._failure: str | None = None
        self._thread: threading.Thread | None = None
        self._log_server: http.server.ThreadingHTTPServer | None = None
        self.port = 0

    # -- what tests use

    def container(self, namespace: str, pod: str, container: str | None = None) -> ContainerRun:
        """The latest run of `container` (the pod's only or first one when None) of `pod`,
        also after the pod is gone. KeyError when the kubelet never saw it."""
        if container is None:
            names = [key[2] for key in self._containers if key[:2] == (namespace, pod)]
            if not names:
                raise KeyError(f"the stand-in kubelet ran no pod {namespace}/{pod}")
            container = names[0]
        return self._containers[namespace, pod, container]

    def pods(self) -> list[PodRun]:
        """Every pod this kubelet admitted, in that order, those gone from the API too."""
        return list(self._admitted)

    def check(self) -> None:
        """Raises when the kubelet's thread failed (the traceback in the message)."""
        if self._failure is not None:
            raise RuntimeError(f"the stand-in kubelet failed:\n{self._failure}")

    # -- life cycle

    def __enter__(self) -> Self:
        self.root.mkdir(parents=True, exist_ok=True)
        self._start_log_server()
        version = self._rest.call("GET", "/version")["gitVersion"]
        for node in self.nodes:
            _report_node_ready(self._rest, node, self.port, version)
        self._thread = threading.Thread(target=self._loop, name="stand-in-kubelet", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        runs = [run for pod in self._pods.values() for run in pod.all_runs() if run.running]
        for run in runs:
            _signal_group(run, signal.SIGTERM)
        deadline = time.monotonic() + EXIT_GRACE_S
        for run in runs:
            assert run.process is not None
            with contextlib.suppress(subprocess.TimeoutExpired):
                run.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            _signal_group(run, signal.SIGKILL)
            run.process.wait()
        if self._log_server is not None:
            self._log_server.shutdown()
            self._log_server.server_close()
        for tmp in self._tmp_dirs:
            shutil.rmtree(tmp, ignore_errors=True)

    def _loop(self) -> None:
        import urllib3

        unanswered_since: float | None = None
        while not self._stopping.wait(RESYNC_S):
            try:
                self._sync()
                unanswered_since = None
            except (urllib3.exceptions.HTTPError, ApiError) as err:
                # a busy server (timeouts, 429, 5xx): the next relist tries again, as the
                # kubelet's does; for long, it is a broken box
                transient = not isinstance(err, ApiError) or err.status in (429, 500, 503, 504)
                unanswered_since = unanswered_since or time.monotonic()
                if not transient or time.monotonic() - unanswered_since > API_PATIENCE_S:
                    self._failure = traceback.format_exc()
                    return
            except Exception:  # noqa: BLE001 - kept for check(): a test fails with it
                self._failure = traceback.format_exc()
                return

    # -- one resync

    def _sync(self) -> None:
        listed = self._rest.call("GET", "/api/v1/pods")["items"]
        mine = {pod["metadata"]["uid"]: pod for pod in listed
                if pod["spec"].get("nodeName") in self.nodes}
        for uid in [uid for uid in self._pods if uid not in mine]:
            # gone from the API (a forced delete, or our own final one): nothing may run on
            for run in self._pods.pop(uid).all_runs():
                if run.running:
                    _signal_group(run, signal.SIGKILL)
                    self._reap(run, wait=True)
        for uid, pod in mine.items():
            run = self._pods.get(uid)
            if run is None:
                if pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
                    continue  # finished before this kubelet saw it
                run = self._admit(pod)
            if pod["metadata"].get("deletionTimestamp"):
                self._terminate(pod, run)
            else:
                self._advance(pod, run)
            if uid in self._pods:
                self._report(pod, run)

    def _admit(self, pod: dict[str, Any]) -> PodRun:
        meta, spec = pod["metadata"], pod["spec"]
        folder = self.root / "pods" / meta["namespace"] / f"{meta['name']}-{meta['uid'][:8]}"
        home = folder / "home"  # a fresh copy of the image's folder: the container's own files
        shutil.copytree(self.image.folder, home, symlinks=True)
        # the pod's /tmp, under a short path: programs put unix sockets there (multiprocessing's
        # forkserver, Ray), whose paths may not exceed 107 bytes; linked from the pod's folder
        tmp = Path(tempfile.mkdtemp(prefix="pod-", dir="/tmp"))
        self._tmp_dirs.append(tmp)
        (folder / "tmp").symlink_to(tmp)
        (folder / "logs").mkdir()
        # what the runtime gives every container beneath the pod's env: the image's ENV (its
        # HOME the pod's copy), PATH with the image's Python first; nothing of this process's
        image_env = {key: value for key, value in self.image.env.items() if key != "PATH"}
        image_env.update({"PATH": f"{self.venv.bin}:{MACHINE_PATH}", "HOME": str(home),
                          "LANG": "C.UTF-8",  # python:3.11-slim's
                          "TMPDIR": str(tmp), "HOSTNAME": meta["name"]})

        def runs(kind: str) -> list[ContainerRun]:
            return [ContainerRun(meta["namespace"], meta["name"], container["name"],
                                 folder / "logs" / f"{container['name']}.0.log",
                                 self._working_dir(home, container.get("workingDir")))
                    for container in spec.get(kind) or []]

        run = PodRun(meta["uid"], meta["namespace"], meta["name"], folder,
                      runs("initContainers"), runs("containers"), image_env, _now())
        for container in [*run.containers, *run.init]:  # container(ns, pod): the first app one
            self._containers[run.namespace, run.name, container.container] = container
        self._pods[run.uid] = run
        self._admitted.append(run)
        return run

    def _working_dir(self, home: Path, workdir: str | None = None) -> Path:
        """The container's workingDir (a path under the image's WORKDIR maps into the pod's
        copy of it), else the image's WORKDIR: the pod's home."""
        if not workdir:
            return home
        relative = os.path.relpath(workdir, self.image.workdir)
        return home / relative if not relative.startswith("..") else Path(workdir)

    def _service_env(self) -> dict[str, str]:
        """The `kubernetes` Service's variables, which the kubelet gives every container: here
        they point at the API server itself (no Service proxy runs)."""
        server = urllib.parse.urlsplit(self.api.url)
        return {"KUBERNETES_SERVICE_HOST": str(server.hostname),
                "KUBERNETES_SERVICE_PORT": str(server.port),
                "KUBERNETES_SERVICE_PORT_HTTPS": str(server.port)}

    def _identity(self, pod: dict[str, Any], folder: Path) -> dict[str, str]:
        """KUBECONFIG for the pod's service account, as the token a real kubelet mounts at
        /var/run/secrets/kubernetes.io/serviceaccount (a path this machine's processes share):
        the server's static token for that account where it has one, else the token the
        controller-manager's tokens controller made for it."""
        spec, namespace = pod["spec"], pod["metadata"]["namespace"]
        if spec.get("automountServiceAccountToken") is False:
            return {}
        account = spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"
        token = self.api.tokens.get(f"system:serviceaccount:{namespace}:{account}")
        if token is None:
            token = self._account_token(namespace, account)
        path = self.api.kubeconfig(folder / "kubeconfig", token=token, namespace=namespace)
        return {"KUBECONFIG": str(path)}

    def _account_token(self, namespace: str, account: str) -> str:
        found = self._rest.get(f"/api/v1/namespaces/{namespace}/serviceaccounts/{account}")
        if found is None:
            raise ContainerConfigError(f'serviceaccount "{account}" not found')
        for reference in found.get("secrets") or []:
            secret = self._rest.get(f"/api/v1/namespaces/{namespace}/secrets/"
                                    f"{reference['name']}")
            if secret and secret.get("type") == "kubernetes.io/service-account-token":
                return base64.b64decode(secret["data"]["token"]).decode()
        raise ContainerConfigError(f'no token yet for serviceaccount "{account}"')

    def _advance(self, pod: dict[str, Any], run: PodRun) -> None:
        """Starts what is due, notes what exited, restarts per restartPolicy."""
        restart_policy = pod["spec"].get("restartPolicy", "Always")
        for container in run.all_runs():
            if container.running:
                self._reap(container)
        for index, container in enumerate(run.init):  # one after the other, each to success
            if container.exit_code == 0:
                continue
            if container.terminated and restart_policy == "Never":
                return  # the pod failed
            if not container.running:
                self._start(pod, run, container, pod["spec"]["initContainers"][index],
                            restart=container.terminated)
            return
        for index, container in enumerate(run.containers):
            if container.running:
                continue
            if not container.terminated:
                if container.process is None:
                    self._start(pod, run, container, pod["spec"]["containers"][index])
            elif restart_policy == "Always" or (restart_policy == "OnFailure"
                                                and container.exit_code != 0):
                self._start(pod, run, container, pod["spec"]["containers"][index], restart=True)

    def _start(self, pod: dict[str, Any], run: PodRun, container: ContainerRun,
               spec: dict[str, Any], restart: bool = False) -> None:
        if restart:
            if container.restart_at == 0.0:  # crash-loop backoff, as the kubelet's
                backoff = min(BACKOFF_INITIAL_S * 2 ** container.restart_count, BACKOFF_MAX_S)
                container.restart_at = time.monotonic() + backoff
                container.waiting_reason, container.waiting_message = "CrashLoopBackOff", (
                    f"back-off {backoff:.0f}s restarting failed container={container.container} "
                    f"pod={run.name}")
            if time.monotonic() < container.restart_at:
                return
            container.previous = _terminated_state(container)
            container.restart_count += 1
            container.log_path = container.log_path.with_name(
                f"{container.container}.{container.restart_count}.log")
            container.exit_code, container.process, container.restart_at = None, None, 0.0
        try:
            _check_mounts(pod, spec)
            sources = _SourceReader(self._rest, run.namespace)
            pod_env = container_env(pod, spec, sources, self._service_env())
            argv = container_command(spec, self.image, pod_env)
            env = {**run.image_env, **self._identity(pod, run.folder), **pod_env}
            # marks every process of this container, its descendants that start sessions of
            # their own (Prefect's engine, Ray's daemons) included: see _end_container
            container.marker = f"{run.uid}/{container.container}/{container.restart_count}"
            env[CONTAINER_MARKER] = container.marker
        except ContainerConfigError as err:
            container.waiting_reason, container.waiting_message = (
                "CreateContainerConfigError", str(err))
            return
        container.started_at = _now()
        with open(container.log_path, "ab") as log:
            try:
                container.working_dir.mkdir(parents=True, exist_ok=True)  # as the runtime does
                container.process = subprocess.Popen(
                    argv, cwd=container.working_dir, env=env, stdin=subprocess.DEVNULL,
                    stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True)  # its own process group: stopped as one
            except OSError as err:  # the runtime's StartError (no such executable, ...)
                log.write(f"{err}\n".encode())
                container.process = None
                container.exit_code, container.reason = 128, "StartError"
                container.message, container.finished_at = str(err), _now()
                return
        container.waiting_reason = container.waiting_message = ""

    def _reap(self, container: ContainerRun, wait: bool = False) -> None:
        assert container.process is not None
        code = container.process.wait() if wait else container.process.poll()
        if code is None:
            return
        _end_container(container)
        # a signal's death reads as the runtime reports it: 128 + the signal's number
        container.exit_code = code if code >= 0 else 128 - code
        container.reason = "Completed" if container.exit_code == 0 else "Error"
        container.finished_at = _now()

    def _terminate(self, pod: dict[str, Any], run: PodRun) -> None:
        """A pod being deleted: SIGTERM its containers, SIGKILL what outlives the grace period
        (capped at STOP_GRACE_CAP_S), then the final delete (gracePeriodSeconds=0) that the API
        server waits for from a bound pod's kubelet before the object goes."""
        running = [container for container in run.all_runs() if container.running]
        if run.stop_deadline is None:
            grace = pod["metadata"].get("deletionGracePeriodSeconds", 30)
            run.stop_deadline = time.monotonic() + min(float(grace), STOP_GRACE_CAP_S)
            for container in running:
                _signal_group(container, signal.SIGTERM)
        for container in running:
            self._reap(container)
        if any(container.running for container in running):
            if time.monotonic() < run.stop_deadline:
                return
            for container in running:
                if container.running:
                    _signal_group(container, signal.SIGKILL)
                    self._reap(container, wait=True)
        self._report(pod, run)  # the containers' last states, before the object goes
        try:
            self._rest.call("DELETE", f"/api/v1/namespaces/{run.namespace}/pods/{run.name}",
                            {"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0,
                             "preconditions": {"uid": run.uid}})
        except ApiError as err:
            if err.status not in (404, 409):  # gone already, or a new pod of that name
                raise
        self._pods.pop(run.uid, None)

    # -- status

    def _report(self, pod: dict[str, Any], run: PodRun) -> None:
        status = self._status(pod, run)
        if status == run.last_status:
            return
        try:  # the uid: a precondition, as the kubelet's status manager sends it
            self._rest.merge_patch(f"/api/v1/namespaces/{run.namespace}/pods/{run.name}/status",
                                   {"metadata": {"uid": run.uid}, "status": status})
        except ApiError as err:
            if err.status not in (404, 409):  # deleted meanwhile: the next relist says so
                raise
        run.last_status = status

    def _status(self, pod: dict[str, Any], run: PodRun) -> dict[str, Any]:
        """The pod's status as the kubelet computes it (its getPhase): Pending until the init
        containers succeeded and a container started; Running while one runs or will restart;
        Succeeded when all exited 0; Failed when all exited and one failed for good."""
        restart_policy = pod["spec"].get("restartPolicy", "Always")
        init_done = all(container.exit_code == 0 for container in run.init)
        init_failed = restart_policy == "Never" and any(
            container.terminated and container.exit_code != 0 for container in run.init)
        containers = run.containers
        if init_failed:
            phase = "Failed"
        elif not init_done or all(c.process is None and not c.terminated for c in containers):
            phase = "Pending"
        elif any(container.running for container in containers):
            phase = "Running"
        elif all(container.terminated for container in containers):
            if all(container.exit_code == 0 for container in containers):
                phase = "Succeeded" if restart_policy != "Always" else "Running"
            else:
                phase = "Failed" if restart_policy == "Never" else "Running"
        else:
            phase = "Running"  # some exited, some waiting to restart
        ready = phase == "Running" and all(container.running for container in containers)
        scheduled = [condition for condition in pod.get("status", {}).get("conditions") or []
                     if condition["type"] == "PodScheduled"]
        conditions = scheduled + [
            self._condition(run, "Initialized", init_done or init_failed),
            self._condition(run, "Ready", ready, phase),
            self._condition(run, "ContainersReady", ready, phase)]
        status: dict[str, Any] = {
            "phase": phase, "conditions": conditions, "hostIP": "127.0.0.1",
            "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}], "startTime": run.started_at,
            "containerStatuses": [self._container_status(pod, "containers", c)
                                  for c in containers]}
        if run.init:
            status["initContainerStatuses"] = [self._container_status(pod, "initContainers", c)
                                               for c in run.init]
        return status

    @staticmethod
    def _condition(run: PodRun, kind: str, true: bool, phase: str = "") -> dict[str, Any]:
        value = "True" if true else "False"
        key = f"{kind}={value}"
        since = run.conditions_since.setdefault(key, _now())
        condition = {"type": kind, "status": value, "lastProbeTime": None,
                     "lastTransitionTime": since}
        if not true and kind != "Initialized":
            condition["reason"] = "PodCompleted" if phase in ("Succeeded", "Failed") \
                else "ContainersNotReady"
        return condition

    def _container_status(self, pod: dict[str, Any], kind: str,
                          container: ContainerRun) -> dict[str, Any]:
        spec = next(c for c in pod["spec"][kind] if c["name"] == container.container)
        image = spec.get("image", "")
        status: dict[str, Any] = {
            "name": container.container, "image": image,
            "imageID": f"vatt-box://{self.venv.wheel.name}",  # every image is the box's
            "ready": container.running, "restartCount": container.restart_count,
            "started": container.running}
        if container.process is not None:
            status["containerID"] = f"vatt-box://{container.process.pid}"
        if container.terminated:
            status["state"] = {"terminated": _terminated_state(container)}
        elif container.running:
            status["state"] = {"running": {"startedAt": container.started_at}}
        else:
            waiting = {"reason": container.waiting_reason or "ContainerCreating"}
            if container.waiting_message:
                waiting["message"] = container.waiting_message
            status["state"] = {"waiting": waiting}
        status["lastState"] = {"terminated": container.previous} if container.previous else {}
        return status

    # -- logs: the kubelet's /containerLogs endpoint

    def _start_log_server(self) -> None:
        cert, key = _self_signed_cert(self.root)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        kubelet = self

        class Handler(_LogHandler):
            def find(self, namespace: str, pod: str, container: str) -> ContainerRun | None:
                return kubelet._containers.get((namespace, pod, container))

            def stopping(self) -> bool:
                return kubelet._stopping.is_set()

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        # the handshake in the handler's thread, not in the accepting one
        server.socket = context.wrap_socket(server.socket, server_side=True,
                                            do_handshake_on_connect=False)
        self.port = server.server_address[1]
        self._log_server = server
        threading.Thread(target=server.serve_forever, name="stand-in-kubelet-logs",
                         daemon=True).start()


def _terminated_state(container: ContainerRun) -> dict[str, Any]:
    state: dict[str, Any] = {"exitCode": container.exit_code, "reason": container.reason,
                             "startedAt": container.started_at or None,
                             "finishedAt": container.finished_at}
    if container.message:
        state["message"] = container.message
    if container.process is not None:
        state["containerID"] = f"vatt-box://{container.process.pid}"
    return state


def _signal_group(container: ContainerRun, sig: int) -> None:
    if container.process is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(container.process.pid, sig)
    if sig == signal.SIGKILL:
        _end_container(container)


def _end_container(container: ContainerRun) -> None:
    """What a container's PID namespace does when its main process ends: nothing of it outlives
    it. Every process whose environment carries the container's marker is killed, also those
    that left its process group (a session of their own) or were orphaned."""
    if not container.marker:
        return
    wanted = f"{CONTAINER_MARKER}={container.marker}".encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if wanted in (proc / "environ").read_bytes().split(b"\0"):
                os.kill(int(proc.name), signal.SIGKILL)
        except (OSError, ValueError):  # gone meanwhile, or not ours to read
            continue


class _LogHandler(http.server.BaseHTTPRequestHandler):
    """GET /containerLogs/{namespace}/{pod}/{container}, as the API server forwards `kubectl
    logs`: tailLines, limitBytes, follow (streams until the container's process ends) and
    previous. The real kubelet authenticates the API server's client certificate; this one
    listens on 127.0.0.1 only and takes any caller."""

    def find(self, namespace: str, pod: str, container: str) -> ContainerRun | None:
        raise NotImplementedError

    def stopping(self) -> bool:
        raise NotImplementedError

    def log_message(self, format: str, *args: Any) -> None:
        pass  # no access log on the test's stderr

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = {key: values[-1] for key, values in urllib.parse.parse_qs(url.query).items()}
        parts = url.path.strip("/").split("/")
        if len(parts) != 4 or parts[0] != "containerLogs":
            self.send_error(404, f"the stand-in kubelet serves only /containerLogs, not {url.path}")
            return
        unsupported = sorted(set(query) & {"timestamps", "sinceSeconds", "sinceTime"})
        if any(query[key] not in ("false", "") for key in unsupported):
            self.send_error(400, f"the stand-in kubelet does not support {unsupported}")
            return
        container = self.find(*parts[1:])
        if container is None:
            self.send_error(404, f"no container {parts[3]} in pod {parts[1]}/{parts[2]}")
            return
        if container.process is None and not container.terminated:
            self.send_error(400, f'container "{parts[3]}" in pod "{parts[2]}" is waiting to '
                                 f"start: {container.waiting_reason or 'ContainerCreating'}")
            return
        path = container.log_path
        if query.get("previous") == "true":
            previous = container.previous_log_path()
            if previous is None:
                self.send_error(400, f"previous terminated container {parts[3]} in pod "
                                     f"{parts[2]} not found")
                return
            path = previous
        limit = int(query["limitBytes"]) if "limitBytes" in query else None
        data = path.read_bytes() if path.exists() else b""
        if "tailLines" in query:
            lines = data.splitlines(keepends=True)
            count = int(query["tailLines"])
            data = b"".join(lines[-count:]) if count > 0 else b""
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()  # no length: the body ends when the connection does (HTTP/1.0)
        sent = self._send(data, limit, 0)
        if query.get("follow") != "true" or path != container.log_path:
            return
        offset = path.stat().st_size if path.exists() else 0
        with contextlib.suppress(OSError):  # the caller went away
            while sent is not None and not self.stopping() and path == container.log_path:
                finished = not container.running  # read once more after the process ended
                with open(path, "rb") as log:
                    log.seek(offset)
                    more = log.read()
                offset += len(more)
                sent = self._send(more, limit, sent)
                if finished and not more:
                    return
                if not more:
                    time.sleep(0.1)

    def _send(self, data: bytes, limit: int | None, sent: int) -> int | None:
        """Writes `data` within `limit`; the bytes sent so far, None once the limit is hit."""
        if limit is not None:
            data = data[:max(0, limit - sent)]
        if data:
            self.wfile.write(data)
            self.wfile.flush()
        sent += len(data)
        return None if limit is not None and sent >= limit else sent


def _self_signed_cert(root: Path) -> tuple[Path, Path]:
    """A serving certificate for 127.0.0.1 (PEM files in `root`). The 1.20 API server does not
    verify a kubelet's certificate when it has no --kubelet-certificate-authority."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vatt-stand-in-kubelet")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = root / "kubelet.crt", root / "kubelet.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


# ---------------------------------------------------------------------------------------------
# The box


@dataclass(frozen=True)
class KubeBox:
    """A running cluster in a box (fixture `kube_box`)."""

    api: KubeAPI  # the box's own API server (not the session's `kube_api`)
    control_plane: ControlPlane
    kubelet: StandInKubelet
    gpu_node: str  # a GKE H100 host with 2 GPUs, tainted nvidia.com/gpu=present:NoSchedule
    cpu_node: str
    venv: BoxVenv
    image: Image

    @property
    def nodes(self) -> tuple[str, ...]:
        return self.gpu_node, self.cpu_node

    def check(self) -> None:
        """Raises when a control-plane process exited or the kubelet failed."""
        self.control_plane.check()
        self.kubelet.check()

    def poll(self, check: Callable[[], Any], what: str, timeout_s: float) -> Any:
        """conftest.poll, failing at once (and saying why) when the box itself broke."""
        from conftest import poll

        def checked() -> Any:
            self.check()
            return check()

        return poll(checked, what, timeout_s, interval_s=0.2)


@contextlib.contextmanager
def cluster_in_a_box(root: Path, venv: BoxVenv, image: Image) -> Iterator[KubeBox]:
    """An API server of its own, the controller-manager and scheduler, a GPU node and a CPU
    node, and their stand-in kubelet, in `root`; everything stopped on exit."""
    binaries = find_binaries()  # all of them, any missing built in one run
    (root / "api").mkdir(parents=True)
    with (kube_api_server(root / "api") as api,
          control_plane(api, root / "control-plane", binaries) as plane):
        gpu_node, cpu_node = "gke-vatt-gpu-pool-0", "gke-vatt-cpu-pool-0"
        add_gke_gpu_node(api, gpu_node)
        add_cpu_node(api, cpu_node)
        with StandInKubelet(api, root / "kubelet", (gpu_node, cpu_node), venv, image) as kubelet:
            yield KubeBox(api, plane, kubelet, gpu_node, cpu_node, venv, image)
