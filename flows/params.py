"""Typed flow parameters: Prefect turns these annotations into each deployment's parameter
schema, so the API (and the UI's form) reject a wrong type, an unknown preset or a malformed
override before a run is created. Whether an override names a real config key is checked by
`vatt.config.load_config` in each flow's first task (the message names the key)."""

from __future__ import annotations

from typing import Annotated, Literal, Optional

from pydantic import AfterValidator, Field, StringConstraints, WithJsonSchema

from vatt.config import CREDENTIALS_HINT, available_presets, check_override
from vatt.data.ingest import NAME_PATTERN, SOURCES

Preset = Literal[tuple(available_presets())]  # type: ignore[valid-type]  # configs/*.yaml
Source = Literal[tuple(SOURCES)]  # type: ignore[valid-type]
# an ingested dataset's folder under data.path (vatt.data.ingest.dataset_name checks it too)
DatasetName = Annotated[str, StringConstraints(pattern=f"^{NAME_PATTERN.pattern}$")]

_KEY = r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*"
# a VALUE without "${": no interpolation, so nothing is resolved from the worker's environment
# (vatt.config.check_override). Written without look-ahead: the UI's and the API's schema check
# and pydantic's own regex engine all read it
_LITERAL_VALUE = r"([^$]|\$+[^${])*\$*"
OVERRIDE_DESCRIPTION = (
    "a config override KEY=VALUE, e.g. model.video.drop_rate=0.25. VALUE is literal: "
    "interpolations (${...}, e.g. ${oc.env:VAR}) are refused, because the resolved value would be "
    f"saved with the run; {CREDENTIALS_HINT}")


def _no_interpolation(item: str) -> str:
    check_override(item)  # the message says how to pass the value instead
    return item


# In process (a flow called from Python, a worker starting a run) pydantic checks KEY=... and
# then says why an interpolation is refused; the API and the UI check the JSON schema, whose
# pattern refuses the same values before a run is created
Override = Annotated[str, StringConstraints(pattern=f"^{_KEY}=.*$"),
                     AfterValidator(_no_interpolation),
                     WithJsonSchema({"type": "string", "pattern": f"^{_KEY}={_LITERAL_VALUE}$",
                                     "description": OVERRIDE_DESCRIPTION})]
Overrides = Annotated[list[Override], Field(
    description="config overrides as KEY=VALUE dotlist entries, e.g. model.video.drop_rate=0.25; "
                "values are literal (no ${...} interpolation)")]
# a whole config as YAML on the machine that runs the flow (e.g. the best.yaml of `vatt sweep`),
# used instead of the preset; whether it exists and parses is checked by the flow's first task
ConfigFile = Annotated[str, StringConstraints(pattern=r"^[^\-\s].*\.ya?ml$"), Field(
    description="path of a whole config as YAML (e.g. a sweep's best.yaml) on the machine that "
                "runs the flow, used instead of the preset; overrides apply on top")]

# a Ray Train run name becomes a folder name: no slashes, no leading dot or dash
RunName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,99}$")]
# a git revision of data.dvc; a leading '-' would be read by git as an option
GitRev = Annotated[str, StringConstraints(pattern=r"^[^\-\s][^\s]{0,199}$")]

__all__ = ["Preset", "Source", "DatasetName", "Override", "Overrides", "ConfigFile", "RunName",
           "GitRev", "Optional"]
