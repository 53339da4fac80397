"""What a pretraining run saves so that it can resume, and resuming from it: the training side
of a checkpoint. The format itself (file names, layout) and reading a checkpoint back for
evaluation and the registry are vatt.checkpoints'.

Rank 0 writes the model, optimiser, state, history, config, data version and vocabulary; every
rank writes its RNG states and data position (`worker_<rank>.pt`). The LR schedule is a pure
function of the step and `train.optim` (both saved), so restoring the step restores the schedule.
"""

from __future__ import annotations

import json
import pickle
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from vatt.checkpoints import (CONFIG_FILE, DATA_VERSION_FILE, HISTORY_FILE, MODEL_FILE,
                              OPTIMIZER_FILE, STATE_FILE, VOCAB_FILE, worker_file)
from vatt.config import Config, to_yaml


@dataclass
class DataPosition:
    """Where a worker is in its data stream: `batches` micro-batches consumed in `epoch`."""

    epoch: int = 0
    batches: int = 0


@dataclass
class TrainState:
    step: int = 0  # optimiser updates done; the next update uses learning_rate(step)
    learning_rate: float = 0.0  # the rate the last update used
    world_size: int = 1
    data: DataPosition = field(default_factory=DataPosition)
    # the step each attempt started from: [0] for a fresh run, [0, 40] after one resume at 40
    started_from: list[int] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)


def rng_state() -> dict[str, Any]:
    """The RNG states as tensors and plain values only, so that a checkpoint loads with
    `torch.load(weights_only=True)` (unpickling a file from shared run storage could run code)."""
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)),
                       "position": int(position), "has_gauss": int(has_gauss),
                       "cached_gaussian": float(cached_gaussian)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy = state["numpy"]
    np.random.set_state((numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["position"],
                         numpy["has_gauss"], numpy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(folder: str | Path, *, rank: int, state: TrainState, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, cfg: Config,
                    data_version: Optional[dict[str, Any]],
                    vocab_words: Optional[list[str] | tuple[str, ...]] = None) -> None:
    """Write this worker's share of a checkpoint into `folder` (the files of vatt.checkpoints)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"rng": rng_state(), "data": asdict(state.data)}, folder / worker_file(rank))
    if rank != 0:
        return
    torch.save(model.state_dict(), folder / MODEL_FILE)
    torch.save(optimizer.state_dict(), folder / OPTIMIZER_FILE)
    meta = asdict(state)
    history = meta.pop("history")
    (folder / STATE_FILE).write_text(json.dumps(meta, indent=2))
    (folder / HISTORY_FILE).write_text(json.dumps(history, indent=1))
    (folder / CONFIG_FILE).write_text(to_yaml(cfg))
    (folder / DATA_VERSION_FILE).write_text(json.dumps(data_version, indent=2))
    if vocab_words is not None:
        (folder / VOCAB_FILE).write_text(json.dumps({"words": list(vocab_words)}, indent=0) + "\n")


class CheckpointMismatchError(ValueError):
    """A checkpoint's weights do not fit the model the current config builds."""


def load_checkpoint(folder: str | Path, *, rank: int, model: torch.nn.Module,
                    optimizer: Optional[torch.optim.Optimizer],
                    map_location: str | torch.device = "cpu") -> TrainState:
    """Restore model, optimiser and this worker's RNG and data position from `folder`.

    A worker rank that has no file of its own (the run resumes with more workers than wrote the
    checkpoint) keeps the RNG it has and takes rank 0's data position.
    """
    folder = Path(folder)
    missing = [name for name in (MODEL_FILE, STATE_FILE, HISTORY_FILE) if not (folder / name).exists()]
    if missing:
        raise FileNotFoundError(
            f"checkpoint {folder} lacks {', '.join(missing)}: it was not written by vatt.train "
            "or is incomplete; delete it (or pick another train.run_name) to start afresh"
        )
    try:
        model.load_state_dict(torch.load(folder / MODEL_FILE, map_location=map_location,
                                         weights_only=True))
    except RuntimeError as err:  # missing/unexpected keys or a shape that differs
        detail = "; ".join(line.strip() for line in str(err).splitlines()[1:4] if line.strip())
        raise CheckpointMismatchError(
            f"checkpoint {folder} holds a model this config does not build ({detail}): the run "
            f"was trained with {folder / CONFIG_FILE}. Resume it with the same model.* and data.* "
            "settings (e.g. the preset as it was then), or pick another train.run_name to start "
            "afresh"
        ) from None
    if optimizer is not None:
        optimizer.load_state_dict(torch.load(folder / OPTIMIZER_FILE, map_location=map_location,
                                             weights_only=True))
    meta = json.loads((folder / STATE_FILE).read_text())
    state = TrainState(step=meta["step"], learning_rate=meta["learning_rate"],
                       world_size=meta["world_size"], data=DataPosition(**meta["data"]),
                       started_from=list(meta["started_from"]),
                       history=json.loads((folder / HISTORY_FILE).read_text()))
    own = folder / worker_file(rank)
    if own.exists():
        try:
            worker = torch.load(own, weights_only=True)
        except pickle.UnpicklingError as err:
            raise CheckpointMismatchError(
                f"checkpoint {own} holds objects that only unpickling could restore "
                f"({str(err).splitlines()[0][:200]}); vatt never unpickles run files, since that "
                "can run code. A run written before RNG states were stored as tensors cannot be "
                "resumed: pick another train.run_name to start afresh") from None
        set_rng_state(worker["rng"])
        state.data = DataPosition(**worker["data"])
    return state


def read_history(folder: str | Path) -> list[dict[str, Any]]:
    return json.loads((Path(folder) / HISTORY_FILE).read_text())
