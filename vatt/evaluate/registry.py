"""The model registry and its promotion gate.

The registry is one JSON document, `<registry_path>/registry.json`:

    {"promoted": {model entry} | null,
     "decisions": [{time, checkpoint, metric, candidate_value, promoted_value, promoted, reason}]}

A model entry is what a promoted model *is*: the checkpoint reference (path or URI) with the
SHA-256 of its weights file, the config (as a dict), the data version it was trained on and the
metrics it was evaluated with. Promotion keeps the model: the checkpoint's weights, config,
vocabulary and provenance files are copied to `<registry_path>/models/<weights sha256[:16]>/`,
and that copy is the entry's `checkpoint` (`source_checkpoint` is where it came from), so a
promoted model still loads after its run has gone on and Ray Train has rotated its checkpoints. A candidate is promoted when its value of the configured metric is
not worse than the promoted model's (direction from vatt.evaluate.metrics.LOWER_IS_BETTER); the
first candidate is promoted. Every decision is appended with both numbers, promoted or not.

Safety: the candidate's checkpoint is checked (present, weights readable, hash) before anything is
written, and the document is replaced atomically (locally: a temporary file renamed over it; on
S3: a single PUT), so a failed evaluation or a corrupt checkpoint leaves the registry exactly as
it was. Both the registry and the checkpoint may be local folders or s3:// prefixes (through
vatt.storage.ObjectStore). Writers to a local registry are serialised by an exclusive lock file;
an S3 registry has no lock, so run one evaluation flow at a time against it (last writer wins).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Optional

from vatt.evaluate.metrics import is_better_or_equal
from vatt.storage import ObjectStore, is_s3_uri

REGISTRY_FILE = "registry.json"
MODELS_DIR = "models"
# what a promoted model needs to be evaluated and traced (not the optimiser or worker RNG files)
KEPT_FILES = ("model.pt", "config.yaml", "vocab.json", "data_version.json", "state.json",
              "history.json")
LOCK_FILE = "registry.lock"
MODEL_FILE = "model.pt"  # the weights file inside a checkpoint folder (vatt.train.checkpoint)


class RegistryError(RuntimeError):
    """The registry document cannot be read or the candidate cannot be registered."""


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, incomplete or unreadable; the message says which file."""


@dataclass
class Decision:
    time: str
    checkpoint: str
    metric: str
    candidate_value: float
    promoted_value: Optional[float]  # the promoted model's value before this decision
    promoted: bool
    reason: str


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_checkpoint(checkpoint: str | Path, store: Optional[ObjectStore] = None) -> str:
    """Check that `checkpoint` (folder or s3:// prefix) holds weights that load; return their
    SHA-256. Raises CheckpointError naming the missing or corrupt file.
    """
    if is_s3_uri(str(checkpoint)):
        store = store or ObjectStore()
        remote = f"{str(checkpoint).rstrip('/')}/{MODEL_FILE}"
        if not store.exists(remote):
            raise CheckpointError(f"checkpoint {checkpoint} has no {MODEL_FILE}: it is missing, "
                                  "incomplete or not a vatt checkpoint")
        with tempfile.TemporaryDirectory() as tmp:
            store.download_file(remote, Path(tmp) / MODEL_FILE)
            return verify_checkpoint(tmp)
    import torch  # local: reading the registry does not need torch

    folder = Path(checkpoint)
    weights = folder / MODEL_FILE
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint {folder} does not exist or is not a folder; give a "
                              "checkpoint folder written by `vatt train` (checkpoint_<step>/)")
    if not weights.is_file():
        raise CheckpointError(f"checkpoint {folder} has no {MODEL_FILE}: it is incomplete or not "
                              "a vatt checkpoint")
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for truncated/garbled files
        raise CheckpointError(f"checkpoint weights {weights} cannot be read ({type(err).__name__}:"
                              f" {err}); the file is corrupt, re-copy it or pick another "
                              "checkpoint") from None
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"checkpoint weights {weights} hold no state_dict")
    return file_sha256(weights)


def lookup_metric(metrics: dict[str, Any], name: str) -> float:
    """Value of a flat "<task>.<metric>" name; the error lists what is available."""
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

    def __init__(self, root: str | Path, store: Optional[ObjectStore] = None):
        self.is_s3 = is_s3_uri(str(root))
        self.store = store or ObjectStore()
        self.root = str(root).rstrip("/") if self.is_s3 else Path(root)
        self.path = f"{self.root}/{REGISTRY_FILE}" if self.is_s3 else self.root / REGISTRY_FILE

    def read(self) -> dict[str, Any]:
        """The registry document; an empty one if none was written yet."""
        if not self.store.exists(self.path):
            return {"promoted": None, "decisions": []}
        try:
            doc = json.loads(self.store.read_text(self.path))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise RegistryError(f"registry {self.path} is not valid JSON ({err}); restore it from "
                                "a backup or move it away to start a new registry") from None
        if not isinstance(doc, dict) or "promoted" not in doc or "decisions" not in doc:
            raise RegistryError(f"registry {self.path} lacks the 'promoted'/'decisions' keys")
        return doc

    @property
    def promoted(self) -> Optional[dict[str, Any]]:
        return self.read()["promoted"]

    @contextmanager
    def _lock(self, timeout_s: float = 60.0) -> Iterator[None]:
        if self.is_s3:  # no lock on object storage (see the module docstring)
            yield
            return
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
        """Copy the checkpoint's KEPT_FILES into the registry; returns the copy's location."""
        source = str(checkpoint).rstrip("/")
        target = f"{self.root}/{MODELS_DIR}/{weights_sha256[:16]}"
        for name in KEPT_FILES:
            if self.store.exists(f"{source}/{name}"):
                self.store.write_bytes(f"{target}/{name}", self.store.read_bytes(f"{source}/{name}"))
        copied = self.store.read_bytes(f"{target}/{MODEL_FILE}")
        if hashlib.sha256(copied).hexdigest() != weights_sha256:
            raise RegistryError(f"the copy of {source}/{MODEL_FILE} in {target} does not match its "
                                "SHA-256 (the checkpoint changed while it was promoted); evaluate "
                                "again")
        return target

    def _write(self, doc: dict[str, Any]) -> None:
        # ObjectStore writes atomically: temporary file + rename locally, one PUT on S3
        self.store.write_text(self.path, json.dumps(doc, indent=1, sort_keys=True))

    def consider(self, checkpoint: str | Path, *, config: dict[str, Any],
                 data_version: Any, metrics: dict[str, Any], metric: str) -> Decision:
        """Decide whether the evaluated checkpoint replaces the promoted model, record it.

        `metrics` is the flat "<task>.<metric>" dict of the evaluation. Raises CheckpointError or
        RegistryError (and leaves the registry unchanged) when the candidate or the registry is
        unusable.
        """
        weights_sha256 = verify_checkpoint(checkpoint, self.store)
        value = lookup_metric(metrics, metric)
        with self._lock():
            doc = self.read()
            current = doc["promoted"]
            current_value: Optional[float] = None
            if current is None:
                promote, reason = True, "first model: nothing promoted yet"
            else:
                if metric in current["metrics"]:
                    current_value = float(current["metrics"][metric])
                if current_value is None:
                    promote = True
                    reason = (f"the promoted model has no '{metric}' (evaluated under another "
                              "promotion metric); the candidate replaces it")
                else:
                    promote = is_better_or_equal(metric, value, current_value)
                    reason = ("not worse than the promoted model" if promote
                              else "worse than the promoted model")
            now = datetime.now(timezone.utc).isoformat(timespec="seconds")
            decision = Decision(now, str(checkpoint), metric, value, current_value, promote,
                                reason)
            if promote:
                kept = self.keep(checkpoint, weights_sha256)
                doc["promoted"] = {"checkpoint": kept, "source_checkpoint": str(checkpoint),
                                   "weights_sha256": weights_sha256,
                                   "config": config, "data_version": data_version,
                                   "metrics": metrics, "promotion_metric": metric,
                                   "promoted_at": now}
            doc["decisions"].append(asdict(decision))
            self._write(doc)
        return decision


__all__ = ["Registry", "Decision", "RegistryError", "CheckpointError", "verify_checkpoint",
           "lookup_metric", "file_sha256"]
