"""The deployments of prefect.yaml: served from this machine (`vatt serve`), or registered for
the cluster's work pool (`vatt deploy`).

prefect.yaml is the one declaration of the deployments. Its entries without a `work_pool` are
served here: `serve_deployments` turns them into `RunnerDeployment`s (entrypoint, schedules,
parameters, concurrency limit, parameter schema enforcement) and serves them, so runs can be
triggered from the UI, `prefect deployment run FLOW/NAME`, or their schedules. Its entries on a
work pool (`vatt-k8s`) are registered by `deploy_to_pool` against the Prefect server, for the
pool's worker to run as Kubernetes Jobs of the vatt image; their module-path entrypoints load
from the installed package, with no source tree and no pull step.

Schedules: prefect.yaml declares each deployment's first schedules; after that the server's are
the user's, edited in the UI (cron, timezone, paused, added, deleted). Prefect re-sends the
schedules of code at every registration and the server replaces its own with them, so a restart of
`vatt serve` would undo those edits. `register` therefore sends prefect.yaml's schedules only when
the deployment is new on the server or prefect.yaml's schedules for it changed since its last
registration (an edit of the file is the newer decision, and replaces the UI's edits of that
deployment's schedules); otherwise it leaves the server's schedules as they are. What each
deployment's schedules were at its last registration is kept on the server, in the Prefect
Variable `vatt_registered_schedules` (a fingerprint per FLOW/NAME); without it (deleted, or a
server registered by an older vatt), prefect.yaml's schedules are applied once more.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from pathlib import Path
from typing import Any, Optional

import yaml

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PREFECT_YAML = PROJECT_ROOT / "prefect.yaml"


class DeploymentError(RuntimeError):
    """prefect.yaml or the Prefect API cannot be used; the message says what to do."""


DEFAULT_POOL = "vatt-k8s"  # the pool k8s/prefect's worker creates and polls
# a Prefect Variable: {FLOW/NAME: fingerprint of prefect.yaml's schedules at its last registration}
REGISTERED_SCHEDULES = "vatt_registered_schedules"


def read_spec(path: Path = PREFECT_YAML) -> list[dict[str, Any]]:
    """Every deployment entry of prefect.yaml."""
    if not path.is_file():
        raise DeploymentError(f"no {path}: run from the project (where prefect.yaml is) or pass "
                              "its path")
    spec = yaml.safe_load(path.read_text()) or {}
    entries = spec.get("deployments") or []
    if not entries:
        raise DeploymentError(f"{path} declares no deployments")
    return entries


def pool_of(entry: dict[str, Any]) -> Optional[str]:
    return (entry.get("work_pool") or {}).get("name")


def served_entries(path: Path = PREFECT_YAML) -> list[dict[str, Any]]:
    """The entries `vatt serve` serves: those without a work pool."""
    return [entry for entry in read_spec(path) if not pool_of(entry)]


def pool_entries(pool: str = DEFAULT_POOL, path: Path = PREFECT_YAML) -> list[dict[str, Any]]:
    """The entries on work pool `pool` (what `vatt deploy` registers)."""
    entries = [entry for entry in read_spec(path) if pool_of(entry) == pool]
    if not entries:
        pools = sorted({pool_of(entry) for entry in read_spec(path) if pool_of(entry)})
        raise DeploymentError(f"{path} declares no deployment on work pool {pool!r} (pools named "
                              f"there: {', '.join(pools) or 'none'})")
    return entries


def load_flow(entrypoint: str):
    """The flow object of an entrypoint: a module path (`vatt_flows.retrain.retrain`, as prefect.yaml
    names them) or `path/to/file.py:flow` (imported as a module of this project)."""
    if ":" in entrypoint:
        file_part, name = entrypoint.rsplit(":", 1)
        module_name = Path(file_part).with_suffix("").as_posix().replace("/", ".")
    elif "." in entrypoint:
        module_name, name = entrypoint.rsplit(".", 1)
    else:
        raise DeploymentError(f"entrypoint {entrypoint!r} is neither a module path "
                              "('vatt_flows.retrain.retrain') nor 'path/to/file.py:flow'")
    module = importlib.import_module(module_name)
    try:
        return getattr(module, name)
    except AttributeError:
        raise DeploymentError(f"entrypoint {entrypoint!r}: {module.__name__} has no {name}") from None


def declared_schedules(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """The schedules a prefect.yaml entry declares, as {cron, timezone, active}."""
    schedules = []
    for schedule in entry.get("schedules") or []:
        if "cron" not in schedule:
            raise DeploymentError(
                f"prefect.yaml, deployment {entry.get('name')!r}: schedule {schedule} has no "
                "'cron'; vatt reads cron schedules (cron, timezone, active)")
        schedules.append({"cron": schedule["cron"], "timezone": schedule.get("timezone"),
                          "active": schedule.get("active", True)})
    return schedules


def schedules_fingerprint(entry: dict[str, Any]) -> str:
    """What `register` records of an entry's declared schedules, to notice an edit of them."""
    canonical = json.dumps(declared_schedules(entry), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _to_deployment(entry: dict[str, Any], schedules: bool, pool: Optional[str] = None,
                   paused: bool = False):
    from prefect.deployments.runner import EntrypointType
    from prefect.schedules import Cron

    flow = load_flow(entry["entrypoint"])
    crons = [Cron(s["cron"], timezone=s["timezone"], active=s["active"])
             for s in declared_schedules(entry)] if schedules else []
    kwargs: dict[str, Any] = {}
    if pool:
        kwargs = {"work_pool_name": pool,
                  "job_variables": (entry.get("work_pool") or {}).get("job_variables") or None}
    return flow.to_deployment(
        name=entry["name"], description=entry.get("description"), tags=entry.get("tags"),
        parameters=entry.get("parameters") or {}, schedules=crons or None, paused=paused,
        concurrency_limit=entry.get("concurrency_limit"),
        enforce_parameter_schema=entry.get("enforce_parameter_schema", True),
        entrypoint_type=EntrypointType.MODULE_PATH, **kwargs)


def build_deployments(path: Path = PREFECT_YAML, schedules: bool = True,
                      paused: bool = False) -> list:
    """RunnerDeployments for the served entries of prefect.yaml (schedules off: none
    attached; paused: registered with their schedules paused)."""
    return [_to_deployment(entry, schedules, paused=paused) for entry in served_entries(path)]


def build_pool_deployments(pool: str = DEFAULT_POOL, path: Path = PREFECT_YAML,
                           schedules: bool = True) -> list:
    """RunnerDeployments for the entries of prefect.yaml on work pool `pool`."""
    return [_to_deployment(entry, schedules, pool) for entry in pool_entries(pool, path)]


def check_api() -> str:
    """The URL of the Prefect server to serve against; an error that says how to start one
    when none is configured or it does not answer."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    url: Optional[str] = PREFECT_API_URL.value()
    if not url:
        raise DeploymentError(
            "no Prefect server configured (PREFECT_API_URL is not set), and a throwaway API "
            "would be invisible to the UI. Start one with `prefect server start` (UI at "
            "http://127.0.0.1:4200), then `prefect config set "
            "PREFECT_API_URL=http://127.0.0.1:4200/api` (or export it) and run `vatt serve` again")

    async def health() -> Optional[Exception]:
        async with get_client() as client:
            return await client.api_healthcheck()

    problem = asyncio.run(health())
    if problem is not None:
        raise DeploymentError(f"the Prefect server at PREFECT_API_URL={url} does not answer "
                              f"({problem}); is `prefect server start` running?")
    return url


def register(deployments: list, entries: list[dict[str, Any]]) -> list:
    """Create or update `deployments` (built from prefect.yaml's `entries`, in the same order) on
    the Prefect server, each with prefect.yaml's schedules when it is new there or they changed
    since its last registration, otherwise with the server's schedules as they are (the UI's
    edits). Returns the deployments carrying the schedules they were registered with, so that
    registering them again (as `serve` does) changes nothing."""
    from prefect import get_client
    from prefect.client.schemas.actions import DeploymentScheduleUpdate
    from prefect.exceptions import ObjectNotFound
    from prefect.variables import Variable

    record = dict(Variable.get(REGISTERED_SCHEDULES, default=None) or {})
    with get_client(sync_client=True) as client:
        for deployment, entry in zip(deployments, entries, strict=True):
            name = f"{deployment.flow_name}/{deployment.name}"
            fingerprint = schedules_fingerprint(entry)
            try:
                existing = client.read_deployment_by_name(name)
            except ObjectNotFound:
                existing = None
            if existing is not None and record.get(name) == fingerprint:
                # the update replaces the server's schedules with the ones sent: send its own
                deployment.schedules = [
                    DeploymentScheduleUpdate(schedule=kept.schedule, active=kept.active,
                                             parameters=kept.parameters, slug=kept.slug)
                    for kept in existing.schedules]
            deployment.apply()
            record[name] = fingerprint
            Variable.set(REGISTERED_SCHEDULES, record, overwrite=True)
    return deployments


def serve_deployments(path: Path = PREFECT_YAML, limit: Optional[int] = None,
                      schedules: bool = True) -> None:
    """Serve the deployments of prefect.yaml without a work pool until interrupted; schedules
    off: they are registered paused (the server keeps their schedules, none runs), as `serve`
    leaves them when it stops."""
    from prefect import serve

    check_api()
    deployments = register(build_deployments(path, paused=not schedules), served_entries(path))
    serve(*deployments, limit=limit, print_starting_message=True)


def deploy_to_pool(pool: str = DEFAULT_POOL, path: Path = PREFECT_YAML) -> list[str]:
    """Register (create or update) the deployments of prefect.yaml on work pool `pool` with the
    Prefect server at PREFECT_API_URL; returns their names as FLOW/NAME. The pool must exist
    (k8s/prefect's worker creates it at start)."""
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    check_api()
    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(pool)
        except ObjectNotFound:
            raise DeploymentError(
                f"work pool {pool!r} does not exist on the Prefect server: start the worker of "
                "k8s/prefect (`kubectl apply -k k8s`; its init container creates the pool), or "
                f"create it with `prefect work-pool create {pool} --type kubernetes "
                "--base-job-template k8s/prefect/base-job-template.json`") from None
    deployments = register(build_pool_deployments(pool, path), pool_entries(pool, path))
    return [f"{deployment.flow_name}/{deployment.name}" for deployment in deployments]


__all__ = ["serve_deployments", "build_deployments", "build_pool_deployments", "deploy_to_pool",
           "register", "declared_schedules", "schedules_fingerprint", "REGISTERED_SCHEDULES",
           "check_api", "read_spec", "served_entries", "pool_entries", "load_flow",
           "DeploymentError", "PREFECT_YAML", "DEFAULT_POOL"]
