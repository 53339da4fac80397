"""Submit a run's RayJob, follow it to its end, clean up, and read the results back.

KubeRay drives a RayJob through `status.jobDeploymentStatus` (New, Initializing, Running, then
Complete or Failed; ValidationFailed when the operator refuses the spec) while
`status.jobStatus` is Ray's own view of the job (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED).
`follow` reads both until the deployment status is terminal, calling `on_status` at every change
(the CLI prints a progress line from it; flows log it). Beside the RayJob it reads its pods (the
RayCluster's, label `ray.io/cluster`, and the submitter Job's, label `job-name`) and their events,
and says in the progress line why the job waits or failed: a pod the scheduler cannot place (its
FailedScheduling message), an image that cannot be pulled, a crash loop (with the last lines of
the container's log), an OOM kill, or no operator acting on RayJobs at all. Following stops at
the RayJob's own deadline (spec.activeDeadlineSeconds plus START_MARGIN_S) when that comes
before cluster.timeout_s.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from vatt.cluster.client import ClusterError, JobExistsError, KubeClient, api_client_from_kubeconfig
from vatt.cluster.render import (EVALUATE_SUFFIX, RUN_NAME_LABEL, RenderedJob, job_name,
                                 render_job)
from vatt.config import CleanupPolicy, Config
from vatt.data.publish import data_for_job

log = logging.getLogger("vatt.cluster")

SUCCEEDED = "Complete"
FAILED = ("Failed", "ValidationFailed")
TERMINAL = (SUCCEEDED, *FAILED)
# following stops this long after the RayJob's spec.activeDeadlineSeconds (KubeRay counts it from
# the job's start; the operator may pick it up late): by then KubeRay has failed it
START_MARGIN_S = 900.0
IMAGE_PULL_REASONS = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull")
START_REASONS = ("CreateContainerConfigError", "CreateContainerError", "RunContainerError",
                 "StartError", "ContainerCannotRun")
LOG_TAIL_LINES = 3  # of a crashing container's log, in the one-line reason


class JobFailedError(ClusterError):
    """The RayJob ended Failed; the message holds KubeRay's reason and message and the tail of
    the submitter's logs."""


class FollowTimeout(ClusterError):
    """Stopped following before the RayJob ended (it keeps running)."""


@dataclass(frozen=True)
class JobStatus:
    name: str
    deployment: str  # status.jobDeploymentStatus ("" before the operator has seen the job)
    job: str  # status.jobStatus
    reason: str = ""
    message: str = ""
    elapsed_s: float = 0.0
    waiting: str = ""  # why it waits or failed, read from its pods and events ("": nothing wrong)

    @classmethod
    def of(cls, obj: dict[str, Any], elapsed_s: float = 0.0, waiting: str = "") -> "JobStatus":
        status = obj.get("status") or {}
        return cls(name=obj["metadata"]["name"], deployment=status.get("jobDeploymentStatus", ""),
                   job=status.get("jobStatus", ""), reason=status.get("reason", ""),
                   message=status.get("message", ""), elapsed_s=elapsed_s, waiting=waiting)

    @property
    def finished(self) -> bool:
        return self.deployment in TERMINAL

    @property
    def succeeded(self) -> bool:
        return self.deployment == SUCCEEDED

    def line(self) -> str:
        """One progress line: `rayjob NAME: Running (ray job RUNNING) 0:12:34`, and why it waits
        when something is wrong: `rayjob NAME: Initializing 0:05:00: pod P cannot be scheduled:
        0/2 nodes are available: ...`."""
        minutes, seconds = divmod(int(self.elapsed_s), 60)
        hours, minutes = divmod(minutes, 60)
        job = f" (ray job {self.job})" if self.job else ""
        why = f": {self.waiting}" if self.waiting else ""
        return (f"rayjob {self.name}: {self.deployment or 'waiting for the operator'}{job} "
                f"{hours}:{minutes:02d}:{seconds:02d}{why}")


class PodDiagnosis:
    """Why a RayJob waits or failed, in one line, from its pods and their events. A read that
    fails (e.g. a Role without `events list`) is said once and skipped: following goes on."""

    def __init__(self, client: KubeClient, operator_wait_s: float):
        self.client = client
        self.operator_wait_s = operator_wait_s
        self._unreadable: set[str] = set()

    def __call__(self, rayjob: dict[str, Any], elapsed_s: float) -> str:
        name = rayjob["metadata"]["name"]
        status = rayjob.get("status")
        if not status:
            if elapsed_s < self.operator_wait_s:
                return ""
            # the wait, not the elapsed time, in the text: the reason stays the same every poll
            return (f"no operator is acting on RayJobs: rayjob {name} has no status after "
                    f"{self.operator_wait_s:g} s (cluster.operator_wait_s); "
                    "KubeRay's CRDs are installed but its operator does not seem to run: check "
                    "`kubectl get deploy -A | grep kuberay` and the operator's logs")
        selectors = [f"job-name={name}"]  # KubeRay's submitter Job is named after the RayJob
        if status.get("rayClusterName"):
            selectors.insert(0, f"ray.io/cluster={status['rayClusterName']}")
        found = []
        for selector in selectors:
            for pod in self._read("pods", self.client.list_pods, selector) or []:
                found.extend(self._pod_reasons(pod))
        if not found:
            return ""
        found.sort(key=lambda ranked: ranked[0])  # the worst first: OOM, crashes, pulls, placing
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        return found[0][1] + more

    def _read(self, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except ClusterError as err:
            if what not in self._unreadable:
                self._unreadable.add(what)
                log.warning("cannot read the job's %s, following without them: %s", what, err)
            return None

    def _pod_reasons(self, pod: Any) -> list[tuple[int, str]]:
        name = pod.metadata.name
        reasons: list[tuple[int, str]] = []
        statuses = [*(pod.status.init_container_statuses or []),
                    *(pod.status.container_statuses or [])]
        for container in statuses:
            state, last = container.state, container.last_state
            now_ended = state.terminated if state else None
            last_ended = last.terminated if last else None
            waiting = state.waiting if state else None
            ended = now_ended or last_ended
            if any(end is not None and end.reason == "OOMKilled" for end in (now_ended, last_ended)):
                reasons.append((0, f"pod {name}: container {container.name} was OOM-killed "
                                   f"(memory limit {self._memory_limit(pod, container.name)}; "
                                   f"{container.restart_count} restarts): give its pods more "
                                   "memory in the overlay, or use less (data.batch_size)"))
            elif waiting is not None and waiting.reason == "CrashLoopBackOff":
                exit_ = f", last exit {ended.exit_code} {ended.reason}" if ended else ""
                reasons.append((1, f"pod {name}: container {container.name} is crash-looping "
                                   f"({container.restart_count} restarts{exit_}): "
                                   f"{self._log_tail(name, container.name, True)}"))
            elif waiting is not None and waiting.reason in IMAGE_PULL_REASONS:
                reasons.append((2, f"pod {name}: cannot pull image {container.image}: "
                                   f"{waiting.reason}: {waiting.message or self._event(name)}"))
            elif waiting is not None and waiting.reason in START_REASONS:
                reasons.append((2, f"pod {name}: container {container.name} cannot start: "
                                   f"{waiting.reason}: {waiting.message or self._event(name)}"))
            elif now_ended is not None and now_ended.reason in START_REASONS:
                reasons.append((1, f"pod {name}: container {container.name} cannot start "
                                   f"({container.restart_count} restarts): {now_ended.reason}: "
                                   f"{' '.join((now_ended.message or '').split())[:300]}; "
                                   f"{self._log_tail(name, container.name)}"))
            elif now_ended is not None and now_ended.exit_code:  # between a crash and its restart
                again = " and is restarted" if pod.spec.restart_policy != "Never" else ""
                reasons.append((1, f"pod {name}: container {container.name} exited "
                                   f"{now_ended.exit_code} {now_ended.reason or ''}{again} "
                                   f"({container.restart_count} restarts): "
                                   f"{self._log_tail(name, container.name)}"))
        for condition in pod.status.conditions or []:
            if condition.type == "PodScheduled" and condition.status == "False":
                message = self._event(name, "FailedScheduling") or condition.message or (
                    condition.reason or "no node fits")
                reasons.append((3, f"pod {name} cannot be scheduled: {message}"))
        return reasons

    def _event(self, pod: str, reason: Optional[str] = None) -> str:
        """The newest Warning event's message about `pod` (of `reason` when given)."""
        events = self._read("events", self.client.pod_events, pod) or []
        for event in reversed(events):
            if event.type == "Warning" and (reason is None or event.reason == reason):
                return " ".join((event.message or "").split())
        return ""

    def _log_tail(self, pod: str, container: str, previous_first: bool = False) -> str:
        """The last lines of the container's log: of its run that ended (the previous one while
        it waits to restart, `previous_first`), else of the other."""
        for previous in (previous_first, not previous_first):
            try:
                text = self.client.pod_log(pod, container, LOG_TAIL_LINES, previous=previous)
            except ClusterError:
                continue
            lines = [line.strip()[:200] for line in text.splitlines() if line.strip()]
            if lines:
                return "its log ends: " + " | ".join(lines[-LOG_TAIL_LINES:])
        return "its log is empty or unreadable"

    @staticmethod
    def _memory_limit(pod: Any, container: str) -> str:
        for spec in [*(pod.spec.init_containers or []), *(pod.spec.containers or [])]:
            if spec.name == container and spec.resources and spec.resources.limits:
                return str(spec.resources.limits.get("memory", "none"))
        return "none"


def follow_deadline(timeout_s: float, rayjob: dict[str, Any]) -> tuple[float, str]:
    """How long to follow `rayjob`: cluster.timeout_s, or its spec.activeDeadlineSeconds plus
    START_MARGIN_S when that is sooner (KubeRay has failed the job by then); and why, in words."""
    active = (rayjob.get("spec") or {}).get("activeDeadlineSeconds")
    if active and float(active) + START_MARGIN_S < timeout_s:
        return (float(active) + START_MARGIN_S,
                f"the RayJob's spec.activeDeadlineSeconds={active} plus {START_MARGIN_S:.0f} s "
                f"for start-up, sooner than cluster.timeout_s={timeout_s:.0f}")
    return timeout_s, "cluster.timeout_s"


@dataclass
class JobOutcome:
    name: str
    namespace: str
    run_name: str
    status: JobStatus
    logs: str = ""  # the submitter's log tail (read when the job failed)
    deleted: bool = False
    history: list[JobStatus] = field(default_factory=list)  # every status change seen


def client_for(cfg: Config, api_client: Any = None) -> KubeClient:
    """A KubeClient in cluster.namespace: on `api_client` when given, else on the kubeconfig
    context cluster.kube_context (or the pod's service account inside the cluster)."""
    api_client = api_client or api_client_from_kubeconfig(cfg.cluster.kube_context)
    return KubeClient(api_client, cfg.cluster.namespace, attempts=cfg.cluster.api_attempts)


def submit(client: KubeClient, rendered: RenderedJob, attach: bool = False) -> dict[str, Any]:
    """Create the RayJob. An existing one of that name is a JobExistsError, unless `attach`:
    then the existing RayJob of the same run is followed instead (a retried flow run), or, when
    it has ended Failed, deleted and created again so the entrypoint resumes the run from its
    last checkpoint."""
    try:
        return client.create_rayjob(rendered.rayjob)
    except JobExistsError:
        if not attach:
            raise
    existing = client.get_rayjob(rendered.name)
    owner = (existing["metadata"].get("labels") or {}).get(RUN_NAME_LABEL)
    if owner != rendered.rayjob["metadata"]["labels"][RUN_NAME_LABEL]:
        raise JobExistsError(
            f"RayJob {rendered.name} in namespace {rendered.namespace} exists but was not "
            f"submitted for run {rendered.run_name} (label {RUN_NAME_LABEL}={owner!r}); delete it "
            "or submit under another train.run_name")
    status = JobStatus.of(existing)
    if status.deployment in FAILED:
        log.info("rayjob %s ended %s before; creating it again to resume run %s", rendered.name,
                 status.deployment, rendered.run_name)
        client.delete_rayjob(rendered.name)
        _wait_gone(client, rendered.name)
        return client.create_rayjob(rendered.rayjob)
    log.info("rayjob %s exists (%s): following it", rendered.name, status.deployment or "new")
    return existing


def _wait_gone(client: KubeClient, name: str, timeout_s: float = 300.0) -> None:
    deadline = time.monotonic() + timeout_s
    while client.find_rayjob(name) is not None:
        if time.monotonic() > deadline:
            raise ClusterError(f"rayjob {name} was deleted but is still there after "
                               f"{timeout_s:.0f} s (a finalizer?); check `kubectl describe rayjob "
                               f"{name}`")
        time.sleep(1.0)


def follow(client: KubeClient, name: str, timeout_s: float, poll_s: float,
           on_status: Optional[Callable[[JobStatus], None]] = None,
           operator_wait_s: float = float("inf")) -> tuple[JobStatus, list[JobStatus]]:
    """Read the RayJob's status every `poll_s` until it is terminal; (last status, every change
    of its deployment or job status). Each poll also says why it waits (PodDiagnosis; no status
    after `operator_wait_s`: no operator); a change of that reason is logged once. FollowTimeout
    after `timeout_s` or the RayJob's own deadline (follow_deadline), whichever comes first."""
    started = time.monotonic()
    diagnose = PodDiagnosis(client, operator_wait_s)
    changes: list[JobStatus] = []
    seen: Optional[tuple[str, str]] = None
    said: Optional[tuple[str, str, str]] = None
    while True:
        elapsed = time.monotonic() - started
        rayjob = client.get_rayjob(name)
        deadline_s, why_deadline = follow_deadline(timeout_s, rayjob)
        succeeded = (rayjob.get("status") or {}).get("jobDeploymentStatus") == SUCCEEDED
        status = JobStatus.of(rayjob, elapsed,
                              waiting="" if succeeded else diagnose(rayjob, elapsed))
        if (status.deployment, status.job) != seen:
            seen = (status.deployment, status.job)
            changes.append(status)
        if (status.deployment, status.job, status.waiting) != said:  # said once, not every poll
            said = (status.deployment, status.job, status.waiting)
            log.info("%s", status.line())
        if on_status is not None:
            on_status(status)
        if status.finished:
            return status, changes
        if elapsed > deadline_s:
            raise FollowTimeout(
                f"rayjob {name} has not ended after {deadline_s:.0f} s ({why_deadline}); it is "
                f"{status.deployment or 'not yet picked up by the operator'}"
                f"{': ' + status.waiting if status.waiting else ''} and keeps running: follow it "
                f"with `kubectl get rayjob {name} -n {client.namespace} -w`")
        time.sleep(poll_s)


def cleanup_wanted(policy: CleanupPolicy, succeeded: bool) -> bool:
    return policy == CleanupPolicy.always or (policy == CleanupPolicy.on_success and succeeded)


def run_job(cfg: Config, client: KubeClient, rendered: RenderedJob, attach: bool = False,
            on_status: Optional[Callable[[JobStatus], None]] = None) -> JobOutcome:
    """Submit, follow to the end, read the logs of a failure, clean up per cluster.cleanup.
    Raises JobFailedError when the job failed (after the clean-up)."""
    submit(client, rendered, attach=attach)
    status, changes = follow(client, rendered.name, cfg.cluster.timeout_s, cfg.cluster.poll_s,
                             on_status, operator_wait_s=cfg.cluster.operator_wait_s)
    outcome = JobOutcome(rendered.name, rendered.namespace, rendered.run_name, status,
                         history=changes)
    if not status.succeeded:
        outcome.logs = client.submitter_logs(rendered.name)
    if cleanup_wanted(cfg.cluster.cleanup, status.succeeded):
        client.delete_rayjob(rendered.name)
        outcome.deleted = True
    if not status.succeeded:
        kept = "deleted" if outcome.deleted else (
            f"kept for inspection: `kubectl describe rayjob {rendered.name} -n {rendered.namespace}`")
        raise JobFailedError(
            f"rayjob {rendered.name} ended {status.deployment} (ray job {status.job or 'unknown'})"
            f": {status.reason or 'no reason given'}: {status.message or 'no message'}"
            f"{'; its pods: ' + status.waiting if status.waiting else ''}. The "
            f"RayJob is {kept}. Submitter log tail:\n{outcome.logs}")
    return outcome


def pretrain_on_cluster(cfg: Config, api_client: Any = None,
                        on_status: Optional[Callable[[JobStatus], None]] = None):
    """Pretraining as a RayJob (cluster.target=kubernetes), for the flows: render, submit (or
    follow the run's existing RayJob: a retried flow run), follow, then read the run's history
    and latest checkpoint back from train.storage_path. A local data.path is published under
    data.versions_uri first (vatt.data.publish), so the job reads exactly that version.
    Returns a PretrainResult as local pretraining does."""
    from vatt.checkpoints import HISTORY_FILE, file_uri, list_checkpoints, run_folder
    from vatt.storage import ObjectStore, StorageNotFoundError
    from vatt.train.pretrain import PHASES_JSON, PretrainResult

    store = ObjectStore.from_config(cfg.storage)
    cfg, _ = data_for_job(cfg, store)  # the job reads one published, immutable data version
    rendered = render_job(cfg)
    from vatt.cluster.plan import plan_for  # the plan before the spend, in the flow's log

    for line in plan_for(rendered).lines():
        log.info("%s", line)
    client = client_for(cfg, api_client)
    run_job(cfg, client, rendered, attach=True, on_status=on_status)
    run_uri = run_folder(cfg.train.storage_path, cfg.train.run_name)
    found = [uri for _, uri in list_checkpoints(cfg.train.storage_path, store)
             if uri.startswith(run_uri + "/")]
    if not found:
        raise ClusterError(
            f"rayjob {rendered.name} completed but {run_uri} holds no checkpoint: the entrypoint "
            "did not write where train.storage_path says (check the pods' object-store "
            "settings, the vatt-object-store ConfigMap and Secret)")
    checkpoint = found[-1]
    history = json.loads(store.read_bytes(file_uri(checkpoint, HISTORY_FILE)))
    phases: dict = {}  # the driver in the cluster wrote them (vatt.train.phases)
    try:
        phases = json.loads(store.read_bytes(f"{run_uri}/{PHASES_JSON}"))
    except StorageNotFoundError:
        log.info("%s/%s: not written (a run of an older vatt); no wall-time phases", run_uri,
                 PHASES_JSON)
    return PretrainResult(run_uri=run_uri, checkpoint_uri=checkpoint, history=history, config=cfg,
                          phases=phases)


def outcome_uri(cfg: Config, job: str) -> str:
    """Where the evaluation RayJob `job` writes its outcome (`vatt evaluate --outcome`)."""
    return f"{cfg.eval.output_path.rstrip('/')}/jobs/{job}.json"


def evaluate_on_cluster(cfg: Config, checkpoint: str, overrides: Sequence[str] = (),
                        tasks: Optional[Sequence[str]] = None, promote: bool = True,
                        api_client: Any = None,
                        on_status: Optional[Callable[[JobStatus], None]] = None) -> dict[str, Any]:
    """The evaluation of `checkpoint` (an s3:// checkpoint of run train.run_name) as a RayJob
    named after the run plus "-eval", on the overlay cluster.accelerator: it reads the
    checkpoint and the data version from object storage, runs on a worker (its GPU, when the
    overlay has them), writes the report and the registry's decision under eval.output_path and
    eval.registry_path, and its outcome to `outcome_uri`; returns that outcome
    (vatt.evaluate.pipeline.outcome_summary). An outcome already there (a retried flow run whose
    evaluation had finished) is returned without evaluating again: the gate decides once."""
    from vatt.storage import ObjectStore

    store = ObjectStore.from_config(cfg.storage)
    cfg, _ = data_for_job(cfg, store)
    # the checkpoint's own config is what is evaluated: the data version is the one it read
    # unless the overrides name another
    overrides = [*overrides, f"data.path={cfg.data.path}"] if not any(
        item.startswith("data.path=") for item in overrides) else list(overrides)
    name = job_name(cfg.train.run_name + EVALUATE_SUFFIX)
    answer = outcome_uri(cfg, name)
    if store.exists(answer):
        log.info("evaluation %s already ran (%s): reading its outcome", name, answer)
        return json.loads(store.read_bytes(answer))
    command = ["evaluate", "--checkpoint", checkpoint, "--outcome", answer, "--on-worker",
               *(["--no-promote"] if not promote else []),
               *(["--tasks", *tasks] if tasks else []), *overrides]
    rendered = render_job(cfg, command=command, suffix=EVALUATE_SUFFIX)
    client = client_for(cfg, api_client)
    run_job(cfg, client, rendered, attach=True, on_status=on_status)
    if not store.exists(answer):
        raise ClusterError(f"rayjob {rendered.name} completed but wrote no outcome to {answer}: "
                           "check its logs and the pods' object-store settings")
    return json.loads(store.read_bytes(answer))


__all__ = ["JobStatus", "PodDiagnosis", "follow_deadline", "JobOutcome", "JobFailedError", "FollowTimeout", "client_for", "submit",
           "follow", "run_job", "pretrain_on_cluster", "evaluate_on_cluster", "outcome_uri",
           "cleanup_wanted", "TERMINAL"]
