"""A real Kubernetes API server for the tests: kube-apiserver 1.20 (built from Debian's source
package by tests/kube/build-kube.sh, cached outside the clone) beside Debian's etcd, both on
free 127.0.0.1 ports with their data, keys and logs in a temp folder. No kubelet, no scheduler,
no controller-manager: objects are stored, validated, authorized and watched, nothing runs them
(pods stay Pending, namespaces stay Terminating once deleted). tests/kube_box.py adds the
controller-manager, the scheduler, nodes and a stand-in kubelet on a server of its own.

Authentication is a static token file: an admin in `system:masters`, and one token per
service account of namespace `vatt` (k8s/rbac's `vatt-prefect-worker`, `vatt-flow-run`,
`vatt-ray`, and `vatt-noperm`) under the user name and groups the API server gives a real
service-account token, so RBAC bindings to a ServiceAccount subject apply to it. Authorization
is RBAC. The server keeps an audit log (`KubeAPI.audit_events`): every request of namespace
`vatt`'s service accounts (who, verb, resource, answer) and every pod created, with its body, so
a test can read what each account did and what pods were made. Namespace `vatt` and KubeRay's RayJob and
RayCluster CRDs (tests/fixtures/kuberay-crds, edited in memory for 1.20: see
`crds_for_kube_1_20`) are installed before the fixture yields.

    def test_something(kube_api):
        kube_api.kubectl("get", "rayjobs")                       # admin, namespace vatt
        worker = kube_api.tokens["system:serviceaccount:vatt:vatt-worker"]
        api = kubernetes.client.CustomObjectsApi(kube_api.api_client(worker))
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import copy
import hashlib
import json
import os
import secrets
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:
    import kubernetes

# what the build script builds; $VATT_KUBE_APISERVER (and so on) names a binary to use instead
COMPONENTS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
CACHE_ENV_VAR = "VATT_KUBE_CACHE"  # the build script's cache folder
DEFAULT_CACHE = Path("/var/cache/vatt")
BUILD_SCRIPT = Path(__file__).resolve().parent / "kube" / "build-kube.sh"
BUILD_TIMEOUT_S = 60 * 60  # all three: 10 min on 2 idle cores (the apiserver: 37 beside Ray)
ETCD = "/usr/bin/etcd"  # Debian's etcd-server
KUBECTL = "/usr/bin/kubectl"
CRD_DIR = Path(__file__).resolve().parent / "fixtures" / "kuberay-crds"
CRD_FILES = ("ray.io_rayjobs.yaml", "ray.io_rayclusters.yaml")
NAMESPACE = "vatt"
# k8s/rbac's accounts (the Prefect worker, the flow runs, the Ray pods) and one without rights
SERVICE_ACCOUNTS = ("vatt-prefect-worker", "vatt-flow-run", "vatt-ray", "vatt-noperm")
ADMIN_USER = "vatt-admin"
STARTUP_TIMEOUT_S = 90.0  # kube-apiserver on 2 busy cores
CRD_ESTABLISHED_TIMEOUT_S = 60.0
SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"


class KubectlError(subprocess.CalledProcessError):
    """A failed kubectl call; unlike its base class, says what kubectl said."""

    def __str__(self) -> str:
        return f"{super().__str__()}\nstderr: {self.stderr}\nstdout: {str(self.stdout)[-2000:]}"


@dataclass(frozen=True)
class KubeAPI:
    url: str  # https://127.0.0.1:<port>
    ca_file: Path  # verifies the server's serving cert
    admin_token: str
    tokens: dict[str, str]  # user name -> token, e.g. "system:serviceaccount:vatt:vatt-worker"
    log_path: Path
    # signs service-account tokens (the server verifies with its public half): the
    # controller-manager's --service-account-private-key-file
    key_file: Path
    audit_path: Path  # the audit log (JSON lines): AUDIT_POLICY

    def audit_events(self) -> list[dict[str, Any]]:
        """The audit log's events so far (audit.k8s.io/v1 Event objects), oldest first: each
        request of a service account of namespace `vatt` (user.username, verb, objectRef,
        responseStatus.code, requestReceivedTimestamp) and each pod creation with its
        requestObject."""
        if not self.audit_path.exists():
            return []
        events = []
        for line in self.audit_path.read_text().splitlines():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:  # the line being written
                continue
        return events

    def kubeconfig(self, path: Path, token: str | None = None, namespace: str = NAMESPACE) -> Path:
        """Writes a kubeconfig for this server (the admin's token unless `token`), whose
        context's namespace is `namespace`. JSON, which every kubeconfig reader takes as YAML."""
        path = Path(path)
        config = {
            "apiVersion": "v1", "kind": "Config", "preferences": {},
            "clusters": [{"name": "vatt-test", "cluster": {
                "server": self.url, "certificate-authority": str(self.ca_file)}}],
            "users": [{"name": "vatt-test", "user": {"token": token or self.admin_token}}],
            "contexts": [{"name": "vatt-test", "context": {
                "cluster": "vatt-test", "user": "vatt-test", "namespace": namespace}}],
            "current-context": "vatt-test",
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(config, indent=2))
        path.chmod(0o600)
        return path

    def kubectl(self, *args: str, token: str | None = None, input: str | None = None,
                check: bool = True) -> subprocess.CompletedProcess:
        """Runs /usr/bin/kubectl against this server (the admin's token unless `token`;
        namespace `vatt` unless `-n`), nothing of ~/.kube involved. Text output, captured."""
        token = token or self.admin_token
        name = hashlib.sha256(token.encode()).hexdigest()[:16]
        config = self.log_path.parent / "kubeconfigs" / name
        if not config.exists():  # written aside and renamed: concurrent calls see all or none
            aside = config.with_name(f"{name}.{secrets.token_hex(4)}.tmp")
            os.replace(self.kubeconfig(aside, token), config)
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        done = subprocess.run([KUBECTL, f"--kubeconfig={config}", *args], input=input, text=True,
                              capture_output=True, env=env, timeout=300)
        if check and done.returncode != 0:
            raise KubectlError(done.returncode, done.args, done.stdout, done.stderr)
        return done

    def api_client(self, token: str | None = None) -> "kubernetes.client.ApiClient":
        """A kubernetes Python client for this server (the admin's token unless `token`),
        verifying its serving certificate."""
        from kubernetes import client

        configuration = client.Configuration()
        configuration.host = self.url
        configuration.ssl_ca_cert = str(self.ca_file)
        configuration.verify_ssl = True
        configuration.api_key = {"authorization": token or self.admin_token}
        configuration.api_key_prefix = {"authorization": "Bearer"}
        return client.ApiClient(configuration)


# ---------------------------------------------------------------------------------------------
# The binaries


def _override_var(component: str) -> str:
    """The environment variable naming a binary to use instead of the cache's, e.g.
    VATT_KUBE_CONTROLLER_MANAGER for kube-controller-manager."""
    return "VATT_" + component.upper().replace("-", "_")


def _cached(component: str) -> Path | None:
    """The newest `component` in the build script's cache, if any."""
    cache = Path(os.environ.get(CACHE_ENV_VAR) or DEFAULT_CACHE)
    found = [path for path in cache.glob(f"{component}-*")
             if ".tmp." not in path.name and os.access(path, os.X_OK)]
    return max(found, key=lambda path: path.stat().st_mtime, default=None)


def _run_build_script(components: list[str], why: str) -> list[Path]:
    """Runs tests/kube/build-kube.sh for `components` (it builds those not cached yet, in one
    `make`: kube-apiserver about 5 minutes on 2 cores, the others about 150 s each; it also
    installs etcd-server and kubectl) and returns the binaries it prints, in that order."""
    # pytest captures the fixture's output: say on the terminal why the session waits
    print(f"\n[kube] {why}: running {BUILD_SCRIPT} {' '.join(components)} (builds the missing "
          f"ones once per machine: kube-apiserver about 5 minutes on 2 cores, the others about "
          f"150 s each)", file=sys.__stderr__, flush=True)
    try:
        done = subprocess.run(["bash", str(BUILD_SCRIPT), *components], capture_output=True,
                              text=True, timeout=BUILD_TIMEOUT_S)
    except subprocess.TimeoutExpired as err:
        said = err.stderr or ""
        said = said.decode(errors="replace") if isinstance(said, bytes) else said
        raise RuntimeError(f"{BUILD_SCRIPT} ({why}) did not finish in {BUILD_TIMEOUT_S} s:\n"
                           f"{said[-4000:]}") from err
    lines = done.stdout.strip().splitlines()[-len(components):]
    if (done.returncode != 0 or len(lines) != len(components)
            or not all(os.access(line, os.X_OK) for line in lines)):
        overrides = ", ".join(_override_var(component) for component in components)
        raise RuntimeError(
            f"{BUILD_SCRIPT} ({why}) failed with code {done.returncode}; it builds "
            f"{' '.join(components)} from Debian's kubernetes source package and needs root and "
            f"Debian's apt mirrors. Run it by hand to see why, or set {overrides} to Kubernetes "
            f"1.20 binaries.\n{done.stderr[-4000:]}")
    return [Path(line) for line in lines]


def missing_components(components: tuple[str, ...] = COMPONENTS) -> list[str]:
    """Those of `components` neither named by $VATT_<COMPONENT> nor in the build cache."""
    return [component for component in components
            if not os.environ.get(_override_var(component)) and _cached(component) is None]


def start_build(components: list[str], log_path: Path) -> subprocess.Popen:
    """Starts tests/kube/build-kube.sh for `components` in the background (its own process
    group, output to `log_path`): a fresh machine's session starts it when it collects tests
    that need the cluster, which then run last, so that the build (about 10 minutes on 2
    cores) overlaps the rest of the suite. `find_components` later runs the script again,
    which waits for this one's lock and finds the binaries built."""
    print(f"\n[kube] {' '.join(components)} not built on this machine: building them beside the "
          f"other tests ({BUILD_SCRIPT}; log: {log_path})", file=sys.__stderr__, flush=True)
    with open(log_path, "wb") as log:
        return subprocess.Popen(["bash", str(BUILD_SCRIPT), *components], stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)


def find_components(*components: str) -> list[Path]:
    """The binaries of `components` (of COMPONENTS), in the order asked: $VATT_<COMPONENT>
    (e.g. $VATT_KUBE_APISERVER), else the newest in the build script's cache. Runs the build
    script once for all that are missing, and when etcd or kubectl is missing (a fresh
    machine)."""
    found: dict[str, Path | None] = {}
    for component in components:
        if component not in COMPONENTS:
            raise ValueError(f"unknown Kubernetes component {component!r} (one of {COMPONENTS})")
        override = os.environ.get(_override_var(component))
        if override and not os.access(override, os.X_OK):
            raise RuntimeError(f"{_override_var(component)}={override} is not an executable "
                               f"file; unset it to use the cached build (or build one with "
                               f"{BUILD_SCRIPT} {component})")
        found[component] = Path(override) if override else _cached(component)
    missing = [name for name, path in found.items() if path is None]
    tools_missing = [name for name, path in (("etcd", ETCD), ("kubectl", KUBECTL))
                     if not os.access(path, os.X_OK)]
    # with only etcd or kubectl missing, the script runs for cached components (it installs
    # the tools and prints their paths); it would build one that is overridden
    to_build = missing or [component for component in components
                           if tools_missing and not os.environ.get(_override_var(component))]
    if to_build:
        built = _run_build_script(to_build, f"{', '.join(missing + tools_missing)} missing")
        for component, path in zip(to_build, built):
            found[component] = found[component] or path
    for name, path in (("etcd", ETCD), ("kubectl", KUBECTL)):
        if not os.access(path, os.X_OK):
            raise RuntimeError(f"{path} missing after {BUILD_SCRIPT}: install Debian's "
                               f"{'etcd-server' if name == 'etcd' else 'kubernetes-client'}")
    return [path for path in found.values() if path is not None]


@dataclass(frozen=True)
class KubeBinaries:
    apiserver: Path
    controller_manager: Path
    scheduler: Path
    etcd: Path


def find_binaries() -> KubeBinaries:
    """All of the control plane: the three components (see `find_components`; the missing
    ones built in one run of the build script) and etcd."""
    apiserver, controller_manager, scheduler = find_components(*COMPONENTS)
    return KubeBinaries(apiserver, controller_manager, scheduler, Path(ETCD))


# ---------------------------------------------------------------------------------------------
# Processes


def _start(args: list[str], log_path: Path, cwd: Path) -> subprocess.Popen:
    with open(log_path, "wb") as log:
        return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=cwd,
                                start_new_session=True)  # its own process group, for _stop


def _stop(proc: subprocess.Popen | None, grace_s: float = 5.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _log_tail(path: Path, chars: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except FileNotFoundError:
        return "(no log)"


def _wait_for(proc: subprocess.Popen, url: str, name: str, log_path: Path, deadline: float,
              context: ssl.SSLContext | None = None, token: str | None = None,
              ca_file: Path | None = None) -> None:
    """Polls `url` until it answers 200; raises with the log's tail when the process exits or
    the deadline passes. With `ca_file`, verifies TLS with it once the server wrote it."""
    last_error = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with code {proc.returncode} ({log_path}):\n"
                               f"{_log_tail(log_path)}")
        try:
            if ca_file is not None:  # read again each time: the server may be writing it
                if not ca_file.exists():
                    raise FileNotFoundError(f"{ca_file} not yet written")
                context = ssl.create_default_context(cafile=str(ca_file))
            request = urllib.request.Request(url)
            if token:
                request.add_header("Authorization", f"Bearer {token}")
            with urllib.request.urlopen(request, timeout=5, context=context) as response:
                if response.status == 200:
                    return
                last_error = f"HTTP {response.status}"
        except urllib.error.HTTPError as err:  # e.g. 500 while post-start hooks still run
            last_error = f"HTTP {err.code}: {err.read()[-500:].decode(errors='replace')}"
        except (OSError, ssl.SSLError) as err:
            last_error = f"{type(err).__name__}: {err}"
        time.sleep(0.25)
    raise RuntimeError(f"{name} not ready at {url} within the timeout ({last_error}); "
                       f"log {log_path}:\n{_log_tail(log_path)}")


def _start_etcd(etcd: Path, root: Path, deadline: float) -> tuple[subprocess.Popen, str]:
    from conftest import _free_ports  # conftest imports this module: not at the top

    client_port, peer_port = _free_ports(2)
    client_url, peer_url = f"http://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
    log_path = root / "etcd.log"
    proc = _start([str(etcd), "--name=vatt-test", f"--data-dir={root / 'etcd-data'}",
                   f"--listen-client-urls={client_url}", f"--advertise-client-urls={client_url}",
                   f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
                   f"--initial-cluster=vatt-test={peer_url}", "--logger=zap",
                   "--log-outputs=stderr"], log_path, root)
    try:
        _wait_for(proc, f"{client_url}/health", "etcd", log_path, deadline)
    except BaseException:
        _stop(proc)
        raise
    return proc, client_url


def _service_account_keys(root: Path) -> Path:
    """An RSA key pair (PEM, private key file; the public key derives from it) to sign and
    verify service-account tokens."""
    key_path = root / "service-account.key"
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
    except ImportError:
        subprocess.run(["openssl", "genrsa", "-out", str(key_path), "2048"], check=True,
                       capture_output=True)
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.TraditionalOpenSSL,
                                               serialization.NoEncryption()))
    key_path.chmod(0o600)
    return key_path


def _token_file(root: Path) -> tuple[Path, str, dict[str, str]]:
    """kube-apiserver's --token-auth-file (CSV: token,user,uid,"group,...") with the admin and
    the service accounts of namespace `vatt`, as the names and groups a real service-account
    token authenticates as (no controller-manager here issues those)."""
    admin_token = secrets.token_urlsafe(32)
    rows = [f'{admin_token},{ADMIN_USER},{ADMIN_USER},"system:masters,system:authenticated"']
    tokens = {}
    for account in SERVICE_ACCOUNTS:
        user = f"system:serviceaccount:{NAMESPACE}:{account}"
        tokens[user] = secrets.token_urlsafe(32)
        groups = f"system:serviceaccounts,system:serviceaccounts:{NAMESPACE},system:authenticated"
        rows.append(f'{tokens[user]},{user},{user},"{groups}"')
    path = root / "tokens.csv"
    path.write_text("\n".join(rows) + "\n")
    path.chmod(0o600)
    return path, admin_token, tokens


AUDIT_POLICY = f"""\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  # every pod as it was asked for: the tests check each against the Pod Security Standard
  - level: Request
    verbs: [create]
    resources: [{{group: "", resources: [pods]}}]
  # who did what, for the service accounts of the platform's namespace
  - level: Metadata
    userGroups: ["system:serviceaccounts:{NAMESPACE}"]
  - level: None
"""


def _start_apiserver(apiserver: Path, root: Path, etcd_url: str, token_file: Path,
                     key_file: Path) -> tuple[subprocess.Popen, str, Path, Path]:
    from conftest import _free_ports

    (port,) = _free_ports(1)
    cert_dir = root / "certs"
    cert_dir.mkdir(exist_ok=True)
    log_path = root / "kube-apiserver.log"
    policy = root / "audit-policy.yaml"
    policy.write_text(AUDIT_POLICY)
    args = [str(apiserver),
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={port}",
            "--insecure-port=0",  # 1.20 still serves an unauthenticated :8080 unless told not to
            f"--cert-dir={cert_dir}",  # a self-signed CA and serving cert for 127.0.0.1, localhost
            f"--etcd-servers={etcd_url}",
            "--authorization-mode=RBAC", f"--token-auth-file={token_file}",
            f"--service-account-key-file={key_file}",
            f"--service-account-signing-key-file={key_file}",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            # no controller-manager makes service-account token secrets, so this admission
            # plugin would refuse every pod; RBAC still governs who may create one
            "--disable-admission-plugins=ServiceAccount",
            # the `kubernetes` Service's endpoint would be 127.0.0.1, which validation refuses
            "--endpoint-reconciler-type=none",
            # a kubelet is reached at its node's InternalIP (as on GKE): the test nodes' host
            # names (the default's first choice) resolve nowhere
            "--kubelet-preferred-address-types=InternalIP,Hostname",
            f"--audit-policy-file={policy}", f"--audit-log-path={root / 'audit.log'}",
            "--audit-log-format=json",
            "--profiling=false", "--logtostderr=true", "--v=1"]
    proc = _start(args, log_path, root)
    return proc, f"https://127.0.0.1:{port}", cert_dir / "apiserver.crt", log_path


# ---------------------------------------------------------------------------------------------
# KubeRay's CRDs on a 1.20 server


def _load_crds() -> list[dict[str, Any]]:
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: seconds faster on 2.3 MB
    return [yaml.load((CRD_DIR / name).read_text(), Loader=loader) for name in CRD_FILES]


def crds_for_kube_1_20(crds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """KubeRay v1.7.0's CRDs with what a 1.20 API server rejects removed (copies; the files on
    disk stay as published). Found by creating them (server-side dry run) until accepted:

    - every `default: ""` (212 in RayJob, 146 in RayCluster: `name` of the object references
      such as `secretKeyRef`, `service` of gRPC probes): 1.20 reads an empty-string default as
      null and refuses it ("default: Invalid value: "null": in body must be of type string");
    - then `x-kubernetes-list-type: map` and `x-kubernetes-list-map-keys` of the lists whose map
      key thereby lost its default: only the pod templates' `imagePullSecrets`, keyed on the
      optional `name` (6 in RayJob: head, workers, submitter, in v1 and v1alpha1; 4 in
      RayCluster); 1.20 requires a list-map key to be required or defaulted. They become plain
      (atomic) lists, which also accept two entries of one name.

    So here an omitted `name` stays omitted rather than defaulting to "".

    Kept, because 1.20 accepts them: the `x-kubernetes-validations` CEL rules (5 in RayJob, 2
    in RayCluster: deletionStrategy, managedBy, gcsFaultToleranceOptions). It drops them as
    unknown fields, so this server does not enforce them (1.25+ does).
    """
    crds = copy.deepcopy(crds)

    def edit(schema: Any) -> None:
        if isinstance(schema, list):
            for item in schema:
                edit(item)
            return
        if not isinstance(schema, dict):
            return
        if schema.get("default") == "":
            del schema["default"]
        for value in schema.values():
            edit(value)
        if schema.get("x-kubernetes-list-type") == "map":  # its items are edited by now
            item = schema["items"]
            if any(key not in item.get("required", ()) and "default" not in item["properties"][key]
                   for key in schema["x-kubernetes-list-map-keys"]):
                del schema["x-kubernetes-list-type"], schema["x-kubernetes-list-map-keys"]

    for crd in crds:
        for version in crd["spec"]["versions"]:
            edit(version["schema"]["openAPIV3Schema"])
    return crds


def _install_crds(api: KubeAPI, crds: list[dict[str, Any]]) -> None:
    manifest = json.dumps({"apiVersion": "v1", "kind": "List", "items": crds},
                          separators=(",", ":"))
    # `create`, not `apply`: apply's last-applied annotation would exceed the 256 KiB limit;
    # --validate=false: kubectl's own check knows fields this server does not
    api.kubectl("create", "--validate=false", "-f", "-", input=manifest)
    _wait_until_established(api, [crd["metadata"]["name"] for crd in crds])


def _wait_until_established(api: KubeAPI, names: list[str]) -> None:
    """Watches the CRDs until each is Established. (`kubectl wait` gives up at once on a CRD
    without conditions yet; polling GETs of these 0.3-0.4 MB objects slow the server down.)"""
    context = ssl.create_default_context(cafile=str(api.ca_file))
    request = urllib.request.Request(
        f"{api.url}/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
        f"?watch=1&timeoutSeconds={CRD_ESTABLISHED_TIMEOUT_S:.0f}",
        headers={"Authorization": f"Bearer {api.admin_token}"})
    waiting = {name: "not seen" for name in names}
    timeout_s = CRD_ESTABLISHED_TIMEOUT_S + 10
    with urllib.request.urlopen(request, timeout=timeout_s, context=context) as events:
        for line in events:  # one JSON event a line; the server ends the watch at timeoutSeconds
            event = json.loads(line)
            crd = event["object"]
            name = crd.get("metadata", {}).get("name")
            if name not in waiting:
                continue
            conditions = crd.get("status", {}).get("conditions") or []
            if any(c["type"] == "Established" and c["status"] == "True" for c in conditions):
                del waiting[name]
                if not waiting:
                    return
            else:
                waiting[name] = json.dumps(conditions)
    raise RuntimeError(f"CRDs not Established within {CRD_ESTABLISHED_TIMEOUT_S:.0f} s (their "
                       f"conditions: {waiting}); log {api.log_path}:\n{_log_tail(api.log_path)}")


# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def kube_api_server(root: Path) -> Iterator[KubeAPI]:
    """Starts etcd and kube-apiserver in `root` (a fresh temp folder), creates namespace `vatt`
    and KubeRay's CRDs, yields the server, and stops both (their process groups) on exit."""
    (apiserver,) = find_components("kube-apiserver")
    etcd = Path(ETCD)
    # parsing 2.3 MB of YAML takes seconds: done while the servers start
    loading = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="kuberay-crds")
    crds_future = loading.submit(lambda: crds_for_kube_1_20(_load_crds()))
    loading.shutdown(wait=False)
    key_file = _service_account_keys(root)
    token_file, admin_token, tokens = _token_file(root)
    failures = []
    etcd_proc = apiserver_proc = None
    try:
        for attempt in range(3):  # a free port can be taken by another run between pick and bind
            attempt_root = root / f"try{attempt}"
            attempt_root.mkdir()
            deadline = time.monotonic() + STARTUP_TIMEOUT_S
            try:
                etcd_proc, etcd_url = _start_etcd(etcd, attempt_root, deadline)
                apiserver_proc, url, ca_file, log_path = _start_apiserver(
                    apiserver, attempt_root, etcd_url, token_file, key_file)
                _wait_for(apiserver_proc, f"{url}/readyz", "kube-apiserver", log_path, deadline,
                          token=admin_token, ca_file=ca_file)
                break
            except RuntimeError as err:
                _stop(apiserver_proc)
                _stop(etcd_proc)
                etcd_proc = apiserver_proc = None
                failures.append(f"attempt {attempt + 1}: {err}")
        else:
            raise RuntimeError("the test Kubernetes API server did not start:\n"
                               + "\n".join(failures))
        api = KubeAPI(url=url, ca_file=ca_file, admin_token=admin_token, tokens=tokens,
                      log_path=log_path, key_file=key_file,
                      audit_path=log_path.parent / "audit.log")
        api.kubectl("create", "namespace", NAMESPACE)
        _install_crds(api, crds_future.result())
        yield api
    finally:
        _stop(apiserver_proc)
        _stop(etcd_proc)
