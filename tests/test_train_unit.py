"""vatt.train pieces that need no Ray: schedule, optimiser, checkpoint round trip, preflight,
global-batch BatchNorm (2 real gloo processes)."""

from __future__ import annotations

import math
import random
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from vatt.config import load_config
from vatt.seeding import seed_everything
from vatt.train.preflight import PreflightError, check_config, check_resources
from vatt.train.resume import DataPosition, TrainState, load_checkpoint, save_checkpoint
from vatt.train.schedule import build_optimizer, learning_rate
from vatt.train.sync_batchnorm import GlobalBatchNorm1d, convert_batchnorm


def test_learning_rate_warmup_then_quarter_cosine():
    optim = load_config("tiny", ["train.optim.warmup_steps=10", "train.optim.total_steps=110",
                                 "train.optim.lr_peak=1e-3", "train.optim.lr_end=2e-4"]).train.optim
    assert learning_rate(0, optim) == 0.0
    assert learning_rate(5, optim) == pytest.approx(5e-4)
    assert learning_rate(10, optim) == pytest.approx(1e-3)
    # halfway through the decay a quarter-period cosine is at cos(pi/4)
    assert learning_rate(60, optim) == pytest.approx(2e-4 + 8e-4 * math.cos(math.pi / 4))
    assert learning_rate(110, optim) == pytest.approx(2e-4)
    assert learning_rate(500, optim) == pytest.approx(2e-4)  # held at lr_end past total_steps
    decay = [learning_rate(step, optim) for step in range(10, 111)]
    assert all(a >= b for a, b in zip(decay, decay[1:]))


def test_optimizer_is_the_spec_adam():
    cfg = load_config("tiny")
    optimizer = build_optimizer(nn.Linear(3, 2).parameters(), cfg.train.optim)
    group = optimizer.param_groups[0]
    assert isinstance(optimizer, torch.optim.Adam)
    assert group["betas"] == (0.9, 0.999) and group["eps"] == 1e-7 and group["weight_decay"] == 0


def test_checkpoint_round_trip_restores_model_optimizer_rng_and_position(tmp_path):
    cfg = load_config("tiny")
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    optimizer = build_optimizer(model.parameters(), cfg.train.optim)
    model(torch.randn(6, 4)).sum().backward()
    optimizer.step()
    state = TrainState(step=7, learning_rate=1e-4, world_size=2, data=DataPosition(3, 5),
                       started_from=[0], history=[{"step": 5, "loss_total": 1.0}])
    seed_everything(123)
    for rank in (1, 0):  # each worker writes its own RNG and data position
        save_checkpoint(tmp_path, rank=rank, state=state, model=model, optimizer=optimizer,
                        cfg=cfg, data_version={"md5": "abc"})
    # what rank 0's restored RNGs must produce next
    expected_draw = (torch.rand(3), random.random(), np.random.rand(2))

    fresh = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    fresh_optimizer = build_optimizer(fresh.parameters(), cfg.train.optim)
    seed_everything(999)
    restored = load_checkpoint(tmp_path, rank=0, model=fresh, optimizer=fresh_optimizer)
    draw = (torch.rand(3), random.random(), np.random.rand(2))
    assert torch.equal(draw[0], expected_draw[0]) and draw[1] == expected_draw[1]
    assert np.array_equal(draw[2], expected_draw[2])
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
    assert fresh_optimizer.state_dict()["state"][0]["step"] == 1
    assert (restored.step, restored.data, restored.started_from) == (7, DataPosition(3, 5), [0])
    assert restored.history == state.history
    assert {p.name for p in tmp_path.iterdir()} == {
        "model.pt", "optimizer.pt", "state.json", "history.json", "config.yaml",
        "data_version.json", "worker_0.pt", "worker_1.pt"}


def test_resuming_with_a_model_of_another_shape_names_the_runs_config(tmp_path):
    from vatt.model import build_model
    from vatt.train.resume import CheckpointMismatchError

    old = load_config("tiny", ["model.audio.patch_size=128", "model.audio.input_scale=1"])
    model = build_model(old)
    save_checkpoint(tmp_path, rank=0, state=TrainState(step=3), model=model,
                    optimizer=build_optimizer(model.parameters(), old.train.optim), cfg=old,
                    data_version={})
    current = build_model(load_config("tiny"))  # 32-sample audio tokens: other shapes
    with pytest.raises(CheckpointMismatchError,
                       match=r"size mismatch for backbones\.audio.*config\.yaml.*train\.run_name"):
        load_checkpoint(tmp_path, rank=0, model=current, optimizer=None)


class _RunsCodeWhenUnpickled:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_run_files_are_never_unpickled(tmp_path):
    from vatt.train.resume import CheckpointMismatchError

    cfg = load_config("tiny")
    model = nn.Linear(2, 2)
    optimizer = build_optimizer(model.parameters(), cfg.train.optim)
    save_checkpoint(tmp_path, rank=0, state=TrainState(step=1), model=model, optimizer=optimizer,
                    cfg=cfg, data_version={})
    torch.load(tmp_path / "worker_0.pt", weights_only=True)  # what training writes loads safely
    marker = tmp_path / "code-ran"
    torch.save({"rng": _RunsCodeWhenUnpickled(marker), "data": {}}, tmp_path / "worker_0.pt")
    with pytest.raises(CheckpointMismatchError, match="never unpickles"):
        load_checkpoint(tmp_path, rank=0, model=model, optimizer=optimizer)
    assert not marker.exists()


def test_checkpoint_that_is_not_ours_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.pt"):
        load_checkpoint(tmp_path, rank=0, model=nn.Linear(1, 1), optimizer=None)


@pytest.mark.parametrize("overrides, key", [
    (["train.num_workers=3"], "train.global_batch_size=32"),
    (["train.grad_accum=0"], "train.grad_accum=0"),
    (["train.log_every=0"], "train.log_every"),
    (["train.max_failures=-5"], "train.max_failures"),
    (["train.poll_interval_s=0"], "train.poll_interval_s"),
    (["train.read_ahead_batches=-1"], "train.read_ahead_batches"),
])
def test_preflight_config_names_the_key(overrides, key):
    with pytest.raises(PreflightError, match=key):
        check_config(load_config("tiny", overrides))


def test_preflight_more_workers_than_cpus():
    cfg = load_config("tiny", ["train.num_workers=8", "train.cpus_per_worker=1"])
    with pytest.raises(PreflightError, match=r"train.num_workers=8 .* 8 CPUs, but .* has 2"):
        check_resources(cfg, {"CPU": 2.0})


def test_preflight_gpu_where_none_exist():
    cfg = load_config("tiny", ["train.use_gpu=true"])
    with pytest.raises(PreflightError, match="train.use_gpu=true but .* no GPU"):
        check_resources(cfg, {"CPU": 16.0})
    with pytest.raises(PreflightError, match="2 GPUs, but .* has 1"):
        check_resources(cfg, {"CPU": 16.0, "GPU": 1.0})
    check_resources(cfg, {"CPU": 16.0, "GPU": 2.0})


def test_preflight_unwritable_storage(tmp_path):
    from vatt.train.pretrain import resolve_storage

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    cfg = load_config("tiny", [f"train.storage_path={blocker}/runs"])
    with pytest.raises(PreflightError, match="train.storage_path=.* is not writable"):
        resolve_storage(cfg)
    with pytest.raises(PreflightError, match="only local folders and s3://"):
        resolve_storage(load_config("tiny", ["train.storage_path=gs://bucket/runs"]))


def _global_bn_worker(rank: int, port: int, inputs: torch.Tensor, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        norm = convert_batchnorm(nn.Sequential(nn.BatchNorm1d(5)), torch.device("cpu"))[0]
        assert isinstance(norm, GlobalBatchNorm1d)
        local = inputs[rank * 4:(rank + 1) * 4].clone().requires_grad_(True)
        out = norm(local)
        (out * torch.arange(5.0)).sum().backward()
        # summed over workers, as DDP's averaged gradient times the world size would be
        results[rank] = (out.detach(), local.grad, norm.running_mean.clone(),
                         norm.running_var.clone())
    finally:
        dist.destroy_process_group()


def test_global_batchnorm_equals_batchnorm_on_the_whole_batch():
    inputs = torch.randn(8, 5) * 3 + 1
    reference = nn.BatchNorm1d(5)
    whole = inputs.clone().requires_grad_(True)
    expected = reference(whole)
    (expected * torch.arange(5.0)).sum().backward()

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_global_bn_worker, args=(port, inputs, results), nprocs=2, join=True)
    out = torch.cat([results[0][0], results[1][0]])
    grad = torch.cat([results[0][1], results[1][1]])
    torch.testing.assert_close(out, expected.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad, whole.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(results[0][2], reference.running_mean)
    torch.testing.assert_close(results[1][3], reference.running_var)


def test_a_run_keeps_the_vocabulary_it_started_with(tmp_path, caplog):
    import json

    from vatt.train.pretrain import resolve, resolve_storage, run_vocabulary

    data = tmp_path / "data"
    data.mkdir()
    (data / "vocab.json").write_text(json.dumps({"words": ["<pad>", "<unk>", "red", "ball"]}))
    cfg = resolve(load_config("tiny", [f"data.path={data}", f"train.storage_path={tmp_path / 'runs'}",
                                       "train.run_name=r1"]))
    storage = resolve_storage(cfg)
    assert run_vocabulary(cfg, storage) == ("<pad>", "<unk>", "red", "ball")
    # a new source is ingested: the data's ranking changes; the run (resumed) keeps its own
    (data / "vocab.json").write_text(json.dumps({"words": ["<pad>", "<unk>", "ball", "blue", "red"]}))
    with caplog.at_level("WARNING", logger="vatt.train"):
        assert run_vocabulary(cfg, storage) == ("<pad>", "<unk>", "red", "ball")
    assert "keeps its own" in caplog.text
    fresh = resolve(load_config("tiny", [f"data.path={data}", f"train.storage_path={tmp_path / 'runs'}",
                                         "train.run_name=r2"]))
    assert run_vocabulary(fresh, storage) == ("<pad>", "<unk>", "ball", "blue", "red")
    with pytest.raises(PreflightError, match="data.vocab_size=4"):
        run_vocabulary(load_config("tiny", [f"data.path={data}", "data.vocab_size=4",
                                            f"train.storage_path={tmp_path / 'runs'}",
                                            "train.run_name=r3"]), storage)


def test_run_phases_split_a_run_into_its_stages():
    from vatt.train.phases import describe_phases, run_phases

    marks = {"start": 100.0, "connected": 104.0, "fit_start": 105.0, "fit_end": 160.0,
             "done": 161.0}
    history = [  # the first row carries the attempt's start-up; each the checkpoint time so far
        {"step": 10, "time": 130.0, "phase_worker_start": 111.0, "phase_model_ready": 113.0,
         "phase_first_batch": 118.0, "phase_first_step": 120.0, "phase_checkpoint_s": 0.0},
        {"step": 20, "time": 150.0, "phase_checkpoint_s": 2.0},
    ]
    phases = run_phases(marks, history)
    assert phases == {"connect": 4.0, "prepare": 1.0, "worker_group": 6.0, "model": 2.0,
                      "first_batch": 5.0, "first_step": 2.0, "steps": 28.0, "checkpoints": 2.0,
                      "finish": 10.0, "summary": 1.0, "total": 61.0, "fixed": 33.0}
    line = describe_phases(phases)
    assert line.startswith("start-up 20.0s (Ray 4.0s, datasets 1.0s, worker group 6.0s")
    assert line.endswith("fixed 33.0s of 61.0s (54%)")
    # a resumed run: the last attempt's start-up counts
    resumed = history + [{"step": 30, "time": 200.0, "phase_worker_start": 180.0,
                          "phase_model_ready": 181.0, "phase_first_batch": 182.0,
                          "phase_first_step": 183.0, "phase_checkpoint_s": 0.0}]
    assert run_phases({}, resumed)["steps"] == 17.0


def test_the_loops_meter_reports_the_start_up_once_and_the_time_between_windows():
    """What vatt.train.phases reads from the rows: the loop's Window stamps the attempt's
    start-up moments, in order, into its first report only, and every report carries the
    seconds spent between windows (checkpoints, reports) so far, not the windows' own."""
    import time

    import torch

    from vatt.train.loop import LOSS_KEYS, Window
    from vatt.train.phases import WORKER_STAMPS

    window = Window()  # the worker enters its loop
    window.reset()  # the model is ready
    batches = iter([{"clip": 1}, {"clip": 2}, {"clip": 3}])
    losses = {key: torch.tensor(1.0) for key in LOSS_KEYS}
    for _ in range(2):
        window.next_batch(batches)
        window.add(losses, clips=4)
    first = window.metrics(torch.device("cpu"))
    stamps = [first[key] for key in WORKER_STAMPS]
    assert stamps == sorted(stamps) and first["phase_checkpoint_s"] == 0.0
    assert first["loss_total"] == 1.0 and first["clips_per_s"] > 0
    time.sleep(0.05)  # a checkpoint being written
    window.reset()
    window.next_batch(batches)
    window.add(losses, clips=4)
    second = window.metrics(torch.device("cpu"))
    assert not set(WORKER_STAMPS) & set(second)
    assert 0.05 <= second["phase_checkpoint_s"] < 1.0


@pytest.mark.parametrize("read_ahead", [0, 3])
def test_batch_stream_runs_epoch_after_epoch_and_resumes_where_it_was(read_ahead):
    """A real Ray Data dataset of 40 rows in batches of 8: 5 per epoch. Read in the training
    thread or by a thread ahead of it, the stream is the same: every row once per epoch, the
    position of the last batch handed out, `limit` batches and no more, a resume that skips
    what its epoch already gave, and a too-small dataset named in the training thread."""
    import ray.data

    from vatt.train.loop import batch_stream

    rows = ray.data.from_items([{"clip_index": i} for i in range(40)])
    position = DataPosition()
    seen: dict[int, list[int]] = {}
    places = []
    for batch in batch_stream(rows, 8, position, limit=12, read_ahead=read_ahead):
        seen.setdefault(position.epoch, []).extend(batch["clip_index"].tolist())
        places.append((position.epoch, position.batches))
    assert places == [(0, n) for n in range(1, 6)] + [(1, n) for n in range(1, 6)] + [(2, 1), (2, 2)]
    assert sorted(seen[0]) == sorted(seen[1]) == list(range(40)) and len(seen[2]) == 16

    resumed = DataPosition(1, 3)  # a checkpoint after the 3rd batch of epoch 1
    places = [(resumed.epoch, resumed.batches)
              for _ in batch_stream(rows, 8, resumed, limit=4, read_ahead=read_ahead)]
    assert places == [(1, 4), (1, 5), (2, 1), (2, 2)]

    tiny = ray.data.from_items([{"clip_index": i} for i in range(4)])
    with pytest.raises(RuntimeError, match="fewer clips per worker"):
        next(batch_stream(tiny, 8, DataPosition(), read_ahead=read_ahead))


def test_progress_line_says_step_loss_pace_and_time_left():
    from vatt.train.progress import ProgressLine, format_duration

    line = ProgressLine(total_steps=300, run_name="r")
    row = {"step": 10, "loss_total": 8.5, "loss_video_audio": 4.25, "loss_video_text": 4.25,
           "clips_per_s": 16.4}
    # the first row starts the clock: start-up and a resume are not the pace
    assert line.line(row, now=100.0) == ("step 10/300 (3%) loss 8.500 (video-audio 4.250, "
                                         "video-text 4.250) 16 clips/s")
    later = line.line(row | {"step": 20, "val_MRR": 0.25}, now=110.0)  # 1 s a step
    assert later.endswith("16 clips/s, val MRR 0.250, 4m40s left")
    assert "left" not in line.line(row | {"step": 300}, now=400.0)
    assert [format_duration(s) for s in (59.4, 61, 3725)] == ["59s", "1m01s", "1h02m"]
