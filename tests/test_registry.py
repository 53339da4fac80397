"""The model registry: promotion gate, decision log, atomicity on bad input."""

import json

import pytest
import torch

from vatt.evaluate.registry import CheckpointError, Registry, RegistryError


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
    registry = Registry(tmp_path / "registry")
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
    registry = Registry(tmp_path / "registry")
    _consider(registry, _checkpoint(tmp_path, "a"), 10.0, metric="text_video_retrieval.MedR")
    assert _consider(registry, _checkpoint(tmp_path, "b"), 8.0,
                     metric="text_video_retrieval.MedR").promoted
    assert not _consider(registry, _checkpoint(tmp_path, "c"), 9.0,
                         metric="text_video_retrieval.MedR").promoted


def _snapshot(registry):
    return registry.path.read_bytes()


def test_missing_or_corrupt_checkpoint_leaves_registry_unchanged(tmp_path):
    registry = Registry(tmp_path / "registry")
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
    registry = Registry(tmp_path / "registry")
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
