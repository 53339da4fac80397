"""Linear probes on synthetic frozen features with a known answer."""

import numpy as np
import pytest

from vatt.config import ProbeConfig
from vatt.evaluate.probes import cross_validated_probe, fit_probe, group_mean, linear_probe

FAST = ProbeConfig(rank=16, lr=5e-3, epochs=30, batch_size=64)


def _clusters(rng, num_videos, windows, num_classes, dim=32, noise=1.0, centres=None):
    """Videos of `windows` windows each; a window = its class centre + its own noise."""
    centres = rng.normal(size=(num_classes, dim)) if centres is None else centres
    labels = np.repeat(rng.integers(0, num_classes, num_videos), windows)
    video_ids = np.repeat([f"v{i:04d}" for i in range(num_videos)], windows)
    features = centres[labels] + noise * rng.normal(size=(len(labels), dim))
    return features, labels, video_ids, centres


def test_group_mean_by_hand():
    ids, means = group_mean([[1.0], [3.0], [10.0]], ["b", "b", "a"])
    assert ids.tolist() == ["a", "b"] and means[:, 0].tolist() == [10.0, 2.0]


def test_probe_learns_separable_classes_and_random_labels_stay_at_chance():
    rng = np.random.default_rng(0)
    x, y, ids, centres = _clusters(rng, 300, 2, 5)
    tx, ty, tids, _ = _clusters(rng, 100, 4, 5, centres=centres)
    result = linear_probe(x, y, ids, tx, ty, tids, 5, settings=FAST, task="action")
    assert result.metrics["top1"] > 0.9
    assert result.metrics["num_test_videos"] == 100 and result.metrics["num_test_windows"] == 400
    assert np.asarray(result.confusion).sum() == 100
    assert len(result.per_class["accuracy"]) == 5
    shuffled = np.repeat(rng.integers(0, 5, 300), 2)  # labels unrelated to features
    chance = linear_probe(x, shuffled, ids, tx, ty, tids, 5, settings=FAST).metrics["top1"]
    assert chance < 0.45


def test_window_averaging_helps_with_noisy_windows():
    rng = np.random.default_rng(1)
    x, y, ids, centres = _clusters(rng, 400, 1, 4, noise=3.0)
    tx, ty, tids, _ = _clusters(rng, 200, 8, 4, noise=3.0, centres=centres)
    averaged = linear_probe(x, y, ids, tx, ty, tids, 4, settings=FAST).metrics["top1"]
    # the same windows scored one by one (each its own "video")
    single = linear_probe(x, y, ids, tx, ty, np.arange(len(ty)), 4, settings=FAST).metrics["top1"]
    assert averaged > single + 0.05


def test_probe_is_deterministic():
    rng = np.random.default_rng(2)
    x, y, ids, _ = _clusters(rng, 50, 2, 3)
    a = fit_probe(x, y, 3, settings=FAST)
    b = fit_probe(x, y, 3, settings=FAST)
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values()):
        assert np.array_equal(pa.numpy(), pb.numpy())


def test_multilabel_probe():
    rng = np.random.default_rng(3)
    num_classes, dim = 6, 24
    mixing = rng.normal(size=(num_classes, dim))

    def sample(n):
        targets = (rng.uniform(size=(n, num_classes)) < 0.3).astype(np.float32)
        return targets @ mixing + 0.5 * rng.normal(size=(n, dim)), targets

    x, t = sample(400)
    tx, tt = sample(150)
    result = linear_probe(x, t, np.arange(400), tx, tt, np.arange(150), num_classes,
                          multilabel=True, settings=FAST)
    m = result.metrics
    assert m["mAP"] > 0.85 and m["AUC"] > 0.9 and m["d_prime"] > 2.0
    assert m["mAP"] > 2 * m["chance_mAP"]
    assert len(result.per_class["AP"]) == num_classes and result.confusion is None


def test_cross_validated_probe_averages_folds():
    rng = np.random.default_rng(4)
    x, y, ids, _ = _clusters(rng, 150, 1, 5)
    folds = np.arange(150) % 3 + 1
    result = cross_validated_probe(x, y, ids, folds, 5, settings=FAST)
    assert result.metrics["num_folds"] == 3
    assert result.metrics["top1"] == pytest.approx(np.mean(result.metrics["top1_per_fold"]))
    assert result.metrics["top1"] > 0.9
    assert np.asarray(result.confusion).sum() == 150


def test_errors_name_the_problem():
    x = np.zeros((4, 3))
    with pytest.raises(ValueError, match="different labels"):
        linear_probe(x, [0, 1, 0, 0], ["a", "a", "b", "b"], x, [0, 0, 1, 1], ["a", "a", "b", "b"], 2)
    with pytest.raises(ValueError, match="label -1"):
        fit_probe(x, [0, -1, 0, 1], 2, settings=FAST)
    with pytest.raises(ValueError, match="NaN"):
        fit_probe(np.full((4, 3), np.nan), [0, 1, 0, 1], 2, settings=FAST)
