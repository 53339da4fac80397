"""The model registry and its promotion gate.

The registry is one JSON document, `<registry_path>/registry.json`:

    {"promoted": {model entry} | null,
     "decisions": [{time, checkpoint, metric, candidate_value, promoted_value, promoted, reason}]}

A model entry is what a promoted model *is*: the checkpoint reference (path or URI) with the
SHA-256 of its weights file, the config (as a dict), the data version it was trained on and the
metrics it was evaluated with. Promotion keeps the model: the checkpoint's weights, config,
vocabulary and provenance files (vatt.checkpoints.MODEL_FILES) are copied to
`<registry_path>/models/<weights sha256[:16]>/`, and that copy is the entry's `checkpoint`
(`source_checkpoint` is where it came from), so a promoted model still loads after its run has
gone on and Ray Train has rotated its checkpoints. A candidate is promoted when its value of the
configured metric is not worse than the promoted model's (direction from
vatt.evaluate.metrics.LOWER_IS_BETTER); the first candidate is promoted. Every decision is
appended with both numbers, promoted or not.

Safety: the candidate's checkpoint is checked (present, weights readable, hash) before anything is
written (by the evaluation that loaded it, or here), the registry's copy is checked against that
hash, and the document is replaced atomically (locally: a temporary file renamed over it; on S3:
a single PUT), so a failed evaluation or a corrupt checkpoint leaves the registry exactly as it
was. Both the registry and the checkpoint may be local folders or s3:// prefixes (through
vatt.storage.ObjectStore). Concurrent writers never lose each other's decisions: a local
registry is serialised by an exclusive lock file; on S3 each decision is a compare-and-swap (a
PUT conditional on the ETag read, or on there being no document yet), re-read and re-decided
when another evaluation wrote first.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Optional

from vatt.checkpoints import (MODEL_FILE, MODEL_FILES, CheckpointError, file_uri,
                              verify_checkpoint)
from vatt.evaluate.metrics import is_better_or_equal
from vatt.storage import ObjectStore, is_s3_uri

REGISTRY_FILE = "registry.json"
CAS_ATTEMPTS = 20  # S3: re-reads when other evaluations keep writing first
MODELS_DIR = "models"
LOCK_FILE = "registry.lock"


class RegistryError(RuntimeError):
    """The registry document cannot be read or the candidate cannot be registered."""


@dataclass
class Decision:
    time: str
    checkpoint: str
    metric: str
    candidate_value: float
    promoted_value: Optional[float]  # the promoted model's value before this decision
    promoted: bool
    reason: str
    # what produced the candidate's number: the metric's dataset (name, manifest hash, split)
    # and the evaluation settings; numbers are compared only when these are equal
    evaluation: Optional[dict[str, Any]] = None


def comparable_part(evaluation: Optional[dict[str, Any]], metric: str) -> Optional[dict[str, Any]]:
    """The part of an evaluation's identity that decides whether two values of `metric` can be
    compared: the data of the metric's task (its first dataset for "<task>.<metric>", the named
    one for "<task>@<dataset>.<metric>") and the evaluation settings."""
    if not evaluation:
        return None
    task = metric.rpartition(".")[0]  # metric names hold no "."
    return {"task": task, "data": (evaluation.get("data") or {}).get(task),
            "settings": evaluation.get("settings")}


def _describe(part: Optional[dict[str, Any]]) -> str:
    if not part or not part.get("data"):
        return "unrecorded data"
    splits = part["data"].get("splits", {})
    return (f"{part['data'].get('dataset')} ("
            + ", ".join(f"{split} {digest[:12] if digest else '?'}" for split, digest in sorted(splits.items()))
            + ")")


def lookup_metric(metrics: dict[str, Any], name: str) -> float:
    """Value of a flat "<task>.<metric>" or "<task>@<dataset>.<metric>" name; the error lists
    what is available."""
    if name not in metrics:
        raise RegistryError(f"promotion metric '{name}' (eval.promotion_metric) is not among the "
                            f"evaluated metrics: {', '.join(sorted(metrics))}. Evaluate its task "
                            "or set eval.promotion_metric to one of these")
    value = float(metrics[name])
    if value != value:  # NaN
        raise RegistryError(f"promotion metric '{name}' is NaN; the evaluation is not usable")
    return value


class Registry:
    """The registry at a local folder or s3:// prefix (`eval.registry_path`)."""

    def __init__(self, root: str | Path, store: ObjectStore):
        self.is_s3 = is_s3_uri(str(root))
        self.store = store
        self.root = str(root).rstrip("/") if self.is_s3 else Path(root)
        self.path = f"{self.root}/{REGISTRY_FILE}" if self.is_s3 else self.root / REGISTRY_FILE

    def read(self) -> dict[str, Any]:
        """The registry document; an empty one if none was written yet."""
        if not self.store.exists(self.path):
            return {"promoted": None, "decisions": []}
        return self._parse(self.store.read_bytes(self.path))

    @property
    def promoted(self) -> Optional[dict[str, Any]]:
        return self.read()["promoted"]

    @contextmanager
    def _lock(self, timeout_s: float = 60.0) -> Iterator[None]:
        """The local registry's lock file (S3 registries use conditional writes instead)."""
        self.root.mkdir(parents=True, exist_ok=True)
        lock = self.root / LOCK_FILE
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                break
            except FileExistsError:
                if time.monotonic() > deadline:
                    raise RegistryError(f"registry {self.root} is locked by {lock} for over "
                                        f"{timeout_s:.0f}s; if no evaluation is running, delete "
                                        "the lock file") from None
                time.sleep(0.1)
        try:
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            yield
        finally:
            lock.unlink(missing_ok=True)

    def keep(self, checkpoint: str | Path, weights_sha256: str) -> str:
        """Copy the checkpoint's model files (vatt.checkpoints.MODEL_FILES) into the registry;
        returns the copy's location."""
        source = str(checkpoint).rstrip("/")
        target = f"{self.root}/{MODELS_DIR}/{weights_sha256[:16]}"
        for name in MODEL_FILES:
            if self.store.exists(file_uri(source, name)):
                self.store.write_bytes(file_uri(target, name),
                                       self.store.read_bytes(file_uri(source, name)))
        copied = self.store.read_bytes(file_uri(target, MODEL_FILE))
        if hashlib.sha256(copied).hexdigest() != weights_sha256:
            raise RegistryError(f"the copy of {file_uri(source, MODEL_FILE)} in {target} does not "
                                "match its SHA-256 (the checkpoint changed while it was "
                                "promoted); evaluate again")
        return target

    def _write(self, doc: dict[str, Any]) -> None:
        # ObjectStore writes atomically: temporary file + rename locally, one PUT on S3
        self.store.write_text(self.path, json.dumps(doc, indent=1, sort_keys=True))

    def consider(self, checkpoint: str | Path, *, config: dict[str, Any],
                 data_version: Any, metrics: dict[str, Any], metric: str,
                 evaluation: Optional[dict[str, Any]] = None,
                 promote_incomparable: bool = True, margin: float = 0.0,
                 weights_sha256: Optional[str] = None) -> Decision:
        """Decide whether the evaluated checkpoint replaces the promoted model, record it.

        `metrics` is the flat "<task>.<metric>" dict of the evaluation; `evaluation` its
        identity (vatt.evaluate.pipeline.evaluation_identity). The values are compared only when
        the metric's data and settings are the same for both models; otherwise there is no
        comparable incumbent, the decision says so, and `promote_incomparable`
        (eval.promote_incomparable) decides. With a `margin` (eval.promotion_margin, the
        metric's measured run-to-run noise) the candidate must be better by at least that much.
        `weights_sha256`: the hash of the weights the caller has already read and loaded
        (vatt.checkpoints.read_checkpoint), so they are not read again; None: they are read and
        checked here. Either way the registry's copy must match it.
        Raises CheckpointError or RegistryError (and leaves the registry unchanged) when the
        candidate or the registry is unusable.
        """
        if weights_sha256 is None:
            weights_sha256 = verify_checkpoint(checkpoint, self.store)
        value = lookup_metric(metrics, metric)
        decide = dict(checkpoint=checkpoint, weights_sha256=weights_sha256, config=config,
                      data_version=data_version, metrics=metrics, metric=metric, value=value,
                      evaluation=evaluation, promote_incomparable=promote_incomparable,
                      margin=margin)
        if not self.is_s3:
            with self._lock():
                doc = self.read()
                decision = self._decide(doc, **decide)
                self._write(doc)
            return decision
        for _ in range(CAS_ATTEMPTS):
            raw, etag = self.store.read_versioned(self.path)
            doc = self._parse(raw) if raw is not None else {"promoted": None, "decisions": []}
            decision = self._decide(doc, **decide)
            body = json.dumps(doc, indent=1, sort_keys=True).encode()
            if self.store.write_if_unchanged(self.path, body, etag):
                return decision
        raise RegistryError(f"registry {self.path} was changed by other evaluations "
                            f"{CAS_ATTEMPTS} times while this decision was made; try again")

    def _parse(self, raw: bytes) -> dict[str, Any]:
        try:
            doc = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise RegistryError(f"registry {self.path} is not valid JSON ({err}); restore it from "
                                "a backup or move it away to start a new registry") from None
        if not isinstance(doc, dict) or "promoted" not in doc or "decisions" not in doc:
            raise RegistryError(f"registry {self.path} lacks the 'promoted'/'decisions' keys")
        return doc

    def _decide(self, doc: dict[str, Any], *, checkpoint: str | Path, weights_sha256: str,
                config: dict[str, Any], data_version: Any, metrics: dict[str, Any], metric: str,
                value: float, evaluation: Optional[dict[str, Any]],
                promote_incomparable: bool, margin: float) -> Decision:
        """Decide against `doc`'s promoted model and record the decision in `doc`."""
        current = doc["promoted"]
        current_value: Optional[float] = None
        if current is None:
            promote, reason = True, "first model: nothing promoted yet"
        else:
            if metric in current["metrics"]:
                current_value = float(current["metrics"][metric])
            mine = comparable_part(evaluation, metric)
            theirs = comparable_part(current.get("evaluation"), metric)
            if current_value is not None and mine != theirs:
                promote = promote_incomparable
                reason = (f"no comparable incumbent: the promoted model's {metric} "
                          f"({current_value:.4f}) was measured on {_describe(theirs)}, this "
                          f"one's on {_describe(mine)} (or with other evaluation settings); " + (
                              "promoted on its own evaluation (eval.promote_incomparable=true)"
                              if promote else "not promoted (eval.promote_incomparable=false)"))
            elif current_value is None:
                promote = True
                reason = (f"the promoted model has no '{metric}' (evaluated under another "
                          "promotion metric); the candidate replaces it")
            elif margin:
                promote = is_better_or_equal(metric, value, current_value, margin)
                reason = (f"better than the promoted model by at least the margin {margin:g} "
                          "(eval.promotion_margin)" if promote else
                          f"not better than the promoted model by the margin {margin:g} "
                          "(eval.promotion_margin: differences within run-to-run noise)")
            else:
                promote = is_better_or_equal(metric, value, current_value)
                reason = ("not worse than the promoted model" if promote
                          else "worse than the promoted model")
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        decision = Decision(now, str(checkpoint), metric, value, current_value, promote, reason,
                            evaluation)
        if promote:
            kept = self.keep(checkpoint, weights_sha256)
            doc["promoted"] = {"checkpoint": kept, "source_checkpoint": str(checkpoint),
                               "weights_sha256": weights_sha256, "config": config,
                               "data_version": data_version, "metrics": metrics,
                               "promotion_metric": metric, "evaluation": evaluation,
                               "promoted_at": now}
        doc["decisions"].append(asdict(decision))
        return decision


__all__ = ["Registry", "Decision", "RegistryError", "CheckpointError", "lookup_metric",
           "comparable_part"]
