"""The training loop that runs on every Ray Train worker.

`train_loop_per_worker(loop_config)` reads everything from its config dict, keeps no global state
and talks to Ray only through `ray.train.get_context`, `get_checkpoint`, `get_dataset_shard` and
`report`, so the same function runs under `TorchTrainer` with N workers, and in Ray Train's local
mode (`ScalingConfig(num_workers=0)`) in one process for unit tests.

One step: `grad_accum` micro-batches of `train.global_batch_size / (num_workers * grad_accum)` clips
each, forward + VATT loss (negatives gathered across workers by the loss), backward (DDP averages
gradients), one Adam update at `learning_rate(step)`. Every `log_every` steps the window's mean
losses (over workers), the learning rate, clips/s and data-wait share are reported; every
`checkpoint_every` steps (and at the last step) a checkpoint is reported with them. With
`train.validation.every` set, the rows also carry the latest validation scores
(vatt.train.validation), measured by the first worker on a held-out split.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

import torch
import torch.distributed as dist
from torch import nn

from vatt.checkpoints import checkpoint_dir_name
from vatt.config import Config, from_dict
from vatt.distributed import is_distributed
from vatt.seeding import seed_everything
from vatt.train.resume import DataPosition, TrainState, load_checkpoint, save_checkpoint
from vatt.train.precision import PrecisionChoice, autocast, resolve_precision
from vatt.train.schedule import build_optimizer, set_learning_rate
from vatt.train.sync_batchnorm import convert_batchnorm
from vatt.train.validation import Validator, validation_due

MODEL_INPUTS = ("video", "audio", "text", "text_mask")
LOSS_KEYS = ("total", "video_audio", "video_text")


def micro_batch_size(cfg: Config, world_size: int) -> int:
    """Clips per worker per forward pass; the split of the global batch must be exact."""
    parts = world_size * cfg.train.grad_accum
    if cfg.train.global_batch_size % parts:
        raise ValueError(
            f"train.global_batch_size={cfg.train.global_batch_size} does not split evenly over "
            f"{world_size} workers x train.grad_accum={cfg.train.grad_accum}; pick a multiple of "
            f"{parts} or change train.num_workers / train.grad_accum"
        )
    return cfg.train.global_batch_size // parts


def build_training(cfg: Config, device: torch.device,
                   vocab_words: Optional[tuple[str, ...]] = None
                   ) -> tuple[nn.Module, nn.Module, torch.optim.Optimizer]:
    """(bare model, model to call for training (DDP / compiled), optimiser). Same init on all
    ranks. `vocab_words`: the run's vocabulary (the word2vec table is looked up for it)."""
    from vatt.model import build_model
    from vatt.text import Vocabulary

    seed_everything(cfg.train.seed)
    vocabulary = Vocabulary(vocab_words[2:]) if vocab_words is not None else None
    model = build_model(cfg, vocabulary)
    if is_distributed():
        # the heads' BatchNorm statistics over the global batch, as in the paper
        model = convert_batchnorm(model, device)
    model.to(device)
    optimizer = build_optimizer(model.parameters(), cfg.train.optim)
    train_model: nn.Module = model
    if is_distributed():
        device_ids = [device.index] if device.type == "cuda" else None
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    if cfg.train.compile:
        train_model = torch.compile(train_model)
    return model, train_model, optimizer


def train_step(cfg: Config, train_model: nn.Module, optimizer: torch.optim.Optimizer,
               micro_batches: list[dict[str, torch.Tensor]], step: int,
               device: torch.device, precision: Optional[PrecisionChoice] = None
               ) -> tuple[dict[str, torch.Tensor], float]:
    """One optimiser update over `micro_batches`; returns (summed detached losses, lr).
    `precision`: resolved once by the caller (None: from train.precision on `device`)."""
    from vatt.losses import vatt_loss

    if precision is None:
        precision = resolve_precision(cfg.train.precision, device)
    train_model.train()
    lr = set_learning_rate(optimizer, step, cfg.train.optim)
    optimizer.zero_grad(set_to_none=True)
    sums = {key: torch.zeros((), device=device) for key in LOSS_KEYS}
    for index, batch in enumerate(micro_batches):
        last = index == len(micro_batches) - 1
        # DDP: all-reduce gradients only on the last micro-batch of an accumulated step
        sync = contextlib.nullcontext() if last or not hasattr(train_model, "no_sync") \
            else train_model.no_sync()
        with sync:
            with autocast(precision, device):  # backbones and heads; the optimiser stays fp32
                outputs = train_model(batch)
            losses = vatt_loss(outputs, batch["text_mask"], cfg.loss)  # fp32, outside autocast
            (losses["total"] / len(micro_batches)).backward()
        for key in LOSS_KEYS:
            sums[key] += losses[key].detach().float() / len(micro_batches)
    optimizer.step()
    return sums, lr


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
    missing = [key for key in MODEL_INPUTS if key not in batch]
    if missing:
        raise KeyError(f"training batch lacks {missing}; the data loader must yield {MODEL_INPUTS}")
    return {key: batch[key].to(device, non_blocking=True) for key in MODEL_INPUTS}


def _epochs(shard: Any, batch_size: int, start: DataPosition
            ) -> Iterator[tuple[int, int, dict[str, Any]]]:
    """(epoch, batch number in the epoch from 1, micro-batch) from `start` on, epoch after
    epoch; the first epoch skips the `start.batches` micro-batches already trained on."""
    from vatt.data.loader import torch_batches

    epoch, skip = start.epoch, start.batches
    while True:
        seen = 0
        for batch in torch_batches(shard, batch_size, training=True):
            seen += 1
            if seen > skip:
                yield epoch, seen, batch
        if seen == 0:
            raise RuntimeError(
                f"the training dataset gave no full batch of {batch_size} clips in epoch "
                f"{epoch}: it has fewer clips per worker than that; ingest more data or lower "
                "train.global_batch_size"
            )
        epoch, skip = epoch + 1, 0


_END = object()  # the reading thread's last item: the micro-batches asked for were all read


def _read_ahead(batches: Iterator[Any], depth: int) -> Iterator[Any]:
    """`batches` read by a thread, up to `depth` items ahead of the caller. An exception in the
    thread is raised in the caller; closing the generator stops the thread."""
    import queue
    import threading

    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            for item in batches:
                if not put(item):
                    return
            put(_END)
        except BaseException as err:  # noqa: BLE001 - handed to the training thread
            put(err)

    thread = threading.Thread(target=read, name="vatt-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item = items.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def batch_stream(shard: Any, batch_size: int, position: DataPosition,
                 limit: Optional[int] = None, read_ahead: int = 0) -> Iterator[dict[str, Any]]:
    """Micro-batches from a Ray Data shard, epoch after epoch, keeping `position` current (the
    last micro-batch handed out); `limit` of them at most (None: endless).

    `read_ahead` > 0: a thread reads that many micro-batches ahead of training. At an epoch's
    end Ray Data starts the next epoch (the workers meet at the split's barrier, the execution
    restarts, the shuffle buffer refills: seconds, BENCHMARKS.md "fixed costs") while training
    still takes the read-ahead batches; `limit` keeps the thread from starting an epoch that no
    step will use.

    Resuming at `position` skips as many micro-batches of that epoch as were already trained
    on, so a resumed epoch has the length it would have had and the epoch count is right. It
    does not promise the same clips: Ray Data's block order, the split between workers, the
    local shuffle and the augmentations are not seeded (a streaming split hands blocks to
    whichever worker asks first), so after a restart the rest of the epoch is drawn afresh and
    a clip may be seen twice, or not at all, in that one epoch.
    """
    import itertools

    numbered = _epochs(shard, batch_size, DataPosition(position.epoch, position.batches))
    if limit is not None:
        numbered = itertools.islice(numbered, limit)
    if read_ahead > 0:
        numbered = _read_ahead(numbered, read_ahead)
    for epoch, number, batch in numbered:
        position.epoch, position.batches = epoch, number
        yield batch


@dataclass
class Window:
    """The loop's meter: what happened since the last report (steps, clips, data wait, losses),
    reported as each row's mean losses, clips/s and data-wait share. It also keeps the attempt's
    start-up moments (wall clock: created as the worker enters its loop, the first window's start
    when the model is ready, the first batch, the first step), reported once with the attempt's
    first row, and the seconds spent between windows (checkpoints, reports, validation),
    reported with every row: vatt.train.phases reads both from the history."""

    steps: int = 0
    clips: int = 0
    data_wait: float = 0.0
    start: float = 0.0
    loss_sums: Optional[dict[str, torch.Tensor]] = None
    startup: dict[str, float] = field(default_factory=lambda: {"phase_worker_start": time.time()})
    between: float = 0.0  # seconds between windows so far, this attempt
    closed: Optional[float] = None  # when the last window was measured (perf_counter)
    batch_arrived: float = 0.0  # wall clock of the last micro-batch handed out

    def reset(self) -> None:
        now = time.perf_counter()
        if self.closed is None:
            self.startup["phase_model_ready"] = time.time()
        else:
            self.between += now - self.closed
        self.steps, self.clips, self.data_wait, self.loss_sums = 0, 0, 0.0, None
        self.start = now

    def next_batch(self, batches: Iterator[dict[str, Any]]) -> dict[str, Any]:
        """The next micro-batch, the wait for it counted."""
        before = time.perf_counter()
        batch = next(batches)
        self.data_wait += time.perf_counter() - before
        self.batch_arrived = time.time()
        return batch

    def add(self, losses: dict[str, torch.Tensor], clips: int) -> None:
        if self.closed is None and "phase_first_step" not in self.startup:  # the first step
            self.startup |= {"phase_first_batch": self.batch_arrived, "phase_first_step": time.time()}
        self.steps += 1
        self.clips += clips
        if self.loss_sums is None:
            self.loss_sums = {key: value.clone() for key, value in losses.items()}
        else:
            for key, value in losses.items():
                self.loss_sums[key] += value

    def metrics(self, device: torch.device) -> dict[str, float]:
        """Means over the window and over all workers (one all-reduce)."""
        elapsed = time.perf_counter() - self.start
        assert self.loss_sums is not None
        packed = torch.stack([self.loss_sums[key] for key in LOSS_KEYS] + [
            torch.tensor(float(self.clips), device=device),
            torch.tensor(self.data_wait, device=device),
            torch.tensor(elapsed, device=device)]).to(device)
        world = 1
        if is_distributed():
            dist.all_reduce(packed)
            world = dist.get_world_size()
        losses, clips, wait, elapsed_sum = packed[:3] / (self.steps * world), packed[3], packed[4], packed[5]
        mean_elapsed = float(elapsed_sum) / world
        metrics = {f"loss_{key}": float(value) for key, value in zip(LOSS_KEYS, losses)} | {
            "clips_per_s": float(clips) / max(mean_elapsed, 1e-9),
            "data_wait_share": float(wait) / max(float(elapsed_sum), 1e-9),
        } | self.startup | {"phase_checkpoint_s": self.between}
        self.startup = {}
        self.closed = time.perf_counter()
        return metrics


def train_loop_per_worker(loop_config: dict[str, Any]) -> dict[str, Any]:
    """Ray Train entry: `loop_config = {"config": to_dict(cfg), "data_version": {...} | None,
    "vocab_words": [...] | None}`."""
    import ray.train

    window = Window()  # from the worker's start: the rows carry its start-up too
    cfg = from_dict(loop_config["config"])
    data_version = loop_config.get("data_version")
    vocab_words = loop_config.get("vocab_words")
    vocab_words = tuple(vocab_words) if vocab_words is not None else None
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    if cfg.train.use_gpu:
        import ray.train.torch
        device = ray.train.torch.get_device()
        torch.cuda.set_device(device)
    elif cfg.train.use_tpu:  # torch_tpu: one TPU device per process, bound by the runtime
        import ray.train.torch
        device = ray.train.torch.get_device()
    else:
        device = torch.device("cpu")
    batch_size = micro_batch_size(cfg, world)

    model, train_model, optimizer = build_training(cfg, device, vocab_words)
    precision = resolve_precision(cfg.train.precision, device)
    if rank == 0:  # to Ray's worker log (the console with VATT_VERBOSE); the driver logs it too
        print(f"worker 0 on {device}: {precision.describe()}", flush=True)
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = load_checkpoint(folder, rank=rank, model=model, optimizer=optimizer,
                                    map_location=device)
    else:
        state = TrainState()
        seed_everything(cfg.train.seed + 1000 * rank + 1)  # distinct augmentation/DropToken per rank
    state.started_from.append(state.step)
    state.world_size = world

    total = cfg.train.optim.total_steps
    batches = batch_stream(ray.train.get_dataset_shard("train"), batch_size, state.data,
                           limit=max(0, total - state.step) * cfg.train.grad_accum,
                           read_ahead=cfg.train.read_ahead_batches)
    validator = None  # the first worker validates (train.validation); the others wait for it
    if cfg.train.validation.every > 0 and rank == 0:
        validator = Validator(cfg, ray.train.get_dataset_shard("val"), device)
    last_validation: dict[str, float] = {}
    last_val_step: Optional[int] = None
    if state.step >= total and state.history:
        # a finished run started again (e.g. its sweep trial restarted after a crash): report
        # its last row again, so that whoever drives it (Tune) sees the run's result
        ray.train.report(dict(state.history[-1]))
    window.reset()
    while state.step < total:
        micro = [to_device(window.next_batch(batches), device)
                 for _ in range(cfg.train.grad_accum)]
        losses, state.learning_rate = train_step(cfg, train_model, optimizer, micro, state.step,
                                                 device, precision)
        state.step += 1
        window.add(losses, clips=batch_size * len(micro))

        save = state.step % cfg.train.checkpoint_every == 0 or state.step == total
        if not (save or state.step % cfg.train.log_every == 0):
            continue
        row = {"step": state.step, "lr": state.learning_rate, "epoch": state.data.epoch,
               "epoch_batch": state.data.batches,  # micro-batches of this epoch so far
               "attempt": len(state.started_from) - 1, "time": time.time()}
        row |= window.metrics(device)
        if any(value != value for value in row.values()):  # NaN
            raise FloatingPointError(
                f"loss became NaN at step {state.step} ({row}); lower train.optim.lr_peak or "
                "check the input data"
            )
        if validation_due(cfg, state.step, last_val_step):
            last_val_step = state.step
            if validator is not None:
                last_validation = validator(model) | {"val_step": state.step}
            if is_distributed():
                dist.barrier()  # the others wait here, not in their next step's timing window
        row |= last_validation
        state.history.append(row)
        if save:
            with tempfile.TemporaryDirectory(prefix="vatt-ckpt-") as folder:
                save_checkpoint(folder, rank=rank, state=state, model=model, optimizer=optimizer,
                                cfg=cfg, data_version=data_version, vocab_words=vocab_words)
                ray.train.report(row, checkpoint=ray.train.Checkpoint.from_directory(folder),
                                 checkpoint_dir_name=checkpoint_dir_name(state.step))
        else:
            ray.train.report(row)
        window.reset()
    return {"step": state.step, "started_from": state.started_from}
