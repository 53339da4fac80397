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
gone on and Ray Train has rotated its checkpoints.

The gate compares like with like. A candidate is promoted when its value of the configured metric
beats the promoted model's by the margin (direction from vatt.evaluate.metrics.LOWER_IS_BETTER);
the first candidate is promoted. The two values are compared only when they were measured on the
same clips, with the same settings and evaluation code (vatt.evaluate.identity); when the stored
number of the promoted model is not comparable, the evaluation re-measures the promoted model on
the candidate's data in the same run (vatt.evaluate.pipeline) and the gate decides on those two
numbers. Without a comparable number for both, nothing is promoted. The margin is the larger of
`eval.promotion.margin` (the metric's run-to-run noise between equally good training runs,
measured: benchmarks/gate_noise.py) and, for metrics that are a mean over queries (MRR, R@k),
`eval.promotion.noise_z` standard errors of the paired per-query difference of the two models on
this evaluation's queries. Every decision is appended with both numbers and the margin, promoted
or not.

Safety: the candidate's checkpoint is checked (present, weights readable, hash) before anything is
written (by the evaluation that loaded it, or here), the registry's copy is checked against that
hash, and the document is replaced atomically (locally: a temporary file renamed over it; on S3:
a single PUT), so a failed evaluation or a corrupt checkpoint leaves the registry exactly as it
was. Both the registry and the checkpoint may be local folders or s3:// prefixes (through
vatt.storage.ObjectStore). Concurrent writers never lose each other's decisions: a local
registry is serialised by a lease on `registry.lock` (an exclusive `flock` the kernel releases
when its holder dies, SIGKILL and the OOM killer included, so a killed gate never blocks the next
one; the file names the holder: host, pid, since when, and when its lease expires); on S3 each
decision is a compare-and-swap (a PUT conditional on the ETag read, or on there being no document
yet), re-read and re-decided when another evaluation wrote first.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import socket
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Optional

from vatt.checkpoints import (MODEL_FILE, MODEL_FILES, CheckpointError, file_uri,
                              verify_checkpoint)
from vatt.evaluate.identity import describe_part, differences, metric_part
from vatt.evaluate.metrics import LOWER_IS_BETTER, is_better_or_equal
from vatt.storage import ObjectStore, is_s3_uri

REGISTRY_FILE = "registry.json"
CAS_ATTEMPTS = 20  # S3: re-reads when other evaluations keep writing first
MODELS_DIR = "models"
LOCK_FILE = "registry.lock"
LEASE_S = 300.0  # a decision (read, copy the model files, write) takes seconds; past this it is stuck


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
    # what produced the candidate's number (vatt.evaluate.identity); numbers are compared only
    # when the metric's part of it is the same for both models
    evaluation: Optional[dict[str, Any]] = None
    margin: float = 0.0  # the margin the candidate had to beat the promoted model by
    # where promoted_value came from: "stored" (the registry's number, comparable) or
    # "re-measured" (the promoted model evaluated on the candidate's data in this run)
    promoted_value_source: Optional[str] = None


@dataclass
class ChampionMeasure:
    """The promoted model re-measured on the candidate's evaluation data (or why it could not
    be): vatt.evaluate.pipeline.remeasure_champion."""

    weights_sha256: str  # of the promoted model it measured (the gate checks it is still that one)
    metrics: dict[str, float]  # the flat metrics of the re-measured task
    evaluation: Optional[dict[str, Any]]  # the identity of the re-measurement
    ranks: Optional[list[int]] = None  # per query, for retrieval metrics
    error: Optional[str] = None  # set: it could not be re-measured, and why


@dataclass(frozen=True, kw_only=True)
class Candidate:
    """What the gate decides on: the evaluated checkpoint, its numbers and the gate's settings."""

    checkpoint: str | Path
    weights_sha256: str
    config: dict[str, Any]
    data_version: Any
    metrics: dict[str, Any]  # the flat "<task>.<metric>" dict of the evaluation
    metric: str  # the gate's metric (eval.promotion.metric)
    value: float  # the candidate's value of it
    evaluation: Optional[dict[str, Any]]  # its identity (vatt.evaluate.identity)
    margin: float  # eval.promotion.margin
    noise_z: float  # eval.promotion.noise_z
    ranks: Optional[list[int]]  # per query, for retrieval metrics


def paired_noise(metric: str, candidate: Optional[list], champion: Optional[list]) -> Optional[float]:
    """Standard error of the mean per-query difference between two models ranked on the same
    queries (1-based ranks, in the same order), for metrics that are a mean over queries: MRR
    (1/rank) and R@k (rank <= k). None for other metrics or without both rank lists."""
    name = metric.rpartition(".")[2]
    if not candidate or not champion or len(candidate) != len(champion) or len(candidate) < 2:
        return None
    if name == "MRR":
        def score(rank: float) -> float:
            return 1.0 / rank
    elif name.startswith("R@") and name[2:].isdigit():
        k = int(name[2:])

        def score(rank: float) -> float:
            return float(rank <= k)
    else:
        return None
    diffs = [score(a) - score(b) for a, b in zip(candidate, champion)]
    mean = sum(diffs) / len(diffs)
    variance = sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1)
    return math.sqrt(variance / len(diffs))


def lookup_metric(metrics: dict[str, Any], name: str) -> float:
    """Value of a flat "<task>.<metric>" or "<task>@<dataset>.<metric>" name; the error lists
    what is available."""
    if name not in metrics:
        raise RegistryError(f"promotion metric '{name}' (eval.promotion.metric) is not among the "
                            f"evaluated metrics: {', '.join(sorted(metrics))}. Evaluate its task "
                            "or set eval.promotion.metric to one of these")
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
    def _lock(self, timeout_s: float = 60.0, lease_s: float = LEASE_S) -> Iterator[None]:
        """The local registry's lease (S3 registries use conditional writes instead): an
        exclusive flock on `registry.lock`, released by the kernel when the holder exits or is
        killed; the file says who holds it and until when, for the error a waiter gives."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / LOCK_FILE
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise RegistryError(self._held_by(path, timeout_s)) from None
                    time.sleep(0.1)
            now = time.time()
            lease = {"host": socket.gethostname(), "pid": os.getpid(),
                     "since": _iso(now), "expires": _iso(now + lease_s)}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(lease).encode(), 0)
            try:
                yield
            finally:
                os.ftruncate(fd, 0)  # released: no holder named
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _held_by(self, path: Path, waited_s: float) -> str:
        try:
            lease = json.loads(path.read_text() or "{}")
        except (OSError, ValueError):
            lease = {}
        holder = (f"pid {lease.get('pid')} on {lease.get('host')} since {lease.get('since')}"
                  if lease else "a process that wrote no lease")
        expired = lease.get("expires") and lease["expires"] < _iso(time.time())
        return (f"registry {self.root} is held by {holder} for over {waited_s:.0f}s"
                + (f"; its lease expired at {lease['expires']}, so it is stuck: stop that "
                   "process (the lock is released when it exits)" if expired else
                   "; try again when that evaluation has decided"))

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
                 evaluation: Optional[dict[str, Any]] = None, margin: float = 0.0,
                 noise_z: float = 0.0, ranks: Optional[list[int]] = None,
                 champion: Optional[ChampionMeasure] = None,
                 weights_sha256: Optional[str] = None) -> Decision:
        """Decide whether the evaluated checkpoint replaces the promoted model, record it.

        `metrics` is the flat "<task>.<metric>" dict of the evaluation; `evaluation` its
        identity (vatt.evaluate.identity). The candidate's value is compared with the promoted
        model's stored value when the metric's part of both identities is the same, else with
        `champion` (the promoted model re-measured on the candidate's data in this run); with
        neither, the candidate is not promoted and the decision says why. It must be better by
        the margin: max(`margin` (eval.promotion.margin), `noise_z` x the paired standard error
        of the per-query difference, for MRR and R@k with the candidate's `ranks` and the
        promoted model's).
        `weights_sha256`: the hash of the weights the caller has already read and loaded
        (vatt.checkpoints.read_checkpoint), so they are not read again; None: they are read and
        checked here. Either way the registry's copy must match it.
        Raises CheckpointError or RegistryError (and leaves the registry unchanged) when the
        candidate or the registry is unusable.
        """
        if weights_sha256 is None:
            weights_sha256 = verify_checkpoint(checkpoint, self.store)
        candidate = Candidate(checkpoint=checkpoint, weights_sha256=weights_sha256, config=config,
                              data_version=data_version, metrics=metrics, metric=metric,
                              value=lookup_metric(metrics, metric), evaluation=evaluation,
                              margin=margin, noise_z=noise_z, ranks=ranks)
        if not self.is_s3:
            with self._lock():
                doc = self.read()
                decision = self._decide(doc, candidate, champion)
                self._write(doc)
            return decision
        for _ in range(CAS_ATTEMPTS):
            raw, etag = self.store.read_versioned(self.path)
            doc = self._parse(raw) if raw is not None else {"promoted": None, "decisions": []}
            decision = self._decide(doc, candidate, champion)
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

    def _decide(self, doc: dict[str, Any], candidate: Candidate,
                champion: Optional[ChampionMeasure]) -> Decision:
        """Decide against `doc`'s promoted model and record the decision in `doc`."""
        metric, value, evaluation = candidate.metric, candidate.value, candidate.evaluation
        margin, noise_z, ranks = candidate.margin, candidate.noise_z, candidate.ranks
        checkpoint, weights_sha256 = candidate.checkpoint, candidate.weights_sha256
        current = doc["promoted"]
        current_value: Optional[float] = None
        source: Optional[str] = None
        used_margin = margin
        mine = metric_part(evaluation, metric)
        if current is None:
            promote, reason = True, "first model: nothing promoted yet"
        else:
            theirs = metric_part(current.get("evaluation"), metric)
            key = metric.rpartition(".")[0]
            if metric in current["metrics"] and mine is not None and not differences(mine, theirs):
                current_value, source = float(current["metrics"][metric]), "stored"
                champion_ranks = (current.get("ranks") or {}).get(key)
            elif (champion is not None and champion.error is None
                  and champion.weights_sha256 == current["weights_sha256"]
                  and metric in champion.metrics and mine is not None
                  and not differences(mine, metric_part(champion.evaluation, metric))):
                current_value, source = float(champion.metrics[metric]), "re-measured"
                champion_ranks = champion.ranks
            else:
                champion_ranks = None
            if current_value is None:
                promote = False
                if champion is not None and champion.error is not None:
                    why = f"re-measuring it failed: {champion.error}"
                elif champion is not None and champion.weights_sha256 != current["weights_sha256"]:
                    why = ("another model was promoted while this one was evaluated; the next "
                           "evaluation compares with it")
                elif champion is not None:
                    why = ("its re-measurement is not comparable either ("
                           + "; ".join(differences(mine, metric_part(champion.evaluation, metric)))
                           + ")")
                else:
                    why = "it was not re-measured (promotion gate called without a re-measurement)"
                if mine is None:
                    why = ("this evaluation's data has no content hash (batches held in memory "
                           "or a dataset without a manifest), so no number can be compared")
                reason = (f"not promoted: no comparable number for the promoted model; its "
                          f"stored {metric} was measured on {describe_part(theirs)}, this one on "
                          f"{describe_part(mine)}"
                          + (f" ({'; '.join(differences(mine, theirs))})" if mine and theirs else "")
                          + f", and {why}")
            else:
                noise = paired_noise(metric, ranks, champion_ranks)
                if noise is not None and noise_z * noise > used_margin:
                    used_margin = noise_z * noise
                    margin_words = (f"{used_margin:.4f} ({noise_z:g} paired standard errors over "
                                    f"{len(ranks or [])} queries, eval.promotion.noise_z)")
                else:
                    margin_words = f"{used_margin:g} (eval.promotion.margin)"
                against = ("the promoted model" if source == "stored" else
                           "the promoted model, re-measured on this evaluation's data (its stored "
                           "number: " + "; ".join(differences(mine, theirs)) + ")")
                direction = "lower" if metric.rpartition(".")[2] in LOWER_IS_BETTER else "higher"
                if used_margin:
                    promote = is_better_or_equal(metric, value, current_value, used_margin)
                    reason = (f"better than {against} by at least the margin {margin_words}"
                              if promote else
                              f"not better than {against} by the margin {margin_words}: "
                              "the difference is within run-to-run noise"
                              if is_better_or_equal(metric, value, current_value) else
                              f"worse than {against} ({direction} is better)")
                else:
                    promote = is_better_or_equal(metric, value, current_value)
                    reason = (f"not worse than {against}" if promote
                              else f"worse than {against} ({direction} is better)")
            if source == "re-measured" and not promote and champion is not None:
                # the promoted model keeps its place; its number on today's data is what the
                # next candidate on the same data compares with (no re-measurement then)
                self._restate(current, champion, key)
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        decision = Decision(now, str(checkpoint), metric, value, current_value, promote, reason,
                            evaluation, used_margin, source)
        if promote:
            kept = self.keep(checkpoint, weights_sha256)
            key = metric.rpartition(".")[0]
            doc["promoted"] = {"checkpoint": kept, "source_checkpoint": str(checkpoint),
                               "weights_sha256": weights_sha256, "config": candidate.config,
                               "data_version": candidate.data_version,
                               "metrics": candidate.metrics,
                               "promotion_metric": metric, "evaluation": evaluation,
                               "ranks": {key: ranks} if ranks else {},
                               "promoted_at": now}
        doc["decisions"].append(asdict(decision))
        return decision

    @staticmethod
    def _restate(current: dict[str, Any], champion: ChampionMeasure, key: str) -> None:
        """Record the promoted model's re-measured numbers of one task (`key`: "<task>" or
        "<task>@<dataset>") as its numbers for that task, with their identity."""
        prefix = key + "."
        current["metrics"] = {name: value for name, value in current["metrics"].items()
                              if not name.startswith(prefix)}
        current["metrics"].update({name: value for name, value in champion.metrics.items()
                                   if name.startswith(prefix)})
        evaluation = dict(current.get("evaluation") or {})
        tasks = dict(evaluation.get("tasks") or {})
        tasks[key] = (champion.evaluation or {}).get("tasks", {}).get(key)
        evaluation["tasks"] = tasks
        current["evaluation"] = evaluation
        current["ranks"] = {**(current.get("ranks") or {}), key: champion.ranks}
        current["remeasured_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="seconds")


__all__ = ["Registry", "Decision", "Candidate", "ChampionMeasure", "RegistryError", "CheckpointError",
           "lookup_metric", "paired_noise"]
