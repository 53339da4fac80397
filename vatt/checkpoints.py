"""The checkpoint format, in one place: what a checkpoint holds, where checkpoints live, and how
they are read back. Training writes checkpoints and resumes from them (vatt.train.resume),
evaluation and the model registry read them (vatt.evaluate); every file name is spelled here
and nowhere else.

One checkpoint is one folder (or s3:// prefix), `<train.storage_path>/<run>/checkpoint_<step:08d>/`,
merged by Ray Train from what every worker wrote:

    model.pt          state_dict of the bare model (no DDP / compile wrapper)      rank 0
    optimizer.pt      Adam state                                                   rank 0
    state.json        step, LR-schedule position and value, data position, world   rank 0
    history.json      every logged metrics row so far                              rank 0
    config.yaml       the full config the run trains with                          rank 0
    data_version.json the data version (data.dvc hash) of the dataset trained on   rank 0
    vocab.json        the word vocabulary the run encodes captions with: fixed at  rank 0
                      the run's start, so word ids never drift when data changes
    worker_<r>.pt     RNG states (python, numpy, torch, cuda) + data position       each rank r

Reading one back for evaluation reads each file once, through an ObjectStore (so a local folder
and an s3:// prefix read the same):

    store = ObjectStore.from_config(cfg.storage)
    uri = resolve_checkpoint("latest", cfg.train.storage_path, store)
    saved = read_checkpoint(uri, store)   # config, vocabulary, weights + their SHA-256, step, ...

A saved config is data: an interpolation in it is refused, never resolved. Torch is imported
only where weights are read, so listing checkpoints and reading their configs does not need it.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from vatt.config import Config, ConfigError, from_dict

if TYPE_CHECKING:
    from vatt.storage import ObjectStore

MODEL_FILE = "model.pt"
OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "state.json"
HISTORY_FILE = "history.json"
CONFIG_FILE = "config.yaml"
DATA_VERSION_FILE = "data_version.json"
VOCAB_FILE = "vocab.json"  # {"words": [pad, unk, ...]}, as vatt.text.Vocabulary.save writes it
CHECKPOINT_PREFIX = "checkpoint_"
# what a model needs to be evaluated and traced later: not the optimiser or worker RNG files
# (the registry keeps these of a promoted model)
MODEL_FILES = (MODEL_FILE, CONFIG_FILE, VOCAB_FILE, DATA_VERSION_FILE, STATE_FILE, HISTORY_FILE)

log = logging.getLogger("vatt.checkpoints")


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, incomplete or unreadable; the message says which file."""


def run_folder(storage_path: str, run_name: str) -> str:
    """A run's folder (or s3:// prefix): `<train.storage_path>/<train.run_name>`, where Ray Train
    writes its checkpoints and pretraining its history, loss curve and phases."""
    return f"{storage_path.rstrip('/')}/{run_name}"


def checkpoint_dir_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:08d}"


def worker_file(rank: int) -> str:
    return f"worker_{rank}.pt"


def file_uri(checkpoint: str | Path, name: str) -> str:
    """The location of file `name` of a checkpoint folder or s3:// prefix."""
    return f"{str(checkpoint).rstrip('/')}/{name}"


# ---------------------------------------------------------------------------------------------
# Listing


def list_checkpoints(storage_path: str, store: "ObjectStore") -> list[tuple[float, str]]:
    """(time written, location) of every complete checkpoint of any run under `storage_path`
    (train.storage_path: <storage_path>/<run>/checkpoint_*/ with a state.json)."""
    if not store.exists(storage_path):
        return []
    found = []
    for name in store.list(storage_path):
        parts = name.split("/")
        if len(parts) == 3 and parts[1].startswith(CHECKPOINT_PREFIX) and parts[2] == STATE_FILE:
            state = file_uri(storage_path, name)
            found.append((store.modified_time(state), state.rsplit("/", 1)[0]))
    return sorted(found)


def resolve_checkpoint(ref: str, storage_path: str, store: "ObjectStore") -> str:
    """`ref` as given, or for "latest" the most recently written checkpoint of any run under
    `storage_path`."""
    if ref != "latest":
        return ref
    found = list_checkpoints(storage_path, store)
    if not found:
        raise CheckpointError(f"--checkpoint latest: no checkpoint under {storage_path} "
                              "(train.storage_path); pretrain first or give a checkpoint folder")
    return found[-1][1]


# ---------------------------------------------------------------------------------------------
# Reading


def _interpolations(node: Any, path: str = "") -> list[str]:
    if isinstance(node, dict):
        return [found for key, value in node.items()
                for found in _interpolations(value, f"{path}.{key}" if path else str(key))]
    if isinstance(node, list):
        return [found for i, value in enumerate(node)
                for found in _interpolations(value, f"{path}[{i}]")]
    return [path] if isinstance(node, str) and "${" in node else []


def parse_saved_config(text: str, where: Any) -> Config:
    """A checkpoint's config.yaml as written by training. It is data: an interpolation in it
    (`${oc.env:SECRET}` would be resolved into reports and the registry) is refused, never
    resolved."""
    import yaml

    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise CheckpointError(f"checkpoint config {where} is not YAML: {err}") from None
    found = _interpolations(raw)
    if found:
        raise CheckpointError(f"checkpoint config {where} holds interpolations at "
                              f"{', '.join(found[:5])}: a saved config is data and is not "
                              "resolved; remove them (training never writes any)")
    try:
        return from_dict(raw)
    except (ConfigError, Exception) as err:
        raise CheckpointError(f"checkpoint config {where} is unusable: {err}") from None


def _read_required(checkpoint: str | Path, name: str, store: "ObjectStore", why: str) -> bytes:
    from vatt.storage import StorageNotFoundError

    uri = file_uri(checkpoint, name)
    try:
        return store.read_bytes(uri)
    except (StorageNotFoundError, FileNotFoundError, NotADirectoryError):
        if not store.exists(str(checkpoint)):
            raise CheckpointError(f"checkpoint {checkpoint} does not exist; give a checkpoint "
                                  "folder written by `vatt train` (checkpoint_<step>/) or "
                                  "--checkpoint latest") from None
        raise CheckpointError(f"checkpoint {checkpoint} has no {name}: {why}") from None
    except Exception as err:  # an object store error: no access, unreachable
        raise CheckpointError(f"checkpoint file {uri} cannot be read: {err}") from None


def _read_optional_json(checkpoint: str | Path, name: str, store: "ObjectStore") -> Any:
    uri = file_uri(checkpoint, name)
    if not store.exists(uri):
        return None
    return json.loads(store.read_text(uri))


def read_config(checkpoint: str | Path, store: "ObjectStore") -> Config:
    """The config a checkpoint was trained with."""
    text = _read_required(checkpoint, CONFIG_FILE, store,
                          "it cannot be rebuilt without the config it was trained with").decode()
    return parse_saved_config(text, file_uri(checkpoint, CONFIG_FILE))


def read_vocabulary(checkpoint: str | Path, store: "ObjectStore") -> Optional[tuple[str, ...]]:
    """The word vocabulary a checkpoint was trained with; None (and a warning) for one written
    before checkpoints carried it: the data's is used then."""
    found = _read_optional_json(checkpoint, VOCAB_FILE, store)
    if found is None:
        log.warning("checkpoint %s has no %s (written before checkpoints carried their "
                    "vocabulary): captions are encoded with the data's, which must be the one it "
                    "was trained with", checkpoint, VOCAB_FILE)
        return None
    return tuple(found["words"])


def parse_weights(data: bytes, where: Any) -> dict[str, Any]:
    """The state_dict in the bytes of a model.pt (never unpickled: weights_only)."""
    import torch

    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for truncated/garbled files
        raise CheckpointError(f"checkpoint weights {where} cannot be read ({type(err).__name__}:"
                              f" {err}); the file is corrupt, re-copy it or pick another "
                              "checkpoint") from None
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"checkpoint weights {where} hold no state_dict")
    return state


def read_weights(checkpoint: str | Path, store: "ObjectStore") -> tuple[dict[str, Any], str]:
    """(state_dict, SHA-256 of model.pt), from one read of the file: the hash is of exactly the
    weights that were loaded."""
    data = _read_required(checkpoint, MODEL_FILE, store,
                          "it is incomplete or not a vatt checkpoint")
    return parse_weights(data, file_uri(checkpoint, MODEL_FILE)), hashlib.sha256(data).hexdigest()


def verify_checkpoint(checkpoint: str | Path, store: "ObjectStore") -> str:
    """Check that `checkpoint` holds weights that load; return their SHA-256. Raises
    CheckpointError naming the missing or corrupt file."""
    return read_weights(checkpoint, store)[1]


@dataclass
class SavedCheckpoint:
    """A checkpoint as read back: each of its files read once."""

    uri: str  # the folder or s3:// prefix it was read from
    config: Config
    vocab_words: Optional[tuple[str, ...]]  # None: a checkpoint from before they had one
    weights: dict[str, Any]  # the model's state_dict
    weights_sha256: str
    step: Optional[int]
    data_version: Any


def read_checkpoint(checkpoint: str | Path, store: "ObjectStore") -> SavedCheckpoint:
    """Everything a checkpoint holds about its model (not the optimiser or RNG states)."""
    weights, sha256 = read_weights(checkpoint, store)
    config = read_config(checkpoint, store)
    state = _read_optional_json(checkpoint, STATE_FILE, store)
    return SavedCheckpoint(uri=str(checkpoint), config=config,
                           vocab_words=read_vocabulary(checkpoint, store), weights=weights,
                           weights_sha256=sha256, step=state.get("step") if state else None,
                           data_version=_read_optional_json(checkpoint, DATA_VERSION_FILE, store))


__all__ = ["MODEL_FILE", "OPTIMIZER_FILE", "STATE_FILE", "HISTORY_FILE", "CONFIG_FILE",
           "DATA_VERSION_FILE", "VOCAB_FILE", "MODEL_FILES", "CheckpointError",
           "run_folder", "checkpoint_dir_name", "worker_file", "file_uri", "list_checkpoints",
           "resolve_checkpoint", "parse_saved_config", "read_config", "read_vocabulary",
           "parse_weights", "read_weights", "verify_checkpoint", "SavedCheckpoint",
           "read_checkpoint"]
