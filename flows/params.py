"""Typed flow parameters: Prefect turns these annotations into each deployment's parameter
schema, so the API (and the UI's form) reject a wrong type, an unknown preset or a malformed
override before a run is created. Whether an override names a real config key is checked by
`vatt.config.load_config` in each flow's first task (the message names the key)."""

from __future__ import annotations

from typing import Annotated, Literal, Optional

from pydantic import Field, StringConstraints

from vatt.config import available_presets
from vatt.data.ingest import NAME_PATTERN, SOURCES

Preset = Literal[tuple(available_presets())]  # type: ignore[valid-type]  # configs/*.yaml
Source = Literal[tuple(SOURCES)]  # type: ignore[valid-type]
# an ingested dataset's folder under data.path (vatt.data.ingest.dataset_name checks it too)
DatasetName = Annotated[str, StringConstraints(pattern=f"^{NAME_PATTERN.pattern}$")]

Override = Annotated[str, StringConstraints(
    pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*=.*$")]
Overrides = Annotated[list[Override], Field(
    description="config overrides as KEY=VALUE dotlist entries, e.g. model.video.drop_rate=0.25")]

# a Ray Train run name becomes a folder name: no slashes, no leading dot or dash
RunName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,99}$")]
# a git revision of data.dvc; a leading '-' would be read by git as an option
GitRev = Annotated[str, StringConstraints(pattern=r"^[^\-\s][^\s]{0,199}$")]

__all__ = ["Preset", "Source", "DatasetName", "Override", "Overrides", "RunName", "GitRev", "Optional"]
