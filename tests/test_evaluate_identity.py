"""The evaluation identity the promotion gate compares (vatt.evaluate.identity): exactly what
changes a task's number, on manifests of the layout ingest writes, read through the real
vatt.evaluate.data splits (nothing is decoded: the identity reads manifests only)."""

import json

from vatt.config import load_config
from vatt.evaluate.data import EvalJob, read_split
from vatt.evaluate.identity import code_version, differences, evaluation_identity, metric_part
from vatt.evaluate.tasks import TASKS


def _clip(split, i, content="x"):
    return {"clip_id": f"{split}-{i}", "video_id": f"v-{split}-{i}", "shard": f"{split}-000000",
            "sha256": {"mp4": f"{content}{split}{i}", "json": f"j{content}{split}{i}"}}


def _write(root, name, train=4, test=3, changed_test=None, labels=("walk", "run")):
    clips = [_clip("train", i) for i in range(train)]
    clips += [_clip("test", i, "y" if i == changed_test else "x") for i in range(test)]
    manifest = {"name": name, "source": "msrvtt", "label_names": list(labels),
                "splits": {"train": {"shards": ["train-000000"]},
                           "test": {"shards": ["test-000000"]}},
                "clips": clips}
    (root / name).mkdir(parents=True, exist_ok=True)
    (root / name / "manifest.json").write_text(json.dumps(manifest))


def _identity(root, overrides=()):
    cfg = load_config("tiny", [f"data.path={root}", *overrides])
    split = {role: read_split(cfg, "msrvtt", role, ["video", "text"]) for role in ("train", "test")}
    jobs = [EvalJob(TASKS["text_video_retrieval"], "msrvtt", {"test": split["test"]}),
            EvalJob(TASKS["action_linear"], "msrvtt", split)]
    return evaluation_identity(cfg, jobs)


def _part(identity, task):
    return metric_part(identity, f"{task}.R@10")


def test_adding_training_clips_changes_no_retrieval_number(tmp_path):
    _write(tmp_path, "msrvtt")
    before = _identity(tmp_path)
    _write(tmp_path, "msrvtt", train=9)  # a re-ingest with more training clips
    after = _identity(tmp_path)
    assert differences(_part(after, "text_video_retrieval"),
                       _part(before, "text_video_retrieval")) == []
    # the probe trains on them: its number may change, and the identity says so
    assert differences(_part(after, "action_linear"), _part(before, "action_linear")) == [
        "train split content"]


def test_a_changed_test_clip_changes_the_test_split_only(tmp_path):
    _write(tmp_path, "msrvtt")
    before = _identity(tmp_path)
    _write(tmp_path, "msrvtt", changed_test=1)  # one clip re-encoded, e.g. a new generator
    after = _identity(tmp_path)
    assert differences(_part(after, "text_video_retrieval"),
                       _part(before, "text_video_retrieval")) == ["test split content"]
    assert after["tasks"]["action_linear"]["splits"]["train"] == \
        before["tasks"]["action_linear"]["splits"]["train"]


def test_only_the_settings_that_change_a_tasks_number_are_in_its_identity(tmp_path):
    _write(tmp_path, "msrvtt")
    base = _identity(tmp_path)
    # where the numbers go, how big a feature batch is, the device, and fine-tuning's settings
    # for the tasks that do not fine-tune: no number of theirs changes
    same = _identity(tmp_path, ["eval.batch_size=7", "eval.finetune.shuffle_mb=1",
                                "eval.finetune.steps=3", "eval.output_path=elsewhere",
                                "eval.device=cpu", "eval.promotion.margin=0.5"])
    assert same["tasks"] == base["tasks"]
    probe = _identity(tmp_path, ["eval.probe.epochs=5"])
    assert probe["tasks"]["text_video_retrieval"] == base["tasks"]["text_video_retrieval"]
    assert differences(_part(probe, "action_linear"), _part(base, "action_linear")) == [
        "eval.probe.epochs 100 -> 5"]
    # the captions per clip are the retrieval queries
    captions = _identity(tmp_path, ["data.num_text_candidates=2"])
    assert differences(_part(captions, "text_video_retrieval"),
                       _part(base, "text_video_retrieval")) == ["data.num_text_candidates 5 -> 2"]
    assert captions["tasks"]["action_linear"] == base["tasks"]["action_linear"]
    part = base["tasks"]["text_video_retrieval"]
    assert part["code"] == code_version() and len(part["code"]) == 16
    assert base["tasks"]["text_video_retrieval@msrvtt"] == part  # the task's first dataset
