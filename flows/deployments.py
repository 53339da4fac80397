"""The deployments of prefect.yaml, served from this machine (`vatt serve`).

prefect.yaml is the one declaration of the deployments: `prefect deploy` reads it for a work
pool, and `serve_deployments` turns the same entries into `RunnerDeployment`s (entrypoint,
schedules, parameters, concurrency limit, parameter schema enforcement) and serves them, so
runs can be triggered from the UI, `prefect deployment run FLOW/NAME`, or their schedules.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Optional

import yaml

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PREFECT_YAML = PROJECT_ROOT / "prefect.yaml"


class DeploymentError(RuntimeError):
    """prefect.yaml or the Prefect API cannot be used; the message says what to do."""


def read_spec(path: Path = PREFECT_YAML) -> list[dict[str, Any]]:
    if not path.is_file():
        raise DeploymentError(f"no {path}: run from the project (where prefect.yaml is) or pass "
                              "its path")
    spec = yaml.safe_load(path.read_text()) or {}
    entries = spec.get("deployments") or []
    if not entries:
        raise DeploymentError(f"{path} declares no deployments")
    return entries


def load_flow(entrypoint: str):
    """`flows/retrain.py:retrain` -> the flow object (imported as flows.retrain)."""
    try:
        file_part, name = entrypoint.split(":")
    except ValueError:
        raise DeploymentError(f"entrypoint {entrypoint!r} is not 'path/to/file.py:flow'") from None
    module = importlib.import_module(Path(file_part).with_suffix("").as_posix().replace("/", "."))
    try:
        return getattr(module, name)
    except AttributeError:
        raise DeploymentError(f"entrypoint {entrypoint!r}: {module.__name__} has no {name}") from None


def build_deployments(path: Path = PREFECT_YAML, schedules: bool = True) -> list:
    """RunnerDeployments for the entries of prefect.yaml (schedules off: none attached)."""
    from prefect.schedules import Cron

    deployments = []
    for entry in read_spec(path):
        flow = load_flow(entry["entrypoint"])
        crons = [Cron(s["cron"], timezone=s.get("timezone"), active=s.get("active", True))
                 for s in entry.get("schedules") or [] if "cron" in s] if schedules else []
        deployments.append(flow.to_deployment(
            name=entry["name"], description=entry.get("description"), tags=entry.get("tags"),
            parameters=entry.get("parameters") or {}, schedules=crons or None,
            concurrency_limit=entry.get("concurrency_limit"),
            enforce_parameter_schema=entry.get("enforce_parameter_schema", True)))
    return deployments


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


def serve_deployments(path: Path = PREFECT_YAML, limit: Optional[int] = None,
                      schedules: bool = True) -> None:
    """Serve every deployment of prefect.yaml until interrupted."""
    from prefect import serve

    check_api()
    deployments = build_deployments(path, schedules=schedules)
    serve(*deployments, limit=limit, print_starting_message=True)


__all__ = ["serve_deployments", "build_deployments", "check_api", "read_spec", "DeploymentError",
           "PREFECT_YAML"]
