"""Pretraining under Ray Train on a local Ray (2 CPUs), on the default dataset the session's
`vatt pipeline` ingested: its 2 gloo workers made the loss go down (that run's folder); a killed
worker is replaced and the run resumes from the last checkpoint; checkpoints go to and come back
from s3:// on the real SeaweedFS server, the same runs with a frozen word2vec table (the first
through `vatt pretrain`); a run that cannot start fails before training with a message naming
the key. Short budgets: these check the plumbing, the pipeline the learning."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest

from helpers import latest_registered_checkpoint, train_worker_processes
from vatt.config import load_config
from vatt.train.preflight import PreflightError

pytestmark = pytest.mark.slow

# small and fast: 2 workers x 4 clips, short warm-up, tiny model of the `tiny` preset
BASE = ["train.num_workers=2", "train.cpus_per_worker=0.5", "train.global_batch_size=8",
        "train.optim.warmup_steps=4", "train.optim.lr_peak=5e-4", "train.optim.lr_end=1e-4"]


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def train_data(default_pipeline) -> Path:
    """The default (synthetic) dataset the session's `vatt pipeline` ingested (read only here)."""
    return default_pipeline.data


def config(data: Path, storage, run_name: str, *overrides: str):
    return load_config("tiny", [*BASE, f"data.path={data}", f"train.storage_path={storage}",
                                f"train.run_name={run_name}", *overrides])


def steps_of(history):
    return [row["step"] for row in history]


def test_two_cpu_workers_loss_goes_down(default_pipeline):
    """The session's `vatt pipeline` pretraining (2 gloo workers on the local Ray, the `tiny`
    preset's full budget): what its run folder says about the run."""
    from vatt.train.phases import PHASES

    train = load_config("tiny").train
    total, every = train.optim.total_steps, train.log_every
    run = default_pipeline.checkpoint.parent
    history = json.loads((run / "history.json").read_text())
    assert steps_of(history) == list(range(every, total + 1, every))
    first, last = history[0]["loss_total"], min(row["loss_total"] for row in history[-2:])
    assert last < first - 0.1, f"loss did not go down: {[r['loss_total'] for r in history]}"
    for row in history:
        assert row["clips_per_s"] > 0 and 0 <= row["data_wait_share"] <= 1
        assert row["loss_total"] == pytest.approx(row["loss_video_audio"] + row["loss_video_text"],
                                                  rel=1e-4)
    assert (run / "loss_curve.png").stat().st_size > 1000
    checkpoint = run / f"checkpoint_{total:08d}"
    assert default_pipeline.checkpoint == checkpoint
    saved = json.loads((checkpoint / "state.json").read_text())
    assert saved["step"] == total and saved["world_size"] == 2 == train.num_workers
    assert {"worker_0.pt", "worker_1.pt", "config.yaml", "data_version.json"} <= {
        p.name for p in checkpoint.iterdir()}
    data_path = json.loads((checkpoint / "data_version.json").read_text())["data_path"]
    assert Path(data_path) == default_pipeline.data.resolve()
    # where the time went: every phase measured, in order, adding up to the whole run
    phases = json.loads((run / "phases.json").read_text())
    assert set(PHASES) <= set(phases), phases
    assert all(phases[name] >= 0 for name in PHASES), phases
    assert phases["checkpoints"] > 0  # the checkpoints before the last one
    assert sum(phases[name] for name in PHASES) == pytest.approx(phases["total"], abs=0.5)
    assert phases["fixed"] == pytest.approx(phases["total"] - phases["steps"])


def test_killed_worker_resumes_from_last_checkpoint(ray_cluster, train_data, tmp_path):
    from vatt.train.pretrain import pretrain

    total, every = 18, 6
    cfg = config(train_data, tmp_path, "killed", f"train.optim.total_steps={total}",
                 "train.log_every=1", f"train.checkpoint_every={every}", "train.max_failures=1")
    outcome: dict = {}
    runner = threading.Thread(target=lambda: outcome.update(result=pretrain(cfg)), daemon=True)
    runner.start()
    deadline = time.time() + 300
    while latest_registered_checkpoint(tmp_path / "killed") is None:
        assert runner.is_alive() and time.time() < deadline, "no checkpoint was registered"
        time.sleep(0.05)
    workers = train_worker_processes(psutil.Process())
    assert len(workers) == 2, f"expected 2 RayTrainWorker processes, found {workers}"
    os.kill(workers[1].pid, signal.SIGKILL)
    runner.join(timeout=600)
    assert not runner.is_alive()
    history = outcome["result"].history

    # every step exactly once: nothing trained twice after the checkpoint, nothing lost before it
    assert steps_of(history) == list(range(1, total + 1))
    state = json.loads((Path(outcome["result"].checkpoint_uri) / "state.json").read_text())
    assert len(state["started_from"]) == 2, state["started_from"]
    resumed_at = state["started_from"][1]
    assert resumed_at % every == 0 and every <= resumed_at < total
    assert all(row["attempt"] == 0 for row in history if row["step"] <= resumed_at)
    assert all(row["attempt"] == 1 for row in history if row["step"] > resumed_at)
    # the data stream continued where it was (its epoch never goes back)
    epochs = [row["epoch"] for row in history]
    assert epochs == sorted(epochs)
    # the position after resume: the first step after it is the next micro-batch of the epoch
    # the checkpoint was in (or the first of the next epoch), not the start of that epoch again
    at_checkpoint = next(row for row in history if row["step"] == resumed_at)
    after = next(row for row in history if row["step"] == resumed_at + 1)
    assert (after["epoch"], after["epoch_batch"]) in {
        (at_checkpoint["epoch"], at_checkpoint["epoch_batch"] + 1), (at_checkpoint["epoch"] + 1, 1)}
    assert at_checkpoint["epoch_batch"] >= 1


def _word2vec_file(data: Path, folder: Path) -> dict:
    """A word2vec text file of four of the data's words; returns {word: vector}."""
    import numpy as np

    from vatt.data.loader import load_vocab_words

    words = load_vocab_words(str(data))
    dim = load_config("tiny").model.text.embedding_dim
    rng = np.random.default_rng(0)
    vectors = {word: rng.normal(size=dim).astype(np.float32) for word in words[2:6]}
    (folder / "vectors.txt").write_text(f"{len(vectors)} {dim}\n" + "".join(
        word + " " + " ".join(f"{x:.7f}" for x in vec) + "\n" for word, vec in vectors.items()))
    return vectors


def test_checkpoints_to_and_from_s3_and_same_run_name_resumes(ray_cluster, train_data, s3_env,
                                                              tmp_path):
    """Also `model.text.word2vec_path` end to end, on the same runs (one run fewer): the first
    is `vatt pretrain` as typed; its worker looks the run's vocabulary up in the file, the
    table stays frozen (through the resume too) and the checkpoint carries the vocabulary."""
    import io

    import torch

    from vatt.cli import main
    from vatt.data.loader import load_vocab_words
    from vatt.storage import ObjectStore
    from vatt.train.pretrain import pretrain

    storage = "s3://vatt-data/train-test-runs"
    run_name = f"s3-{int(time.time())}"
    vectors = _word2vec_file(train_data, tmp_path)
    word2vec = f"model.text.word2vec_path={tmp_path / 'vectors.txt'}"
    one_worker = ["train.num_workers=1", "train.cpus_per_worker=1", "train.log_every=2",
                  "train.checkpoint_every=2", word2vec]
    assert main(["pretrain", "--preset", "tiny", *BASE, f"data.path={train_data}",
                 f"train.storage_path={storage}", f"train.run_name={run_name}",
                 "train.optim.total_steps=4", *one_worker]) == 0
    words = load_vocab_words(str(train_data))

    def word2vec_table_is_in(checkpoint: str) -> None:  # and the run's vocabulary with it
        table = torch.load(io.BytesIO(ObjectStore().read_bytes(f"{checkpoint}/model.pt")),
                           weights_only=True)["backbones.text.embedding.weight"]
        for word, vec in vectors.items():
            assert torch.allclose(table[words.index(word)], torch.from_numpy(vec), atol=1e-6)
        saved = json.loads(ObjectStore().read_text(f"{checkpoint}/vocab.json"))["words"]
        assert tuple(saved) == words

    first = f"{storage}/{run_name}/checkpoint_00000004"
    names = ObjectStore().list(first)
    assert {"model.pt", "optimizer.pt", "state.json", "worker_0.pt", "vocab.json"} <= set(names)
    word2vec_table_is_in(first)  # read now: the resumed run keeps its last checkpoints only

    # same run name, more steps: restored from s3://, continues at step 4 (not from zero)
    second = pretrain(config(train_data, storage, run_name, "train.optim.total_steps=8",
                                 *one_worker))
    assert steps_of(second.history) == [2, 4, 6, 8]
    assert [row["attempt"] for row in second.history] == [0, 0, 1, 1]
    state = json.loads(ObjectStore().read_text(f"{second.checkpoint_uri}/state.json"))
    assert state["started_from"] == [0, 4]
    run_files = set(ObjectStore().list(f"{storage}/{run_name}"))
    assert {"history.json", "loss_curve.png"} <= run_files
    word2vec_table_is_in(second.checkpoint_uri)  # frozen through the resume too

    with pytest.raises(PreflightError, match="train.storage_path='s3://no-such-bucket-vatt/runs'"):
        pretrain(config(train_data, "s3://no-such-bucket-vatt/runs", "no-bucket"))


def test_run_that_cannot_start_fails_before_training(ray_cluster, train_data, tmp_path):
    from vatt.train.pretrain import pretrain

    with pytest.raises(PreflightError, match="train.num_workers=4 .* but .* has 2"):
        pretrain(config(train_data, tmp_path, "too-many", "train.num_workers=4",
                        "train.cpus_per_worker=1"))
    with pytest.raises(PreflightError, match="train.use_gpu=true but .* no GPU"):
        pretrain(config(train_data, tmp_path, "no-gpu", "train.use_gpu=true"))
    with pytest.raises(PreflightError, match=r"more than data.vocab_size=8 rows"):
        pretrain(config(train_data, tmp_path, "small-vocab", "data.vocab_size=8"))
    assert not any((tmp_path / name).exists() for name in ("too-many", "no-gpu", "small-vocab"))
