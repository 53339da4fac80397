"""The `sweep` flow: a Ray Tune sweep of pretraining runs over a search space of tuning/
(vatt_tuning.sweep.run_sweep), with its table, trade-off plot and best config as artifacts.

The sweep's folder is pinned to the flow run (`sweeps/<space>-<flow run name>`, or `out`, which
may be s3://bucket/prefix as `vatt sweep --out` takes it: the way to sweep on a Ray cluster), so a
retried flow run resumes the sweep: finished trials are not run again."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from pydantic import Field, StringConstraints

from vatt_flows.artifacts import publish_sweep
from vatt_flows.params import Overrides, Preset
from vatt_tuning.space import SPACE_DIR
from vatt.config import DEFAULT_PRESET

SpaceName = Literal[tuple(sorted(p.stem for p in SPACE_DIR.glob("*.yaml")))]  # type: ignore[valid-type]
SpaceFile = Annotated[str, StringConstraints(pattern=r"^[^\-\s].*\.ya?ml$")]  # a YAML of your own
Samples = Annotated[int, Field(ge=1, le=1000, description="repeats of the grid / draws of the "
                                                           "random parameters")]


def pinned_out(space: str) -> str:
    from prefect.runtime import flow_run

    return f"sweeps/{space}-{flow_run.name}"


@task(name="run-sweep", cache_policy=NO_CACHE)
def run_sweep_task(space: str, preset: str, overrides: list[str], samples: int,
                   out: str, scheduler: Optional[str] = None) -> dict[str, Any]:
    """Tune runs the trials (each a Ray Train run); a trial whose workers fail is restarted by
    Ray Train, a failed trial once by Tune; the task itself is not retried."""
    from vatt_tuning.sweep import run_sweep

    result = run_sweep(space, preset=preset, overrides=overrides, samples=samples, out=out,
                       scheduler=scheduler)
    return {"out": result.uri, "rows": result.rows, "best": result.best,
            "resumed": result.resumed, "metric": result.space.metric,
            "files": {name: str(path) for name, path in result.files.items()},
            "uris": {name: f"{result.uri}/{name}" for name in result.files}}


@flow(name="sweep", description="Ray Tune sweep of VATT pretraining runs (DropToken rate, "
                                "backbone sharing, ...) selected on the validation split")
def sweep(space: Union[SpaceName, SpaceFile] = "droptoken_sharing", preset: Preset = DEFAULT_PRESET,
          overrides: Overrides = [], samples: Samples = 1,
          out: Optional[str] = None,
          scheduler: Optional[Literal["asha", "fifo"]] = None) -> dict[str, Any]:
    swept = run_sweep_task(space, preset, overrides, samples, out or pinned_out(space), scheduler)
    publish_sweep(swept)
    return {key: swept[key] for key in ("out", "best", "resumed", "files")}
