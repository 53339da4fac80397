"""The Kubernetes API as the platform uses it: RayJobs, and the logs of their pods.

Every call goes through `KubeClient._call`, which

- retries transient faults (connection refused or reset, 429 with its Retry-After, 5xx) with
  exponential backoff, `cluster.api_attempts` tries in all;
- raises permanent faults at once, named, with the fix: a TLS certificate the kubeconfig's
  certificate-authority does not trust, credentials the server refuses (401), a kubeconfig
  that names no usable server;
- turns the API's refusals into errors that say what to do: 409 (the RayJob exists: resume or
  rename), 403 (which verb on which resource the identity lacks, and where RBAC grants it), 422
  (the fields the server rejected), 404 (not found, and where it looked).

A create that may have succeeded is idempotent: `create_rayjob` labels the body with a token of
its own (CREATE_TOKEN_LABEL); when a try failed transiently and the retry answers 409, the
RayJob found under that name carrying the token is the one this call created, and is returned.
"""

from __future__ import annotations

import json
import logging
import os
import random
import ssl
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Optional, TypeVar

log = logging.getLogger("vatt.cluster")

RAY_GROUP, RAY_VERSION, RAYJOBS = "ray.io", "v1", "rayjobs"
TRANSIENT_STATUS = {429, 500, 502, 503, 504}
# a per-call random token on a created RayJob: a retried create recognises its own object by it
CREATE_TOKEN_LABEL = "vatt.dev/create-token"
T = TypeVar("T")


class ClusterError(RuntimeError):
    """A Kubernetes operation that failed; the message says what was wrong and what to do."""


class TransientClusterError(ClusterError, ConnectionError):
    """The API could not be reached or was overloaded for every try (vatt.faults counts a
    ConnectionError as transient, so a flow task may retry later)."""


class PermanentClusterError(ClusterError):
    """A fault no retry can mend (TLS trust, credentials, configuration): raised at the first
    try, naming the cause and the fix."""


class JobExistsError(ClusterError):
    """409: a RayJob of that name exists."""


class PermissionDeniedError(ClusterError, PermissionError):
    """403: the identity in use lacks a verb on a resource."""


class InvalidObjectError(ClusterError):
    """422: the server rejected fields of the object."""


class NotFoundError(ClusterError):
    """404."""


@dataclass(frozen=True)
class Operation:
    """What a call does, for messages: `verb` `resource` `name` in `namespace`."""

    verb: str  # the RBAC verb: get, list, create, delete, ...
    resource: str  # e.g. "rayjobs.ray.io", "pods/log"
    namespace: str
    name: Optional[str] = None

    def __str__(self) -> str:
        target = f"{self.resource} {self.name}" if self.name else self.resource
        return f"{self.verb} {target} in namespace {self.namespace}"


def _status_body(err: Any) -> dict[str, Any]:
    try:
        return json.loads(err.body or "{}")
    except (TypeError, ValueError):
        return {}


def explain(err: Any, op: Operation) -> ClusterError:
    """The ClusterError for an ApiException `err` raised by `op`."""
    body = _status_body(err)
    message = body.get("message") or getattr(err, "reason", None) or str(err)
    status = getattr(err, "status", None)
    if status == 409:
        return JobExistsError(
            f"cannot {op}: it already exists ({message}). The same run name resumes the run from "
            f"its checkpoint once the old RayJob is gone: `kubectl delete rayjob {op.name} -n "
            f"{op.namespace}` and submit again; or submit under another train.run_name")
    if status == 403:
        return PermissionDeniedError(
            f"cannot {op}: the identity in use lacks the '{op.verb}' verb on '{op.resource}' in "
            f"namespace {op.namespace} ({message}). Grant it with a Role bound to that identity "
            "(k8s/rbac/ has the platform's), or use a kubeconfig context that has it "
            "(cluster.kube_context)")
    if status == 422:
        causes = (body.get("details") or {}).get("causes") or []
        fields = "; ".join(f"{cause.get('field', '?')}: {cause.get('message', '')}"
                           for cause in causes) or message
        return InvalidObjectError(
            f"cannot {op}: the API server rejected the object: {fields}. Fix those fields in the "
            "manifests under k8s/ (or the overrides that fill them)")
    if status == 404:
        return NotFoundError(
            f"cannot {op}: not found ({message}). Check cluster.namespace, and that KubeRay's "
            "CRDs are installed (`kubectl get crd rayjobs.ray.io`)")
    if status == 401:
        return PermanentClusterError(
            f"cannot {op}: the API server did not accept the credentials (HTTP 401: {message}): "
            "the kubeconfig's token or client certificate is expired, revoked or for another "
            "cluster; refresh it (e.g. `gcloud container clusters get-credentials ...`) or pick "
            "another context with cluster.kube_context")
    return ClusterError(f"cannot {op}: HTTP {status}: {message}")


def _causes(err: Optional[BaseException]) -> list[BaseException]:
    """`err` and what it wraps (urllib3's MaxRetryError.reason, __cause__, __context__)."""
    chain: list[BaseException] = []
    while err is not None and all(err is not seen for seen in chain) and len(chain) < 10:
        chain.append(err)
        reason = getattr(err, "reason", None)
        err = reason if isinstance(reason, BaseException) else (err.__cause__ or err.__context__)
    return chain


def _is_tls(err: BaseException) -> bool:
    """An SSL error, or the kubernetes client's ApiException(status=0) that wraps one."""
    import urllib3.exceptions as u3

    return isinstance(err, (ssl.SSLError, u3.SSLError)) or (
        getattr(err, "status", None) == 0 and str(getattr(err, "reason", "")).startswith("SSLError"))


def permanent_fault(err: BaseException, op: Operation,
                    ca_file: Optional[str] = None) -> Optional[PermanentClusterError]:
    """The named error for a fault that no retry mends (TLS, configuration), else None."""
    import urllib3.exceptions as u3

    chain = _causes(err)
    tls = [cause for cause in chain if _is_tls(cause)]
    if tls:
        detail = " ".join(str(tls[-1]).split())[:400]  # the innermost: the handshake's own words
        if "CERTIFICATE_VERIFY_FAILED" in detail and ("hostname" in detail
                                                     or "IP address mismatch" in detail):
            return PermanentClusterError(
                f"cannot {op}: the API server's certificate does not name the address the "
                f"kubeconfig's server uses: {detail}. Use the server address the certificate "
                "was issued for (`kubectl config view --minify`)")
        if "CERTIFICATE_VERIFY_FAILED" in detail:
            where = f" ({ca_file})" if ca_file else ""
            return PermanentClusterError(
                f"cannot {op}: the API server's certificate is not trusted by the kubeconfig's "
                f"certificate-authority{where}: {detail}. Point the cluster's "
                "certificate-authority(-data) at the CA that signed the server's certificate "
                "(fetch the kubeconfig again), and check that the server address is that "
                "cluster's")
        return PermanentClusterError(
            f"cannot {op}: TLS with the API server failed: {detail}. Check the kubeconfig's "
            "server address (https, the API server's port) and its client certificate")
    for cause in chain:
        if isinstance(cause, (u3.LocationValueError, u3.ProxySchemeUnknown)):
            return PermanentClusterError(
                f"cannot {op}: the kubeconfig's server address is not usable: "
                f"{str(cause).rstrip('.')}. Fix the "
                "cluster's `server:` in the kubeconfig (or cluster.kube_context)")
    return None


def _is_transient(err: BaseException) -> bool:
    from kubernetes.client.exceptions import ApiException

    if isinstance(err, ApiException):
        return err.status in TRANSIENT_STATUS or err.status == 0  # 0: no HTTP answer at all
    module = type(err).__module__ or ""
    return isinstance(err, (ConnectionError, TimeoutError)) or module.startswith("urllib3")


def _retry_after(err: BaseException) -> Optional[float]:
    headers = getattr(err, "headers", None) or {}
    try:
        return float(headers.get("Retry-After"))
    except (TypeError, ValueError):
        return None


def api_client_from_kubeconfig(context: Optional[str] = None):
    """A kubernetes ApiClient for the kubeconfig context `context` (None: the current one), or
    the pod's service account when running inside the cluster without a kubeconfig. Its own
    urllib3 retries are off: KubeClient retries, with backoff and one clear error."""
    from kubernetes import client, config

    configuration = client.Configuration()
    # KUBECONFIG as it is now: the client library reads it once, when it is first imported
    kubeconfig = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    in_cluster = ("KUBERNETES_SERVICE_HOST" in os.environ
                  and not os.path.exists(kubeconfig.split(os.pathsep)[0]))
    try:
        if in_cluster and context is None:
            config.load_incluster_config(client_configuration=configuration)
        else:
            config.load_kube_config(config_file=kubeconfig, context=context,
                                    client_configuration=configuration)
    except (config.ConfigException, OSError) as err:
        raise ClusterError(
            f"no Kubernetes credentials: {err}. Point KUBECONFIG at a kubeconfig (or run inside "
            "the cluster with a service account); cluster.kube_context picks a context") from None
    configuration.retries = False
    return client.ApiClient(configuration)


class KubeClient:
    """RayJobs and pod logs in one namespace."""

    def __init__(self, api_client: Any, namespace: str, attempts: int = 6,
                 backoff_s: float = 1.0, max_backoff_s: float = 30.0,
                 sleep: Callable[[float], None] = time.sleep):
        from kubernetes import client

        self.namespace = namespace
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._sleep = sleep
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.ca_file: Optional[str] = getattr(api_client.configuration, "ssl_ca_cert", None)

    def _call(self, op: Operation, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        from kubernetes.client.exceptions import ApiException

        for attempt in range(1, self.attempts + 1):
            try:
                return fn(*args, **kwargs)
            except Exception as err:  # noqa: BLE001 - sorted into transient or explained below
                permanent = permanent_fault(err, op, self.ca_file)
                if permanent is not None:
                    raise permanent from err
                if not _is_transient(err):
                    if isinstance(err, ApiException):
                        raise explain(err, op) from None
                    raise
                if attempt == self.attempts:
                    raise TransientClusterError(
                        f"cannot {op}: the API server is unreachable or overloaded after "
                        f"{self.attempts} tries ({type(err).__name__}: {str(err)[:300]}); check "
                        "that the cluster is up and the kubeconfig's server address") from err
                delay = _retry_after(err) or min(self.max_backoff_s,
                                                 self.backoff_s * 2 ** (attempt - 1))
                delay *= 1 + 0.25 * random.random()  # jitter: many clients do not retry in step
                log.warning("%s: %s (try %d of %d); retrying in %.1f s", op,
                            type(err).__name__, attempt, self.attempts, delay)
                self._sleep(delay)
        raise AssertionError("unreachable")

    # -- RayJobs -----------------------------------------------------------------------------

    def create_rayjob(self, body: dict[str, Any]) -> dict[str, Any]:
        """Create the RayJob `body` (not modified). Idempotent across retries: a 409 after a try
        that may have created it returns the RayJob when it carries this call's token."""
        name = body["metadata"]["name"]
        op = Operation("create", "rayjobs.ray.io", self.namespace, name)
        token = uuid.uuid4().hex
        labels = {**(body["metadata"].get("labels") or {}), CREATE_TOKEN_LABEL: token}
        body = {**body, "metadata": {**body["metadata"], "labels": labels}}
        tries = 0

        def create() -> dict[str, Any]:
            nonlocal tries
            tries += 1
            return self.custom.create_namespaced_custom_object(RAY_GROUP, RAY_VERSION,
                                                               self.namespace, RAYJOBS, body)

        try:
            return self._call(op, create)
        except JobExistsError:
            if tries == 1:  # the first try's 409: someone else's RayJob
                raise
            existing = self.find_rayjob(name)
            if existing is None or (existing["metadata"].get("labels") or {}).get(
                    CREATE_TOKEN_LABEL) != token:
                raise
            log.info("%s: an earlier try had created it (label %s): carrying on", op,
                     CREATE_TOKEN_LABEL)
            return existing

    def get_rayjob(self, name: str) -> dict[str, Any]:
        op = Operation("get", "rayjobs.ray.io", self.namespace, name)
        return self._call(op, self.custom.get_namespaced_custom_object, RAY_GROUP, RAY_VERSION,
                          self.namespace, RAYJOBS, name)

    def find_rayjob(self, name: str) -> Optional[dict[str, Any]]:
        try:
            return self.get_rayjob(name)
        except NotFoundError:
            return None

    def delete_rayjob(self, name: str) -> None:
        """Delete the RayJob; its RayCluster and submitter Job go with it (owner references)."""
        op = Operation("delete", "rayjobs.ray.io", self.namespace, name)
        try:
            self._call(op, self.custom.delete_namespaced_custom_object, RAY_GROUP, RAY_VERSION,
                       self.namespace, RAYJOBS, name, propagation_policy="Background")
        except NotFoundError:
            pass  # already gone: what was asked

    # -- Pods and their events (why a RayJob waits) -----------------------------------------

    def list_pods(self, selector: str) -> list[Any]:
        """The pods (V1Pod) with labels `selector`, e.g. `ray.io/cluster=NAME`."""
        op = Operation("list", "pods", self.namespace)
        return self._call(op, self.core.list_namespaced_pod, self.namespace,
                          label_selector=selector).items

    def pod_events(self, pod: str) -> list[Any]:
        """The events (CoreV1Event) about pod `pod`, oldest first."""
        op = Operation("list", "events", self.namespace)
        events = self._call(op, self.core.list_namespaced_event, self.namespace,
                            field_selector=f"involvedObject.kind=Pod,involvedObject.name={pod}").items
        return sorted(events, key=lambda event: str(event.last_timestamp or event.event_time
                                                    or event.metadata.creation_timestamp or ""))

    def pod_log(self, pod: str, container: str, tail_lines: int,
                previous: bool = False) -> str:
        op = Operation("get", "pods/log", self.namespace, pod)
        return self._call(op, self.core.read_namespaced_pod_log, pod, self.namespace,
                          container=container, tail_lines=tail_lines, previous=previous)

    # -- Logs --------------------------------------------------------------------------------

    def submitter_logs(self, job: str, tail_lines: int = 200) -> str:
        """The last lines of the RayJob's submitter pod (K8sJobMode: KubeRay's Job named after
        the RayJob runs `ray job submit` and streams the job's output), or a line saying why
        there are none."""
        op = Operation("list", "pods", self.namespace)
        try:
            pods = self._call(op, self.core.list_namespaced_pod, self.namespace,
                              label_selector=f"job-name={job}").items
        except ClusterError as err:
            return f"(no submitter logs: {err})"
        if not pods:
            return f"(no submitter logs: no pod with label job-name={job} in {self.namespace})"
        newest = max(pods, key=lambda pod: pod.metadata.creation_timestamp or 0)
        op = Operation("get", "pods/log", self.namespace, newest.metadata.name)
        try:
            return self._call(op, self.core.read_namespaced_pod_log, newest.metadata.name,
                              self.namespace, tail_lines=tail_lines)
        except ClusterError as err:
            return f"(no submitter logs: {err})"


__all__ = ["ClusterError", "TransientClusterError", "PermanentClusterError", "JobExistsError", "PermissionDeniedError",
           "InvalidObjectError", "NotFoundError", "Operation", "KubeClient", "explain",
           "permanent_fault", "api_client_from_kubeconfig", "CREATE_TOKEN_LABEL"]
