"""The model registry: promotion gate, decision log, atomicity on bad input."""

import json

import pytest
import torch

from vatt.checkpoints import CheckpointError
from vatt.evaluate.registry import Registry, RegistryError
from vatt.storage import ObjectStore


def _checkpoint(tmp_path, name, seed=0):
    folder = tmp_path / "runs" / name
    folder.mkdir(parents=True)
    torch.manual_seed(seed)
    torch.save(torch.nn.Linear(4, 2).state_dict(), folder / "model.pt")
    return folder


def _consider(registry, ckpt, value, metric="text_video_retrieval.R@10"):
    return registry.consider(ckpt, config={"name": "tiny"}, data_version={"md5": "abc"},
                             metrics={metric: value, "action_linear.top1": 0.5}, metric=metric)


def test_first_promoted_then_only_not_worse(tmp_path):
    registry = Registry(tmp_path / "registry", ObjectStore())
    assert registry.promoted is None
    first = _consider(registry, _checkpoint(tmp_path, "a", 0), 0.30)
    assert first.promoted and first.promoted_value is None
    worse = _consider(registry, _checkpoint(tmp_path, "b", 1), 0.20)
    assert not worse.promoted
    assert (worse.candidate_value, worse.promoted_value) == (0.20, 0.30)
    equal = _consider(registry, _checkpoint(tmp_path, "c", 2), 0.30)
    assert equal.promoted
    doc = registry.read()
    assert doc["promoted"]["source_checkpoint"].endswith("c")
    kept = doc["promoted"]["checkpoint"]  # the registry's own copy of the weights
    assert kept.startswith(str(tmp_path / "registry" / "models"))
    assert torch.equal(torch.load(f"{kept}/model.pt", weights_only=True)["weight"],
                       torch.load(tmp_path / "runs" / "c" / "model.pt", weights_only=True)["weight"])
    assert doc["promoted"]["data_version"] == {"md5": "abc"}
    assert doc["promoted"]["config"] == {"name": "tiny"}
    assert len(doc["promoted"]["weights_sha256"]) == 64
    assert [d["promoted"] for d in doc["decisions"]] == [True, False, True]
    assert all("candidate_value" in d and "promoted_value" in d for d in doc["decisions"])
    assert not (tmp_path / "registry" / "registry.lock").exists()
    assert sorted(p.name for p in (tmp_path / "registry").iterdir()) == ["models", "registry.json"]
    assert len(list((tmp_path / "registry" / "models").iterdir())) == 2  # a and c, not b


def test_lower_is_better_metric(tmp_path):
    registry = Registry(tmp_path / "registry", ObjectStore())
    _consider(registry, _checkpoint(tmp_path, "a"), 10.0, metric="text_video_retrieval.MedR")
    assert _consider(registry, _checkpoint(tmp_path, "b"), 8.0,
                     metric="text_video_retrieval.MedR").promoted
    assert not _consider(registry, _checkpoint(tmp_path, "c"), 9.0,
                         metric="text_video_retrieval.MedR").promoted


def _snapshot(registry):
    return registry.path.read_bytes()


def test_missing_or_corrupt_checkpoint_leaves_registry_unchanged(tmp_path):
    registry = Registry(tmp_path / "registry", ObjectStore())
    _consider(registry, _checkpoint(tmp_path, "a"), 0.3)
    before = _snapshot(registry)

    with pytest.raises(CheckpointError, match="does not exist"):
        _consider(registry, tmp_path / "runs" / "nope", 0.9)
    empty = tmp_path / "runs" / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="no model.pt"):
        _consider(registry, empty, 0.9)
    corrupt = _checkpoint(tmp_path, "corrupt")
    data = (corrupt / "model.pt").read_bytes()
    (corrupt / "model.pt").write_bytes(data[: len(data) // 2])  # truncated copy
    with pytest.raises(CheckpointError, match="corrupt"):
        _consider(registry, corrupt, 0.9)
    assert _snapshot(registry) == before


def test_unknown_metric_and_corrupt_registry(tmp_path):
    registry = Registry(tmp_path / "registry", ObjectStore())
    _consider(registry, _checkpoint(tmp_path, "a"), 0.3)
    before = _snapshot(registry)
    with pytest.raises(RegistryError, match="action_linear.top1"):
        registry.consider(_checkpoint(tmp_path, "b"), config={}, data_version=None,
                          metrics={"action_linear.top1": 0.9}, metric="audio_linear.mAP")
    assert _snapshot(registry) == before

    registry.path.write_text('{"promoted": ')  # e.g. a half-written file from another tool
    with pytest.raises(RegistryError, match="not valid JSON"):
        _consider(registry, _checkpoint(tmp_path, "c"), 0.9)
    assert registry.path.read_text() == '{"promoted": '
    assert json.loads(before)["promoted"]["metrics"]["text_video_retrieval.R@10"] == 0.3


def _evaluation(dataset="synthetic-msrvtt", digest="a" * 64, probe_epochs=100):
    return {"data": {"text_video_retrieval": {"dataset": dataset, "splits": {"test": digest}},
                     "action_linear": {"dataset": "synthetic-ucf101",
                                       "splits": {"train": "b" * 64, "test": "c" * 64}}},
            "settings": {"probe_epochs": probe_epochs, "eval_num_windows": 4}}


def test_the_gate_compares_like_with_like(tmp_path):
    registry = Registry(tmp_path / "registry", ObjectStore())

    def consider(name, seed, value, evaluation, **kwargs):
        return registry.consider(_checkpoint(tmp_path, name, seed), config={}, data_version={},
                                 metrics={"text_video_retrieval.R@10": value},
                                 metric="text_video_retrieval.R@10", evaluation=evaluation,
                                 **kwargs)

    assert consider("msrvtt-1", 0, 0.40, _evaluation("msrvtt")).promoted
    # the same data and settings: compared, and a worse model is refused
    assert not consider("msrvtt-2", 1, 0.35, _evaluation("msrvtt")).promoted
    # another dataset (60 synthetic videos): not comparable, said so, decided by the setting
    other = consider("synthetic", 2, 0.98, _evaluation("synthetic-msrvtt"), promote_incomparable=False)
    assert not other.promoted and other.reason.startswith("no comparable incumbent")
    assert "msrvtt (test aaaaaaaaaaaa)" in other.reason and "synthetic-msrvtt" in other.reason
    # the same dataset at another version (manifest hash), or other settings: not comparable
    assert "no comparable" in consider("v2", 3, 0.1, _evaluation("msrvtt", "d" * 64),
                                       promote_incomparable=False).reason
    assert "no comparable" in consider("epochs", 4, 0.1, _evaluation("msrvtt", probe_epochs=5),
                                       promote_incomparable=False).reason
    # the default: the candidate is promoted on its own evaluation, and the entry records it
    promoted = consider("synthetic-2", 5, 0.2, _evaluation("synthetic-msrvtt"))
    assert promoted.promoted and "promoted on its own evaluation" in promoted.reason
    doc = registry.read()
    assert doc["promoted"]["evaluation"] == _evaluation("synthetic-msrvtt")
    assert all(d["evaluation"] is not None for d in doc["decisions"])
    # a different action dataset does not matter to a retrieval metric
    changed = _evaluation("synthetic-msrvtt")
    changed["data"]["action_linear"]["dataset"] = "kinetics400"
    assert consider("synthetic-3", 6, 0.3, changed).reason == "not worse than the promoted model"


def test_concurrent_evaluations_against_an_s3_registry_lose_no_decision(s3_env, tmp_path):
    """Six evaluations decide at the same moment against one registry on the real S3 server:
    every decision is recorded, each against the model promoted just before it."""
    import threading
    import time

    from vatt.storage import ObjectStore

    root = f"s3://{s3_env.bucket}/registry-{time.time_ns()}"
    values = [0.31, 0.52, 0.17, 0.44, 0.58, 0.26]
    registries, checkpoints = [], []
    for i in range(len(values)):
        store = ObjectStore()
        assert store.client is not None  # each thread its own client, made before they start
        registries.append(Registry(root, store))
        checkpoints.append(_checkpoint(tmp_path, f"c{i}", seed=i))
    start, errors = threading.Barrier(len(values)), []

    def evaluate(i):
        try:
            start.wait()
            _consider(registries[i], checkpoints[i], values[i])
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=evaluate, args=(i,)) for i in range(len(values))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    doc = Registry(root, ObjectStore()).read()
    assert sorted(d["candidate_value"] for d in doc["decisions"]) == sorted(values)
    current = None
    for decision in doc["decisions"]:  # a consistent history: as if one after the other
        assert decision["promoted_value"] == current
        if decision["promoted"]:
            current = decision["candidate_value"]
    assert doc["promoted"]["metrics"]["text_video_retrieval.R@10"] == max(values) == current


def test_a_margin_promotes_only_differences_beyond_the_noise(tmp_path):
    registry = Registry(tmp_path / "registry", ObjectStore())

    def consider(name, seed, value, metric="text_video_retrieval.MRR"):
        return registry.consider(_checkpoint(tmp_path, name, seed), config={}, data_version={},
                                 metrics={metric: value}, metric=metric, margin=0.05)

    assert consider("a", 0, 0.40).promoted
    within = consider("b", 1, 0.44)  # better, but by less than the run-to-run noise
    assert not within.promoted and "within run-to-run noise" in within.reason
    beyond = consider("c", 2, 0.46)
    assert beyond.promoted and "by at least the margin 0.05" in beyond.reason
    # lower-is-better metrics need the margin the other way
    registry = Registry(tmp_path / "registry-medr", ObjectStore())
    assert consider("d", 3, 10.0, "text_video_retrieval.MedR").promoted
    assert not consider("e", 4, 9.98, "text_video_retrieval.MedR").promoted
    assert consider("f", 5, 9.0, "text_video_retrieval.MedR").promoted
