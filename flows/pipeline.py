"""`vatt pipeline`: the `retrain` flow once, end to end, on the embedded defaults.

It runs against Prefect's ephemeral API whatever the user's Prefect profile says (a profile
pointing at a server or Prefect Cloud is set aside for this run; the run is recorded in the
local Prefect database, which `prefect server start` shows), with a local Ray, the local DVC
remote, the generated default dataset and the `tiny` preset unless told otherwise (a preset
name, or a whole config as YAML: `--config FILE`, `--preset PATH.yaml`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

from vatt.config import DEFAULT_PRESET


def pipeline_parameters(preset: str = DEFAULT_PRESET, overrides: Optional[list[str]] = None,
                        source: str = "synthetic", source_path: Optional[str] = None,
                        promote: bool = True) -> dict[str, Any]:
    """The `retrain` flow's parameters for `vatt pipeline`, checked as the flow checks them (a
    ParameterTypeError says which is wrong). `preset` is a preset name or the path of a YAML
    config (`--preset PATH.yaml`, `--config FILE`): a path becomes the flow's `config`, made
    absolute so the run's record names the file."""
    from vatt_flows.retrain import retrain

    parameters: dict[str, Any] = {"overrides": list(overrides or []), "source": source,
                                  "source_path": source_path, "promote": promote}
    if Path(preset).suffix in (".yaml", ".yml"):
        parameters["config"] = str(Path(preset).resolve())
    else:
        parameters["preset"] = preset
    return retrain.validate_parameters(parameters)


def run_pipeline(preset: str = DEFAULT_PRESET, overrides: Optional[list[str]] = None,
                 source: str = "synthetic", source_path: Optional[str] = None,
                 promote: bool = True) -> tuple[Any, dict[str, Any], float]:
    """(final state, retrain's result, wall seconds including Prefect's start-up). `preset`: a
    preset name or a YAML config file (pipeline_parameters)."""
    from prefect.settings import (PREFECT_API_KEY, PREFECT_API_URL,
                                  PREFECT_SERVER_ALLOW_EPHEMERAL_MODE,
                                  PREFECT_SERVER_ANALYTICS_ENABLED,
                                  PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
                                  temporary_settings)

    from vatt_flows.retrain import retrain

    started = time.perf_counter()
    parameters = pipeline_parameters(preset, overrides, source, source_path, promote)
    with temporary_settings(
            restore_defaults={PREFECT_API_URL, PREFECT_API_KEY},
            updates={PREFECT_SERVER_ALLOW_EPHEMERAL_MODE: True,
                     PREFECT_SERVER_ANALYTICS_ENABLED: False,  # no network here, no telemetry
                     PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: 120}):
        state = retrain(**parameters, return_state=True)
    result = state.result(raise_on_failure=False)
    return state, (result if isinstance(result, dict) else {}), time.perf_counter() - started


__all__ = ["run_pipeline", "pipeline_parameters"]
