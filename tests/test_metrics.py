"""vatt.evaluate.metrics against scikit-learn / scipy and hand-computed cases (ties, classes
without positives)."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm
from sklearn.metrics import average_precision_score, roc_auc_score, top_k_accuracy_score

from vatt.evaluate.metrics import (
    average_precision_per_class, chance_recall_at_k, d_prime, is_better_or_equal,
    mean_average_precision, retrieval_metrics, retrieval_ranks, roc_auc, roc_auc_per_class,
    topk_accuracy,
)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# --- top-k accuracy ---------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 5])
def test_topk_matches_sklearn_without_ties(rng, k):
    logits = rng.normal(size=(200, 10))
    labels = rng.integers(0, 10, size=200)
    expected = top_k_accuracy_score(labels, logits, k=k, labels=np.arange(10))
    assert topk_accuracy(logits, labels, k) == pytest.approx(expected)
    assert topk_accuracy(torch.tensor(logits), torch.tensor(labels), k) == pytest.approx(expected)


def test_topk_hand_computed_with_ties_is_pessimistic():
    logits = np.array([
        [0.9, 0.1, 0.0],  # label 0: rank 1
        [0.5, 0.5, 0.0],  # label 1 tied with class 0: pessimistic rank 2
        [0.2, 0.2, 0.2],  # all tied, label 2: rank 3
        [0.1, 0.3, 0.6],  # label 1: rank 2
    ])
    labels = np.array([0, 1, 2, 1])
    assert topk_accuracy(logits, labels, 1) == pytest.approx(1 / 4)
    assert topk_accuracy(logits, labels, 2) == pytest.approx(3 / 4)
    assert topk_accuracy(logits, labels, 3) == pytest.approx(1.0)


def test_topk_rejects_missing_labels():
    with pytest.raises(ValueError, match="label -1"):
        topk_accuracy(np.zeros((2, 3)), np.array([0, -1]), 1)
    with pytest.raises(ValueError, match="rows"):
        topk_accuracy(np.zeros((2, 3)), np.array([0]), 1)


# --- average precision ------------------------------------------------------------------------


def test_map_matches_sklearn_with_ties(rng):
    # rounded scores create many ties; sklearn groups tied scores into one threshold, as we do
    scores = np.round(rng.uniform(size=(300, 6)), 1)
    targets = (rng.uniform(size=(300, 6)) < 0.3).astype(int)
    per_class = average_precision_per_class(scores, targets)
    for c in range(6):
        assert per_class[c] == pytest.approx(average_precision_score(targets[:, c], scores[:, c]))
    expected = average_precision_score(targets, scores, average="macro")
    assert mean_average_precision(scores, targets) == pytest.approx(expected)


def test_ap_hand_computed():
    # scores 0.9 (+), 0.8 (-), 0.7 (+), 0.6 (-): precision at the hits 1 and 2/3 -> AP 5/6
    assert average_precision_per_class([[0.9], [0.8], [0.7], [0.6]], [[1], [0], [1], [0]])[0] \
        == pytest.approx(5 / 6)
    # all scores tied: one threshold, precision = prevalence = 1/2
    assert average_precision_per_class([[0.5]] * 4, [[1], [0], [1], [0]])[0] == pytest.approx(0.5)


def test_map_leaves_out_classes_without_positives():
    scores = np.array([[0.9, 0.2, 0.1], [0.1, 0.8, 0.3], [0.4, 0.3, 0.2]])
    targets = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 0]])  # class 2 has no positives
    per_class = average_precision_per_class(scores, targets)
    assert np.isnan(per_class[2])
    assert per_class[:2] == pytest.approx([1.0, 1.0])
    assert mean_average_precision(scores, targets) == pytest.approx(1.0)  # not (1 + 1 + 0) / 3
    with pytest.raises(ValueError, match="no class has a positive"):
        mean_average_precision(scores, np.zeros_like(targets))


# --- ROC AUC and d-prime ----------------------------------------------------------------------


def test_auc_matches_sklearn_with_ties(rng):
    scores = np.round(rng.normal(size=(250, 5)), 1)
    targets = (rng.uniform(size=(250, 5)) < 0.4).astype(int)
    per_class = roc_auc_per_class(scores, targets)
    for c in range(5):
        assert per_class[c] == pytest.approx(roc_auc_score(targets[:, c], scores[:, c]))
    assert roc_auc(scores, targets) == pytest.approx(roc_auc_score(targets, scores, average="macro"))


def test_auc_hand_computed_and_undefined_classes():
    scores = np.array([[0.9, 0.5, 0.1], [0.5, 0.5, 0.2], [0.1, 0.2, 0.3]])
    targets = np.array([[1, 1, 1], [0, 0, 1], [0, 1, 1]])
    per_class = roc_auc_per_class(scores, targets)
    assert per_class[0] == pytest.approx(1.0)
    # class 1: positives 0.5, 0.2 vs negative 0.5 -> (0.5 tie + 0) / 2
    assert per_class[1] == pytest.approx(0.25)
    assert np.isnan(per_class[2])  # no negatives: undefined, left out
    assert roc_auc(scores, targets) == pytest.approx(0.625)
    with pytest.raises(ValueError, match="both positive and negative"):
        roc_auc(scores, np.ones_like(targets))


def test_d_prime_matches_scipy():
    for auc in (0.5, 0.75, 0.9, 0.99):
        assert d_prime(auc) == pytest.approx(math.sqrt(2) * norm.ppf(auc))
    assert d_prime(0.5) == pytest.approx(0.0)
    assert d_prime(1.0) == math.inf
    arr = d_prime(np.array([0.6, 0.8]))
    assert arr == pytest.approx(math.sqrt(2) * norm.ppf([0.6, 0.8]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        d_prime(1.2)


# --- retrieval --------------------------------------------------------------------------------


def test_retrieval_hand_computed_with_ties():
    sim = np.array([
        [0.9, 0.1, 0.2, 0.0],  # match 0 best: rank 1
        [0.5, 0.5, 0.1, 0.0],  # match 1 tied with item 0: pessimistic rank 2
        [0.3, 0.4, 0.2, 0.1],  # match 2 below items 0, 1: rank 3
        [0.7, 0.7, 0.7, 0.7],  # all tied: rank 4
    ])
    assert retrieval_ranks(sim).tolist() == [1, 2, 3, 4]
    m = retrieval_metrics(sim)
    assert m == {"R@1": 0.25, "R@5": 1.0, "R@10": 1.0, "MedR": 2.5,
                 "MRR": pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4) / 4)}


def test_retrieval_constant_similarity_is_worst_case():
    m = retrieval_metrics(np.zeros((20, 20)))
    assert m["R@10"] == 0.0 and m["MedR"] == 20.0


def test_retrieval_identity_and_random(rng):
    assert retrieval_metrics(np.eye(50)) == {"R@1": 1.0, "R@5": 1.0, "R@10": 1.0, "MedR": 1.0,
                                             "MRR": 1.0}
    ranks = np.concatenate([retrieval_ranks(rng.normal(size=(200, 200))) for _ in range(5)])
    assert (ranks <= 10).mean() == pytest.approx(chance_recall_at_k(200, 10), abs=0.02)


def test_retrieval_with_match_index():
    # 3 captions for 2 videos: captions 0, 1 describe video 0, caption 2 video 1
    sim = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.6]])
    assert retrieval_ranks(sim, match=[0, 0, 1]).tolist() == [1, 2, 1]
    with pytest.raises(ValueError, match="at least as many items"):
        retrieval_ranks(sim)
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(np.full((2, 2), np.nan))


def test_promotion_direction():
    assert is_better_or_equal("action_linear.top1", 0.5, 0.5)
    assert not is_better_or_equal("action_linear.top1", 0.4, 0.5)
    assert is_better_or_equal("text_video_retrieval.MedR", 3.0, 4.0)
    assert not is_better_or_equal("text_video_retrieval.MedR", 5.0, 4.0)
