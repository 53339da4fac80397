"""Fine-tuning's training stream and which splits an evaluation reads, in process (no Ray):
the shuffle buffer keeps the loader's uint8 video and stays within eval.finetune.shuffle_mb;
Kinetics is tested on val; a test split without labels is passed over with its reason. That the
train split is read with the loader's training augmentation (new crops each epoch, the test
windows unchanged) is test_evaluate_data.py's, through the real loader."""

import json

import numpy as np
import pytest
import torch

from vatt.config import load_config, replace
from vatt.config import FinetuneConfig
from vatt.evaluate.finetune import _TrainingStream, finetune_classifier
from vatt.model import build_model

FRAMES, SIZE = 8, 64  # the tiny preset's input


def _uint8_batches(num_videos, batch_size=8, seed=0, num_classes=3):
    """Training batches as a training EvalSplit gives them: uint8 video, has_video, labels."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(num_videos) % num_classes
    level = (labels * 80 + 40).view(-1, 1, 1, 1, 1)  # the class is the brightness
    noise = torch.randint(-30, 31, (num_videos, FRAMES, SIZE, SIZE, 3), generator=g)
    video = (level + noise).clamp(0, 255).to(torch.uint8)  # (N, T, H, W, 3)
    ids = np.array([f"v{seed}_{i}" for i in range(num_videos)])
    return [{"video": video[s:s + batch_size], "label": labels[s:s + batch_size],
             "has_video": torch.ones(len(labels[s:s + batch_size])),
             "video_id": ids[s:s + batch_size]} for s in range(0, num_videos, batch_size)]


def _float_batches(batches):
    """The same clips as evaluation batches: float32 in [-1, 1]."""
    return [{**b, "video": b["video"].float() * (2 / 255) - 1} for b in batches]


WINDOW_BYTES = FRAMES * SIZE * SIZE * 3  # one uint8 window: 98,304 bytes


def test_the_shuffle_buffer_holds_uint8_windows_within_its_byte_bound():
    bound_mb = 20 * WINDOW_BYTES / 2 ** 20  # room for exactly 20 windows (of 4 batches, 32)
    settings = FinetuneConfig(batch_size=8, shuffle_mb=bound_mb)
    stream = _TrainingStream(_uint8_batches(24), 3, settings, "action_finetune")
    batches = [b for _, b in zip(range(12), stream)]  # 96 windows: the split 4 times over
    inputs, targets, present = batches[0]
    assert inputs.dtype == torch.uint8 and inputs.shape == (8, FRAMES, SIZE, SIZE, 3)
    assert targets.shape == (8,) and present.tolist() == [1.0] * 8
    # full before the first batch, then refilled: exactly its bound, one byte a pixel
    assert stream.peak_bytes == 20 * WINDOW_BYTES <= bound_mb * 2 ** 20
    # a bound with room to spare: 4 batches, not more (a small split's first step comes soon)
    roomy = _TrainingStream(_uint8_batches(24), 3, FinetuneConfig(batch_size=8),
                            "action_finetune")
    next(iter(roomy))
    assert roomy.peak_bytes == 32 * WINDOW_BYTES
    # a bound below one batch is refused, naming the setting and the room a batch needs
    small = FinetuneConfig(batch_size=8, shuffle_mb=7 * WINDOW_BYTES / 2 ** 20)
    with pytest.raises(ValueError, match=r"eval\.finetune\.shuffle_mb=.*holds 7 windows.*"
                                         r"eval\.finetune\.batch_size=8.*at least 1\b"):
        next(iter(_TrainingStream(_uint8_batches(24), 3, small, "action_finetune")))


def test_finetuning_on_uint8_windows_learns_and_reports_its_buffer():
    cfg = load_config("tiny", ["model.video.num_layers=1", "model.audio.num_layers=1",
                               "model.text.num_layers=1"])
    torch.manual_seed(0)
    model = build_model(cfg)
    train = _uint8_batches(24)
    test = _float_batches(_uint8_batches(12, seed=1))
    bound_mb = 32 * WINDOW_BYTES / 2 ** 20
    settings = FinetuneConfig(steps=30, warmup_steps=3, batch_size=8, lr=0.01,
                              shuffle_mb=bound_mb)
    found = finetune_classifier(model, train, test, 3, settings)
    m = found.metrics
    assert m["top1"] >= 0.9, m  # the brightness is the class
    assert m["num_train_windows"] == 24
    assert m["shuffle_buffer_peak_mb"] == pytest.approx(32 * WINDOW_BYTES / 2 ** 20, abs=0.05)
    # the uint8 windows train as their float32 equal would (the same numbers)
    same = finetune_classifier(model, _float_batches(train), test, 3,
                               FinetuneConfig(steps=30, warmup_steps=3, batch_size=8, lr=0.01,
                                              shuffle_mb=4 * bound_mb))
    assert same.metrics["final_train_loss"] == pytest.approx(m["final_train_loss"], rel=1e-4)


def test_shuffle_buffer_bound_is_checked_in_the_config():
    from vatt.config import ConfigError

    assert load_config("tiny").eval.finetune.shuffle_mb == 1024.0
    with pytest.raises(ConfigError, match=r"eval\.finetune\.shuffle_mb=0"):
        load_config("tiny", ["eval.finetune.shuffle_mb=0"])


def _dataset(root, name, source, splits, label_names=("a", "b")):
    """A manifest (no shards need exist to choose splits): splits {name: labels of its clips}."""
    clips, shard_names = [], {}
    for split, labels in splits.items():
        shard_names[split] = {"shards": [f"shards/{split}-000000.tar"], "clips": len(labels)}
        clips += [{"clip_id": f"{name}/{split}{i}", "video_id": f"{split}{i}",
                   "shard": f"shards/{split}-000000.tar", "label": label, "labels": []}
                  for i, label in enumerate(labels)]
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({
        "source": source, "name": name, "splits": shard_names, "clips": clips,
        "label_names": list(label_names)}))


def test_kinetics_is_tested_on_val_and_an_unlabelled_test_split_is_skipped(tmp_path):
    from vatt.evaluate.data import plan, read_split

    # Kinetics as published: val labelled, test.csv without labels
    _dataset(tmp_path, "kinetics400", "kinetics",
             {"train": [0, 1, 0], "val": [1, 0], "test": [-1, -1, -1]})
    # a UCF101 whose test list lost its labels: passed over for val, with the reason
    _dataset(tmp_path, "ucf101", "ucf101", {"train": [0, 1], "val": [0, 1], "test": [-1, -1]})
    cfg = load_config("tiny", [f"data.path={tmp_path}"])
    jobs, skipped = plan(cfg, ["action_finetune", "action_linear"])
    data = {(job.task.name, job.dataset): job.splits for job in jobs}
    kinetics = data["action_finetune", "kinetics400"]
    assert kinetics["test"].splits == ("val",)  # the paper's reported split
    assert kinetics["train"].training and not kinetics["test"].training
    assert data["action_linear", "kinetics400"]["test"].splits == ("val",)
    assert not data["action_linear", "kinetics400"]["train"].training  # probes: eval windows
    assert data["action_finetune", "ucf101"]["test"].splits == ("val",)
    why = skipped["action_finetune@ucf101 split test"]
    assert "split test has a label" in why and why.endswith("evaluated on val")
    assert not any("kinetics400" in key for key in skipped)  # val is read; test never was
    assert read_split(cfg, "kinetics400", "test", ["video"]).splits == ("val",)

    # only an unlabelled test split: that dataset is skipped with its reason, the rest runs
    _dataset(tmp_path, "kinetics600", "kinetics", {"train": [0, 1], "test": [-1, -1]})
    jobs, skipped = plan(cfg, ["action_finetune"])
    assert sorted(job.dataset for job in jobs) == ["kinetics400", "ucf101"]
    assert "no labelled test split" in skipped["action_finetune@kinetics600"]
    assert "kinetics600's split test has a label" in skipped["action_finetune@kinetics600"]
    # the task's only dataset: the task is skipped, not the evaluation
    only = replace(cfg, ["eval.datasets.action_finetune=[kinetics600]"])
    jobs, skipped = plan(only, ["action_finetune", "action_linear"])
    assert {job.task.name for job in jobs} == {"action_linear"}
    assert "Kinetics' test.csv" in skipped["action_finetune"]
