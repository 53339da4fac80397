"""Search spaces as YAML: which config keys a sweep varies, how, and what it selects on.

    # tuning/droptoken_sharing.yaml
    metric: val_MRR            # a key of the training rows (vatt.train.validation.VAL_KEYS)
    mode: max
    scheduler: {type: asha, grace_period: 60, reduction_factor: 2}   # or {type: fifo}
    params:
      model.video.drop_rate: {grid: [0.0, 0.25, 0.5, 0.75]}
      model.audio.drop_rate: {same_as: model.video.drop_rate}
      model.sharing: {grid: [specific, agnostic]}

A parameter is a config key exactly as the dotlist writes it, with one of
  grid: [v, ...]         every value, in every combination with the other grids
  choice: [v, ...]       one value drawn per sample
  uniform: [low, high]   drawn uniformly
  loguniform: [low, high] drawn uniformly in log space (low > 0)
  same_as: other.key     the value of another parameter (swept together)
`--samples N` repeats the grid N times and draws N values of the others. Every key and every
value that can be checked before a trial (grid and choice values, range bounds) is applied to
the base config and validated (`vatt.config.replace`), so an unknown key, a wrong type or a
value the config refuses fails here, naming it, before any trial starts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vatt.config import Config, ConfigError, replace

KINDS = ("grid", "choice", "uniform", "loguniform", "same_as")
SCHEDULERS = ("asha", "fifo")
SPACE_DIR = Path(__file__).resolve().parent


class SpaceError(ValueError):
    """A search space that cannot be swept; the message names the file and the key."""


@dataclass
class Space:
    path: Path
    params: dict[str, tuple[str, Any]]  # key -> (kind, values) for grid/choice/uniform/loguniform
    tied: dict[str, str] = field(default_factory=dict)  # key -> the key it follows (same_as)
    metric: str = "val_MRR"
    mode: str = "max"
    scheduler: dict[str, Any] = field(default_factory=lambda: {"type": "asha"})

    @property
    def keys(self) -> list[str]:
        return [*self.params, *self.tied]

    def grid_size(self) -> int:
        size = 1
        for kind, values in self.params.values():
            if kind == "grid":
                size *= len(values)
        return size

    def tune_space(self) -> dict[str, Any]:
        """The `param_space` of a Tuner (the tied keys are filled in per trial)."""
        from ray import tune

        build = {"grid": tune.grid_search, "choice": tune.choice,
                 "uniform": lambda bounds: tune.uniform(*bounds),
                 "loguniform": lambda bounds: tune.loguniform(*bounds)}
        return {key: build[kind](values) for key, (kind, values) in self.params.items()}

    def assignment(self, trial_config: dict[str, Any]) -> dict[str, Any]:
        """Every swept key's value in a trial, the tied ones included, in the space's order."""
        values = {key: trial_config[key] for key in self.params}
        values |= {key: values[source] for key, source in self.tied.items()}
        return values


def dotlist(values: dict[str, Any]) -> list[str]:
    """KEY=VALUE overrides (lists as JSON, which OmegaConf's dotlist reads)."""
    return [f"{key}={json.dumps(value) if isinstance(value, (list, dict)) else value}"
            for key, value in values.items()]


def resolve_path(space: str | Path) -> Path:
    """A file path, or the name of a space under tuning/ (`droptoken_sharing`)."""
    path = Path(space)
    if path.exists():
        return path
    named = SPACE_DIR / (path.name if path.suffix in (".yaml", ".yml") else f"{path.name}.yaml")
    if named.exists():
        return named
    available = sorted(p.stem for p in SPACE_DIR.glob("*.yaml"))
    raise SpaceError(f"no search space {space!r}: not a file, and not one of tuning/'s "
                     f"{', '.join(available)}")


def load_space(space: str | Path) -> Space:
    """Read and check the structure of a space file (values are checked by `check_space`)."""
    path = resolve_path(space)
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise SpaceError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(doc, dict):
        raise SpaceError(f"{path}: expected a mapping with 'params' (and optionally metric, mode, "
                         "scheduler), got " + type(doc).__name__)
    unknown = set(doc) - {"params", "metric", "mode", "scheduler"}
    if unknown:
        raise SpaceError(f"{path}: unknown top-level key(s) {sorted(unknown)}; allowed: params, "
                         "metric, mode, scheduler")
    raw = doc.get("params") or {}
    if not isinstance(raw, dict) or not raw:
        raise SpaceError(f"{path}: the space is empty: 'params' must map config keys (e.g. "
                         "model.video.drop_rate) to {grid: [...]}, {choice: [...]}, {uniform: "
                         "[low, high]}, {loguniform: [low, high]} or {same_as: other.key}")
    params: dict[str, tuple[str, Any]] = {}
    tied: dict[str, str] = {}
    for key, spec in raw.items():
        where = f"{path}: params.{key}"
        if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in KINDS:
            raise SpaceError(f"{where}: expected exactly one of {', '.join(KINDS)}, e.g. "
                             f"{{grid: [0.0, 0.5]}}; got {spec!r}")
        kind, values = next(iter(spec.items()))
        if kind == "same_as":
            if values not in raw or values == key:
                raise SpaceError(f"{where}: same_as names {values!r}, which is not another "
                                 f"parameter of the space ({', '.join(raw)})")
            tied[key] = values
            continue
        if kind in ("grid", "choice") and (not isinstance(values, list) or not values):
            raise SpaceError(f"{where}: {kind} needs a non-empty list of values, got {values!r}")
        if kind in ("uniform", "loguniform"):
            ok = (isinstance(values, list) and len(values) == 2
                  and all(isinstance(v, (int, float)) for v in values) and values[0] < values[1])
            if not ok or (kind == "loguniform" and values[0] <= 0):
                raise SpaceError(f"{where}: {kind} needs [low, high] with low < high"
                                 f"{' and low > 0' if kind == 'loguniform' else ''}, got {values!r}")
        params[key] = (kind, values)
    for key, source in tied.items():
        if source in tied:
            raise SpaceError(f"{path}: params.{key} follows {source}, which itself follows "
                             f"{tied[source]}; point same_as at a swept parameter")
    scheduler = doc.get("scheduler") or {"type": "asha"}
    if not isinstance(scheduler, dict) or scheduler.get("type") not in SCHEDULERS:
        raise SpaceError(f"{path}: scheduler must be {{type: asha, grace_period: N, "
                         f"reduction_factor: R}} or {{type: fifo}}, got {scheduler!r}")
    mode = doc.get("mode", "max")
    if mode not in ("max", "min"):
        raise SpaceError(f"{path}: mode must be max or min, got {mode!r}")
    return Space(path=path, params=params, tied=tied, metric=str(doc.get("metric", "val_MRR")),
                 mode=mode, scheduler=dict(scheduler))


def _probes(space: Space) -> list[dict[str, Any]]:
    """Assignments that put every checkable value of every parameter through the config."""
    probes: list[dict[str, Any]] = []
    for key, (kind, values) in space.params.items():
        for value in values:  # grid/choice values; the bounds of a range
            probe = {k: (v[1][0]) for k, v in space.params.items()}
            probe[key] = value
            probes.append(space.assignment(probe))
    return probes


def check_space(space: Space, base: Config) -> None:
    """Apply every checkable value to `base`; a key or value the config refuses is an error
    naming the parameter. Also checks the metric is one the training rows carry."""
    from vatt.train.validation import VAL_KEYS

    for probe in _probes(space):
        try:
            replace(base, dotlist(probe))
        except ConfigError as err:
            raise SpaceError(f"{space.path}: {err} (a value of the space: {probe})") from None
    row_keys = {"loss_total", "loss_video_audio", "loss_video_text", *VAL_KEYS}
    if space.metric not in row_keys:
        raise SpaceError(f"{space.path}: metric {space.metric!r} is not reported by training; "
                         f"use one of {', '.join(sorted(row_keys))}")
    if space.metric.startswith("loss_"):
        raise SpaceError(f"{space.path}: metric {space.metric!r} is a training loss; a sweep "
                         f"selects on held-out data: use one of {', '.join(VAL_KEYS)}")


__all__ = ["Space", "SpaceError", "load_space", "check_space", "dotlist", "resolve_path",
           "SPACE_DIR"]
