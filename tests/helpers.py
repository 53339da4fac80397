"""Helpers shared by test modules (Ray Train processes and run folders)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import psutil


def train_worker_processes(descendants_of: Optional[psutil.Process] = None) -> list[psutil.Process]:
    """Ray Train worker processes: the descendants of `descendants_of`, or any on the machine."""
    candidates = (descendants_of.children(recursive=True) if descendants_of is not None
                  else list(psutil.process_iter()))
    workers = []
    for proc in candidates:
        try:
            if "RayTrainWorker" in " ".join(proc.cmdline()):
                workers.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return workers


def latest_registered_checkpoint(run: Path) -> Optional[str]:
    """The checkpoint Ray Train has committed (all workers reported it), from its run snapshot."""
    try:
        snapshot = json.loads((run / "checkpoint_manager_snapshot.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):  # not yet written, or being written
        return None
    latest = snapshot.get("latest_checkpoint_result")
    return latest and latest["checkpoint_dir_name"]


def tree_digest(root: Path) -> str:
    """SHA-256 over every file under `root`: its relative path and bytes, in sorted order."""
    import hashlib

    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


def tar_members(tar_path: Path) -> dict[str, bytes]:
    """A shard's members by name."""
    import tarfile

    with tarfile.open(tar_path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def tiny_data_folder(root: Path, name: str = "synthetic-howto100m", clips: int = 3) -> Path:
    """A data folder in the ingested layout (vocabulary, a dataset's manifest and shards), a few
    KB: for what moves or names data, not what decodes it."""
    folder = root / name
    (folder / "train").mkdir(parents=True)
    for index in range(clips):
        (folder / "train" / f"shard-{index:05d}.tar").write_bytes(bytes([index]) * (1000 + index))
    (folder / "manifest.json").write_text(json.dumps(
        {"shards": [f"train/shard-{i:05d}.tar" for i in range(clips)]}))
    (root / "vocab.json").write_text(json.dumps({"words": ["<pad>", "<unk>"]}))
    return root
