"""What produced an evaluation's numbers: the identity the promotion gate compares.

Two values of a metric are comparable only when everything that changes that metric is the same
for both, and nothing else is in the way (vatt.evaluate.registry). Per task (and per dataset:
"<task>@<dataset>", with "<task>" for the task's first dataset, what "<task>.<metric>" means):

    dataset   the dataset folder read
    splits    per split role (train, test) the SHA-256 of the clips it read: each clip's id and
              its members' checksums from the manifest, in clip order, and the class names.
              Adding training clips to a retrieval dataset changes no test split; a re-ingest
              that changes one test clip changes that split
    settings  the settings that change this task's number (TASK_SETTINGS by protocol, plus
              TASK_EXTRA_SETTINGS): a probe's recipe for a linear probe, the fine-tuning recipe
              for fine-tuning, windows and captions per clip for retrieval. Where the report
              goes, the batch size of feature extraction and the device are not in it: they
              change no number
    code      the version of the code that computes the number (`code_version`): the SHA-256
              of the evaluation, loader and model modules' source

A model's number is measured with the checkpoint's own model and input (data.num_frames, ...),
which are not in the identity: comparing two models of different input on the same items is
what the gate is for.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Optional

from omegaconf import OmegaConf

from vatt.config import Config, to_dict
from vatt.evaluate.tasks import TASKS, Protocol

if TYPE_CHECKING:
    from vatt.evaluate.data import EvalJob

# the settings (dotted config keys) that change a task's number, by the task's protocol
TASK_SETTINGS: dict[Protocol, tuple[str, ...]] = {
    Protocol.linear: ("eval.probe.rank", "eval.probe.lr", "eval.probe.epochs",
                      "eval.probe.batch_size", "eval.probe.weight_decay", "eval.seed",
                      "data.eval_num_windows"),
    # the shuffle buffer's bound decides the order of the training windows
    Protocol.finetune: ("eval.finetune.steps", "eval.finetune.lr", "eval.finetune.warmup_steps",
                        "eval.finetune.batch_size", "eval.finetune.test_crops",
                        "eval.finetune.shuffle_mb", "eval.seed", "data.eval_num_windows"),
    Protocol.zero_shot: ("data.eval_num_windows",),
}
# and those of one task beyond its protocol's
TASK_EXTRA_SETTINGS: dict[str, tuple[str, ...]] = {
    # the captions per clip are the retrieval queries
    "text_video_retrieval": ("data.num_text_candidates",),
    "audio_finetune": ("eval.audioset_train",),
}
# the modules whose source decides an evaluation's numbers (relative to the vatt package)
EVALUATION_CODE = ("evaluate/features.py", "evaluate/metrics.py", "evaluate/probes.py",
                   "evaluate/finetune.py", "evaluate/retrieval.py", "evaluate/tasks.py",
                   "evaluate/runner.py", "evaluate/data.py", "data/loader.py", "text.py",
                   "model/backbones.py", "model/heads.py", "model/layers.py",
                   "model/tokenizers.py", "model/vatt.py")


@lru_cache(maxsize=1)
def code_version() -> str:
    """SHA-256 (first 16 hex digits) of the source of EVALUATION_CODE: any change of the code
    that computes a number makes the numbers measured before it incomparable (the gate then
    re-measures the promoted model)."""
    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for name in EVALUATION_CODE:
        digest.update(name.encode() + b"\0" + (root / name).read_bytes())
    return digest.hexdigest()[:16]


def task_settings(cfg: Config, task: str) -> dict[str, Any]:
    """{dotted key: value} of the settings that change `task`'s number."""
    values = OmegaConf.create(to_dict(cfg))
    keys = (*TASK_SETTINGS[TASKS[task].protocol], *TASK_EXTRA_SETTINGS.get(task, ()))
    return {key: OmegaConf.select(values, key) for key in keys}


def clips_sha256(manifest: Mapping[str, Any], splits: tuple[str, ...]) -> str:
    """SHA-256 of the clips of `splits` in a manifest: each clip's id and members' checksums
    (the whole record less its shard where a manifest has no checksums), and the class names."""
    shards = {shard for name in splits for shard in manifest["splits"][name]["shards"]}
    clips = [{"clip_id": c.get("clip_id"), "sha256": c["sha256"]} if "sha256" in c
             else {k: v for k, v in c.items() if k != "shard"}
             for c in manifest["clips"] if c.get("shard") in shards]
    body = {"clips": clips, "label_names": list(manifest.get("label_names") or [])}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def batches_sha256(batches: list | tuple) -> str:
    """SHA-256 of batches held in memory (dicts of tensors, arrays or lists), in order."""
    import numpy as np

    digest = hashlib.sha256()
    for batch in batches:
        for key in sorted(batch):
            value = batch[key]
            if hasattr(value, "detach"):
                value = value.detach().cpu().numpy()
            digest.update(key.encode() + b"\0")
            if isinstance(value, np.ndarray):
                digest.update(str((value.dtype, value.shape)).encode()
                              + np.ascontiguousarray(value).tobytes())
            else:
                digest.update(json.dumps(value, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def evaluation_identity(cfg: Config, jobs: Iterable["EvalJob"]) -> dict[str, Any]:
    """{"tasks": {"<task>@<dataset>" and "<task>": {dataset, splits, settings, code}}} of an
    evaluation of `jobs` (vatt.evaluate.data.plan) under `cfg`. An EvalSplit is hashed from its
    dataset's manifest, batches held in memory (a list) as they are; a split of neither kind
    (e.g. a one-shot iterator) has no content hash (None): its numbers compare with no other."""
    from vatt.data.loader import DataError, read_manifest
    from vatt.evaluate.data import EvalSplit

    manifests: dict[str, Optional[dict]] = {}

    def split_sha256(dataset: str, split: Any) -> Optional[str]:
        if isinstance(split, (list, tuple)):  # batches held in memory
            return batches_sha256(split)
        if not isinstance(split, EvalSplit):
            return None
        if dataset not in manifests:
            try:
                manifests[dataset] = read_manifest(str(cfg.data.path), dataset, cfg.storage)
            except (DataError, OSError, ValueError):
                manifests[dataset] = None
        try:
            return clips_sha256(manifests[dataset], split.splits) if manifests[dataset] else None
        except KeyError:  # a split the manifest does not list
            return None

    version = code_version()
    tasks: dict[str, Any] = {}
    for job in jobs:
        task = job.task.name
        part = {"dataset": job.dataset, "settings": task_settings(cfg, task), "code": version,
                "splits": {role: split_sha256(job.dataset, split)
                           for role, split in job.splits.items()}}
        tasks[job.key] = part
        tasks.setdefault(task, part)  # the task's first job
    return {"tasks": tasks}


def metric_part(evaluation: Optional[Mapping[str, Any]], metric: str) -> Optional[dict[str, Any]]:
    """The part of an evaluation's identity that decides whether two values of `metric`
    ("<task>.<name>" or "<task>@<dataset>.<name>") can be compared; None when it has none (an
    evaluation recorded before identities were per task, or a split without a content hash)."""
    key = metric.rpartition(".")[0]
    part = ((evaluation or {}).get("tasks") or {}).get(key)
    if not part or any(digest is None for digest in part.get("splits", {}).values()):
        return None
    return part


def describe_part(part: Optional[Mapping[str, Any]]) -> str:
    """'<dataset> (test 1a2b3c4d5e6f, ...), code <version>' for a decision's reason."""
    if not part:
        return "unrecorded data (an older or in-memory evaluation)"
    splits = ", ".join(f"{role} {digest[:12]}" for role, digest in sorted(part["splits"].items()))
    return f"{part['dataset']} ({splits}), evaluation code {part['code']}"


def differences(mine: Optional[Mapping[str, Any]], theirs: Optional[Mapping[str, Any]]) -> list[str]:
    """What differs between two identity parts, in words (empty: comparable)."""
    if mine is None or theirs is None:
        return ["the promoted model's number has no recorded identity" if theirs is None
                else "this evaluation's data has no content hash"]
    found = []
    if mine["dataset"] != theirs["dataset"]:
        found.append(f"dataset {theirs['dataset']} -> {mine['dataset']}")
    for role in sorted(set(mine["splits"]) | set(theirs["splits"])):
        if mine["splits"].get(role) != theirs["splits"].get(role):
            found.append(f"{role} split content")
    for key in sorted(set(mine["settings"]) | set(theirs["settings"])):
        if mine["settings"].get(key) != theirs["settings"].get(key):
            found.append(f"{key} {theirs['settings'].get(key)} -> {mine['settings'].get(key)}")
    if mine["code"] != theirs["code"]:
        found.append(f"evaluation code {theirs['code']} -> {mine['code']}")
    return found


__all__ = ["evaluation_identity", "metric_part", "describe_part", "differences", "code_version",
           "task_settings", "clips_sha256", "batches_sha256", "TASK_SETTINGS", "TASK_EXTRA_SETTINGS",
           "EVALUATION_CODE"]
