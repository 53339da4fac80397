"""evaluate_model end to end on the real tiny model and synthetic batches (no loader needed)."""

import numpy as np
import pytest
import torch

from vatt.config import ConfigError, load_config
from vatt.evaluate.data import EvalJob
from vatt.evaluate.features import extract_features
from vatt.evaluate.runner import evaluate_model
from vatt.evaluate.tasks import TASKS
from vatt.model import build_model

OVERRIDES = ["model.video.num_layers=1", "model.audio.num_layers=1", "model.text.num_layers=1",
             "eval.probe.epochs=5", "eval.probe.rank=8"]


def _batches(seed, num_videos, windows=2, num_classes=3, batch_size=6, with_text=True):
    """Windows of videos whose pixels, sound and caption words follow the class."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_classes, (num_videos,), generator=g).repeat_interleave(windows)
    video_ids = np.repeat([f"vid{seed}_{i}" for i in range(num_videos)], windows)
    n = len(labels)
    colour = (labels.float() / num_classes * 2 - 1).view(n, 1, 1, 1, 1)
    video = (colour + 0.3 * torch.randn(n, 8, 64, 64, 3, generator=g)).clamp(-1, 1)
    tone = torch.sin(torch.arange(12800) * (labels.float().view(n, 1) + 1) * 0.05)
    audio = 0.5 * tone + 0.1 * torch.randn(n, 12800, generator=g)
    text = torch.zeros(n, 2, 16, dtype=torch.int64)
    text[:, 0, 0] = labels + 10
    text[:, 0, 1] = torch.as_tensor(np.repeat(np.arange(num_videos), windows)) + 100
    mask = torch.tensor([[1.0, 0.0]]).repeat(n, 1) if with_text else torch.zeros(n, 2)
    batches = []
    for start in range(0, n, batch_size):
        sl = slice(start, start + batch_size)
        batches.append({"video": video[sl], "audio": audio[sl], "text": text[sl],
                        "text_mask": mask[sl], "label": labels[sl], "video_id": video_ids[sl]})
    return batches


def jobs_of(splits, *tasks, dataset="batches"):
    """One job per task on the same batches held in memory (their features extracted once)."""
    return [EvalJob(TASKS[task], dataset, splits) for task in tasks]


@pytest.fixture(scope="module")
def setup():
    cfg = load_config("tiny", OVERRIDES)
    torch.manual_seed(0)
    return cfg, build_model(cfg), {"train": _batches(1, 12), "test": _batches(2, 8)}


def test_features_one_caption_per_video(setup):
    cfg, model, data = setup
    features = extract_features(model, data["test"], ["video", "audio", "text"])
    assert features.windows["video_vt"].shape == (16, cfg.model.heads.vt_dim)
    assert features.windows["audio_pooled"].shape[0] == 16
    assert features.captions["text_vt"].shape == (8, cfg.model.heads.vt_dim)  # deduplicated


def test_evaluate_model_all_tasks_deterministic(setup):
    cfg, model, data = setup
    jobs = jobs_of(data, *cfg.eval.tasks)
    first = evaluate_model(model, cfg, jobs)
    second = evaluate_model(model, cfg, jobs)
    assert first == second  # the same model evaluated twice gives the same numbers
    m = first["metrics"]
    for name in ("action_linear.top1", "action_linear.top5", "audio_linear.top1",
                 "text_video_retrieval.R@10", "text_video_retrieval.MedR",
                 "video_audio_retrieval.R@1"):
        assert name in m
    assert 0 <= m["action_linear.top1"] <= 1 and m["action_linear.top5"] == 1.0  # 3 classes
    assert m["text_video_retrieval.num_queries"] == 8 and m["text_video_retrieval.num_items"] == 8
    assert 1 <= m["video_audio_retrieval.MedR"] <= 8
    assert len(first["tasks"]["text_video_retrieval@batches"]["ranks"]) == 8
    assert np.asarray(first["tasks"]["action_linear@batches"]["confusion"]).sum() == 8


def test_multilabel_and_folds(setup):
    cfg, model, data = setup
    multi = [dict(b, labels=torch.nn.functional.one_hot(b["label"], 3).float()) for b in data["test"]]
    multi_train = [dict(b, labels=torch.nn.functional.one_hot(b["label"], 3).float())
                   for b in data["train"]]
    result = evaluate_model(model, cfg,
                            jobs_of({"train": multi_train, "test": multi}, "audio_linear"))
    assert {"audio_linear.mAP", "audio_linear.AUC", "audio_linear.d_prime"} <= set(result["metrics"])
    # ESC-50 style: the train split holds folds 1-4, the test split fold 5; the probe leaves
    # each of the five folds out in turn over both splits and averages top-1
    train = [dict(b, fold=np.array([int(v.split("_")[1]) % 4 + 1 for v in b["video_id"]]))
             for b in data["train"]]
    test = [dict(b, fold=np.full(len(b["video_id"]), 5)) for b in data["test"]]
    result = evaluate_model(model, cfg, jobs_of({"train": train, "test": test}, "audio_linear"))
    assert result["metrics"]["audio_linear.num_folds"] == 5
    per_fold = result["tasks"]["audio_linear@batches"]["metrics"]["top1_per_fold"]
    assert len(per_fold) == 5 and result["metrics"]["audio_linear.top1"] == np.mean(per_fold)
    # every clip of both splits is tested once: 12 + 8 videos
    assert np.asarray(result["tasks"]["audio_linear@batches"]["confusion"]).sum() == 20
    # without folds (0 = none) the train -> test protocol applies
    plain = [dict(b, fold=np.zeros(len(b["video_id"]), dtype=np.int64)) for b in data["test"]]
    result = evaluate_model(model, cfg,
                            jobs_of({"train": data["train"], "test": plain}, "audio_linear"))
    assert "audio_linear.num_folds" not in result["metrics"]


def test_clear_errors(setup):
    cfg, model, data = setup
    from vatt.evaluate.data import plan

    with pytest.raises(ConfigError, match="allowed"):
        plan(cfg, ["action_finetune_typo"])
    no_text = {"test": _batches(3, 4, with_text=False)}
    with pytest.raises(ValueError, match="no caption"):
        evaluate_model(model, cfg, jobs_of(no_text, "text_video_retrieval"))
    with pytest.raises(KeyError, match="needs split 'train'"):
        jobs_of(no_text, "action_linear")


def test_finetuning_learns_the_classes_and_leaves_the_model_alone(setup):
    from vatt.config import replace

    cfg, model, data = setup
    cfg = replace(cfg, ["eval.finetune.steps=60", "eval.finetune.warmup_steps=6",
                        "eval.finetune.batch_size=8"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    jobs = jobs_of(data, "action_finetune")
    first = evaluate_model(model, cfg, jobs)
    second = evaluate_model(model, cfg, jobs)
    assert first["metrics"] == second["metrics"]  # seeded: same numbers twice
    m = first["metrics"]
    # the windows' pixels follow the class: the fine-tuned backbone separates the 8 test videos
    assert m["action_finetune.top1"] >= 0.75 and m["action_finetune.num_test_windows"] == 16
    assert m["action_finetune.final_train_loss"] < 1.0  # below ln 3 = 1.10 (label smoothing 0.1)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="through evaluate_model"):
        from vatt.evaluate.runner import evaluate_features

        evaluate_features(jobs, cfg)


def test_eval_device_is_checked_and_names_the_option():
    from vatt.evaluate.features import resolve_device

    with pytest.raises(ConfigError, match=r"eval\.device'.*'gpu'.*auto, cpu, cuda"):
        load_config("tiny", ["eval.device=gpu"])
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    if torch.cuda.is_available():
        assert resolve_device("cuda").type == "cuda"
    else:  # asked for a GPU where there is none: the error says which option to change
        with pytest.raises(ValueError, match=r"eval\.device=cuda.*no CUDA device"):
            resolve_device("cuda")
