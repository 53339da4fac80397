"""The task registry (vatt.evaluate.tasks) and the tasks it added: known answers per task, several
datasets per task in one evaluation, the datasets found by manifest source, one entry = a task."""

import json

import numpy as np
import pytest
import torch

from vatt.config import load_config, replace
from vatt.evaluate.data import EvalJob
from vatt.evaluate.features import Features
from vatt.evaluate.runner import evaluate_features, evaluate_model
from vatt.evaluate.tasks import TASKS, Labels, Protocol, Task, register
from vatt.model import build_model

OVERRIDES = ["model.video.num_layers=1", "model.audio.num_layers=1", "model.text.num_layers=1",
             "eval.probe.epochs=5", "eval.probe.rank=8"]


@pytest.fixture(scope="module")
def setup():
    cfg = load_config("tiny", OVERRIDES)
    torch.manual_seed(0)
    return cfg, build_model(cfg)


def _segments():
    """Two videos of two annotated segments each, two windows per segment, each segment's
    caption its own clip's embedding. Video B's segments average to e2, which is segment a2's
    picture: per video, a2's caption finds video B; per segment, it finds its own segment."""
    e = np.eye(4)
    segments = {"A/a1": e[0], "A/a2": e[1], "B/b1": 0.8 * e[1] + 0.6 * e[2],
                "B/b2": 0.8 * e[1] - 0.6 * e[2]}
    clip_ids = np.repeat(list(segments), 2)  # 2 windows per segment
    windows = {"video_vt": np.stack([segments[c] for c in clip_ids]),
               "video_id": np.array([c.split("/")[0] for c in clip_ids]), "clip_id": clip_ids}
    captions = {"text_vt": np.stack(list(segments.values())),
                "video_id": np.array([c.split("/")[0] for c in segments]),
                "clip_id": np.array(list(segments)),
                "text_key": np.array(["t1", "t2", "t3", "t4"])}
    return {"test": Features(windows, captions)}


def _retrieval(dataset, splits):
    return EvalJob(TASKS["text_video_retrieval"], dataset, splits, source=dataset)


def test_youcook2_retrieval_counts_segments_as_items(setup):
    cfg, _ = setup
    results = evaluate_features([_retrieval("youcook2", _segments()),
                                 _retrieval("msrvtt", _segments())], cfg)
    m = results["metrics"]
    # YouCook2: 4 segment items, every caption finds its own segment
    assert m["text_video_retrieval@youcook2.num_items"] == 4
    assert m["text_video_retrieval@youcook2.R@1"] == 1.0
    assert results["tasks"]["text_video_retrieval@youcook2"]["metrics"]["item"] == "clip"
    # the same features grouped per video (MSR-VTT's items): 2 items, a2's caption misses
    assert m["text_video_retrieval@msrvtt.num_items"] == 2
    assert m["text_video_retrieval@msrvtt.R@1"] == 0.75
    assert m["text_video_retrieval@msrvtt.num_queries"] == 4
    # the flat key is the task's first dataset
    assert m["text_video_retrieval.R@1"] == m["text_video_retrieval@youcook2.R@1"]


def test_per_video_retrieval_merges_a_caption_shared_by_clips(setup):
    cfg, _ = setup
    split = _segments()
    split["test"].captions["text_key"] = np.array(["same", "same", "t3", "t4"])  # A's clips
    m = evaluate_features([_retrieval("msrvtt", split)], cfg)["metrics"]
    assert m["text_video_retrieval.num_queries"] == 3  # one query per (video, caption)


def _audio_batches(seed, num_videos, windows=2, batch_size=8):
    """AudioSet-like clips: each of 3 classes present or not (multi-hot), each present class a
    tone of its own frequency in the waveform."""
    g = torch.Generator().manual_seed(seed)
    hot = (torch.rand(num_videos, 3, generator=g) < 0.5).float()
    hot[hot.sum(1) == 0, 0] = 1.0
    hot = hot.repeat_interleave(windows, 0)
    t = torch.arange(12800).float()
    tones = torch.stack([torch.sin(t * f) for f in (0.05, 0.3, 1.1)])  # (3, S)
    audio = 0.3 * hot @ tones + 0.05 * torch.randn(len(hot), 12800, generator=g)
    ids = np.repeat([f"a{seed}_{i}" for i in range(num_videos)], windows)
    return [{"audio": audio[s:s + batch_size], "labels": hot[s:s + batch_size],
             "label": torch.full((len(hot[s:s + batch_size]),), -1),
             "video_id": ids[s:s + batch_size]} for s in range(0, len(hot), batch_size)]


def test_audio_finetune_learns_a_multilabel_toy(setup):
    from vatt.evaluate.metrics import d_prime

    cfg, model = setup
    cfg = replace(cfg, ["eval.finetune.steps=80", "eval.finetune.warmup_steps=8",
                        "eval.finetune.batch_size=8", "eval.finetune.lr=0.05"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    job = EvalJob(TASKS["audio_finetune"], "audioset", {"train": _audio_batches(1, 24),
                                                        "test": _audio_batches(2, 12)})
    result = evaluate_model(model, cfg, [job])
    m = result["metrics"]
    # the tones are the labels: the fine-tuned audio backbone ranks every class nearly right
    assert m["audio_finetune.mAP"] >= 0.9 and m["audio_finetune.AUC"] >= 0.9, m
    assert m["audio_finetune.mAP"] > m["audio_finetune.chance_mAP"] + 0.3
    assert m["audio_finetune.d_prime"] == pytest.approx(d_prime(m["audio_finetune.AUC"]))
    assert m["audio_finetune@audioset.mAP"] == m["audio_finetune.mAP"]
    assert len(result["tasks"]["audio_finetune@audioset"]["per_class"]["AP"]) == 3
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def _image_batches(seed, num_images, num_classes=3, batch_size=8):
    """ImageNet-like 1-frame clips whose colour follows the class."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(num_images) % num_classes
    colour = (labels.float() / num_classes * 2 - 1).view(-1, 1, 1, 1, 1)
    video = (colour + 0.3 * torch.randn(num_images, 1, 64, 64, 3, generator=g)).clamp(-1, 1)
    ids = np.array([f"img{seed}_{i}" for i in range(num_images)])
    return [{"video": video[s:s + batch_size], "label": labels[s:s + batch_size],
             "video_id": ids[s:s + batch_size]} for s in range(0, num_images, batch_size)]


def test_image_finetune_fills_one_temporal_patch(setup):
    from vatt.evaluate.finetune import ImageToPatch

    cfg, model = setup
    temporal = cfg.model.video.patch_size[0]
    one = torch.zeros(2, 1, 64, 64, 3)
    one[1] = 1.0
    filled = ImageToPatch(temporal, "image_finetune")(one)
    assert filled.shape == (2, temporal, 64, 64, 3) and torch.equal(filled[:, -1], one[:, 0])
    # the model takes a clip of one temporal patch: a (1, 4, 4) token grid at the tiny input
    assert model.backbones["video"].patch_embed.grid(filled.shape) == (1, 4, 4)
    with pytest.raises(ValueError, match="one frame"):
        ImageToPatch(temporal, "image_finetune")(torch.zeros(1, temporal + 1, 64, 64, 3))
    cfg = replace(cfg, ["eval.finetune.steps=40", "eval.finetune.warmup_steps=4",
                        "eval.finetune.batch_size=8"])
    job = EvalJob(TASKS["image_finetune"], "imagenet", {"train": _image_batches(1, 24),
                                                        "test": _image_batches(2, 12)})
    m = evaluate_model(model, cfg, [job])["metrics"]
    assert m["image_finetune.top1"] >= 0.9 and m["image_finetune.num_test_windows"] == 12, m


def test_loader_gives_an_image_the_temporal_patch_size():
    from vatt.data.loader import clip_spec

    cfg = load_config("tiny")
    spec = clip_spec(cfg, {"label_names": ["a"]}, training=False, vocab_words=("<pad>", "<unk>"))
    assert spec.image_frames == cfg.model.video.patch_size[0] == 2


def _action_batches(seed, num_videos, num_classes=3, windows=2, batch_size=6):
    g = torch.Generator().manual_seed(seed)
    labels = (torch.arange(num_videos) % num_classes).repeat_interleave(windows)
    colour = (labels.float() / num_classes * 2 - 1).view(-1, 1, 1, 1, 1)
    video = (colour + 0.3 * torch.randn(len(labels), 8, 64, 64, 3, generator=g)).clamp(-1, 1)
    ids = np.repeat([f"v{seed}_{i}" for i in range(num_videos)], windows)
    return [{"video": video[s:s + batch_size], "label": labels[s:s + batch_size],
             "video_id": ids[s:s + batch_size]} for s in range(0, len(labels), batch_size)]


def test_action_on_two_datasets_gives_two_rows(setup, tmp_path):
    from vatt.evaluate.report import result_rows, write_report_folder

    cfg, model = setup
    names = ["archery", "bowling", "surfing"]
    # jobs of batches held in memory with a manifest's class names and source, as plan makes
    ucf = EvalJob(TASKS["action_linear"], "ucf101", {"train": _action_batches(1, 12),
                                                     "test": _action_batches(2, 6)},
                  source="ucf101", label_names=tuple(names))
    kinetics = EvalJob(TASKS["action_linear"], "kinetics400", {"train": _action_batches(3, 12),
                                                               "test": _action_batches(4, 9)},
                       source="kinetics", label_names=tuple(names))
    results = evaluate_model(model, cfg, [ucf, kinetics])
    m = results["metrics"]
    assert results["datasets"] == {"action_linear": ["ucf101", "kinetics400"]}
    assert m["action_linear@ucf101.num_test_videos"] == 6
    assert m["action_linear@kinetics400.num_test_videos"] == 9
    assert m["action_linear.top1"] == m["action_linear@ucf101.top1"]  # the first dataset
    body = results["tasks"]["action_linear@kinetics400"]
    assert body["class_names"] == names and body["source"] == "kinetics"
    promoted = {"metrics": {"action_linear@kinetics400.top1": 0.25}}
    rows = result_rows(results, promoted)
    assert [(r["task"], r["dataset"]) for r in rows] == [("action_linear", "ucf101"),
                                                         ("action_linear", "kinetics400")]
    assert rows[1]["promoted model"] == "top1 0.2500" and rows[0]["promoted model"] == "none"
    report = (tmp_path / "report.md")
    write_report_folder(results, tmp_path, promoted)
    text = report.read_text()
    assert "| action_linear | kinetics400 |" in text and "| surfing |" in text
    assert (tmp_path / "action_linear-kinetics400_confusion.png").exists()


def test_paper_numbers_beside_a_paper_preset():
    from vatt.evaluate.report import result_rows

    body = {"task": "action_finetune", "dataset": "k400", "source": "kinetics",
            "num_classes": 400, "metrics": {"top1": 0.5, "top5": 0.7}}
    rows = result_rows({"config_name": "mbs", "tasks": {"action_finetune@k400": body}})
    assert rows[0]["paper"] == "top1 0.811 (mbs)"
    k600 = dict(body, num_classes=600)  # the paper's 81.1 is Kinetics-400's
    assert result_rows({"config_name": "mbs", "tasks": {"x": k600}})[0]["paper"] == "-"
    assert result_rows({"config_name": "tiny", "tasks": {"x": body}})[0]["paper"] == "-"
    retrieval = {"task": "text_video_retrieval", "dataset": "youcook2", "source": "youcook2",
                 "metrics": {"R@10": 0.3}}
    assert result_rows({"config_name": "mbs", "tasks": {"y": retrieval}})[0]["paper"] \
        == "R@10 0.455 (mbs)"


def _manifest(folder, source, **extra):
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"source": source, "splits": {},
                                                      "clips": [], **extra}))


def test_datasets_are_found_by_source_real_before_generated(tmp_path):
    from vatt.data.loader import DataError
    from vatt.evaluate.data import choose_datasets

    _manifest(tmp_path / "synthetic-ucf101", "synthetic-ucf101")  # today's generated manifests
    # what `vatt ingest --source synthetic` writes: source synthetic, the layout in the name
    _manifest(tmp_path / "synthetic-esc50", "synthetic", name="synthetic-esc50")
    cfg = load_config("tiny", [f"data.path={tmp_path}"])
    chosen, skipped = choose_datasets(cfg, ["action_linear", "audio_linear", "audio_finetune"],
                                      optional=["audio_finetune"])
    assert chosen == {"action_linear": ["synthetic-ucf101"], "audio_linear": ["synthetic-esc50"]}
    assert "audio_finetune" in skipped and "audioset" in skipped["audio_finetune"]
    with pytest.raises(DataError, match="audio_finetune.*audioset"):
        choose_datasets(cfg, ["audio_finetune"])  # asked for by name: its data must be there
    _manifest(tmp_path / "ucf101", "ucf101")
    _manifest(tmp_path / "kinetics600", "kinetics", name="kinetics600")
    chosen, _ = choose_datasets(cfg, ["action_linear"])
    assert chosen == {"action_linear": ["ucf101", "kinetics600"]}  # real only; ucf101 first
    assert choose_datasets(cfg, ["action_finetune"])[0] == {
        "action_finetune": ["kinetics600", "ucf101"]}  # the paper fine-tunes on Kinetics
    named = replace(cfg, ["eval.datasets.action_linear=[ucf101,synthetic-ucf101]"])
    assert choose_datasets(named, ["action_linear"])[0]["action_linear"] == \
        ["ucf101", "synthetic-ucf101"]
    with pytest.raises(DataError, match="source 'kinetics'.*text_video_retrieval"):
        choose_datasets(cfg, ["text_video_retrieval"], {"text_video_retrieval": ["kinetics600"]})


def test_adding_a_task_is_one_entry(setup):
    cfg, model = setup

    def mean_norm(ctx):
        """Known answer: the mean L2 norm of the video features' pooled outputs."""
        pooled = ctx.features["test"].require("video_pooled", ctx.name)
        return {"metrics": {"mean_norm": float(np.linalg.norm(pooled, axis=1).mean()),
                            "windows": len(pooled)}}

    register(Task(name="toy_norm", description="mean feature norm", modalities=("video",),
                  sources=("ucf101",), splits=("test",), protocol=Protocol.zero_shot,
                  metrics=("mean_norm",), labels=Labels.none, run=mean_norm))
    try:
        batches = _action_batches(5, 4)
        result = evaluate_model(model, cfg, [
            EvalJob(TASKS["toy_norm"], "batches", {"test": batches}),
            EvalJob(TASKS["action_linear"], "batches", {"train": batches, "test": batches})])
        with torch.no_grad():
            model.eval()
            expected = torch.cat([model.backbones["video"](b["video"]) for b in batches])
        assert result["metrics"]["toy_norm.windows"] == 8
        assert result["metrics"]["toy_norm.mean_norm"] == pytest.approx(
            float(expected.norm(dim=1).mean()), rel=1e-4)
        assert "action_linear.top1" in result["metrics"]
        with pytest.raises(ValueError, match="already registered"):
            register(TASKS["toy_norm"])
    finally:
        TASKS.pop("toy_norm", None)


def _labelled_manifest(folder, source, splits, labelled=True):
    """A manifest of one clip per split (no media: planning reads the manifest only)."""
    clips = [{"clip_id": f"{split}0", "video_id": f"{split}0", "shard": f"{split}-0.tar",
              "label": 0 if labelled or split == "train" else -1} for split in splits]
    _manifest(folder, source, label_names=["archery", "bowling"],
              splits={split: {"shards": [f"{split}-0.tar"]} for split in splits}, clips=clips)


def test_plan_is_a_flat_list_of_jobs_and_what_was_skipped(tmp_path):
    """plan: one job per (task, dataset) with its splits by role, its source and class names;
    a split read by several jobs is one object (its features are extracted once); a task
    without data, and a dataset without a labelled test split, are skipped with the reason."""
    from vatt.evaluate.data import EvalSplit, plan

    _labelled_manifest(tmp_path / "ucf101", "ucf101", ("train", "test"))
    _labelled_manifest(tmp_path / "ucf101-nolabels", "ucf101", ("train", "test"), labelled=False)
    _labelled_manifest(tmp_path / "synthetic-msrvtt", "synthetic-msrvtt", ("test",))
    cfg = load_config("tiny", [f"data.path={tmp_path}"])
    jobs, skipped = plan(cfg, ["action_linear", "text_video_retrieval", "video_audio_retrieval",
                               "audio_finetune"], optional=["audio_finetune"])
    assert [(j.task.name, j.dataset, tuple(j.splits), j.source) for j in jobs] == [
        ("action_linear", "ucf101", ("train", "test"), "ucf101"),
        ("text_video_retrieval", "synthetic-msrvtt", ("test",), "msrvtt"),
        ("video_audio_retrieval", "synthetic-msrvtt", ("test",), "msrvtt")]
    assert jobs[0].key == "action_linear@ucf101" and jobs[0].num_classes == 2
    assert jobs[0].label_names == ("archery", "bowling")
    assert all(isinstance(s, EvalSplit) for j in jobs for s in j.splits.values())
    # the retrieval jobs read the same test split: one EvalSplit with both tasks' columns
    shared = jobs[1].splits["test"]
    assert shared is jobs[2].splits["test"] and {"video", "audio", "text"} <= shared.columns
    assert set(skipped) == {"audio_finetune", "action_linear@ucf101-nolabels"}
    assert "no ingested dataset of source audioset" in skipped["audio_finetune"]
    assert skipped["action_linear@ucf101-nolabels"].startswith("no labelled test split")
    # the same, asked for the unlabelled dataset alone: the task itself is skipped
    jobs, skipped = plan(cfg, ["action_linear"], {"action_linear": ["ucf101-nolabels"]})
    assert jobs == [] and list(skipped) == ["action_linear"]
