"""Downstream metrics (spec section 7), implemented once, here.

Every function takes numpy arrays or torch tensors and returns plain Python floats (or numpy
arrays for the per-class variants), so the results serialise to JSON as they are.

Conventions, chosen once and used everywhere:
- Accuracies and recalls are fractions in [0, 1] (the report shows them as percentages).
- Ranks are 1-based. Ties are broken *pessimistically*: an item that scores exactly as high as
  the correct one counts as ranked above it. A model that outputs a constant therefore gets the
  worst possible rank, never a lucky one.
- Per-class metrics that are undefined for a class (AP with no positive example; ROC AUC with no
  positive or no negative example) are NaN in the `*_per_class` arrays and are left out of the
  class average (not counted as 0). If no class is defined at all, a ValueError says so.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np
import torch

# Metrics where a smaller number is better; every other metric is "higher is better".
LOWER_IS_BETTER = frozenset({"MedR", "MeanR", "loss"})


def _as_numpy(x: Any, name: str, ndim: int, dtype=np.float64) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x, dtype=dtype)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {tuple(arr.shape)}")
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values; check the model outputs")
    return arr


# ---------------------------------------------------------------------------------------------
# Classification


def topk_accuracy(logits: Any, labels: Any, k: int = 1) -> float:
    """Share of examples whose true class is among the `k` highest scores.

    logits: [N, C] scores (any monotone transform of them gives the same result); labels: [N]
    class ids in [0, C). Ties are pessimistic: the true class's rank is 1 + the number of other
    classes scoring >= it, so with equal scores a correct prediction is not counted.
    """
    scores = _as_numpy(logits, "logits", 2)
    y = _as_numpy(labels, "labels", 1, dtype=np.int64)
    n, num_classes = scores.shape
    if y.shape[0] != n:
        raise ValueError(f"logits has {n} rows but labels has {y.shape[0]}")
    if n == 0:
        raise ValueError("topk_accuracy needs at least one example")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    bad = (y < 0) | (y >= num_classes)
    if bad.any():
        raise ValueError(
            f"labels must be class ids in [0, {num_classes}); got {y[bad][:5].tolist()} "
            "(label -1 marks a clip without a label: drop such clips before scoring)")
    true_scores = scores[np.arange(n), y][:, None]  # (N, 1)
    ranks = (scores >= true_scores).sum(axis=1)  # counts the true class itself: 1-based rank
    return float((ranks <= k).mean())


def _check_multilabel(scores: Any, targets: Any) -> tuple[np.ndarray, np.ndarray]:
    s = _as_numpy(scores, "scores", 2)
    t = _as_numpy(targets, "targets", 2)
    if s.shape != t.shape:
        raise ValueError(f"scores {tuple(s.shape)} and targets {tuple(t.shape)} differ in shape")
    if not np.isin(t, (0.0, 1.0)).all():
        raise ValueError("targets must be multi-hot (0/1) of shape [N, num_classes]")
    return s, t.astype(bool)


def average_precision_per_class(scores: Any, targets: Any) -> np.ndarray:
    """AP per class, [C]; NaN for a class with no positive example.

    AP = sum_n (R_n - R_{n-1}) P_n over the distinct score thresholds (no interpolation), the
    definition scikit-learn's `average_precision_score` uses. Tied scores form one threshold,
    so the order among tied examples does not matter.
    """
    s, t = _check_multilabel(scores, targets)
    ap = np.full(s.shape[1], np.nan)
    for c in range(s.shape[1]):
        positives = t[:, c].sum()
        if positives == 0:
            continue
        order = np.argsort(-s[:, c], kind="mergesort")
        sorted_scores, sorted_hits = s[order, c], t[order, c]
        # last index of each run of equal scores: the thresholds
        last = np.r_[np.nonzero(np.diff(sorted_scores))[0], len(sorted_scores) - 1]
        true_pos = np.cumsum(sorted_hits)[last]
        precision = true_pos / (last + 1)
        recall = true_pos / positives
        ap[c] = float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
    return ap


def mean_average_precision(scores: Any, targets: Any) -> float:
    """Mean over classes of the average precision; classes without positives are left out.

    scores: [N, C]; targets: [N, C] multi-hot. Raises if no class has a positive example.
    """
    ap = average_precision_per_class(scores, targets)
    if not np.isfinite(ap).any():
        raise ValueError("mean_average_precision: no class has a positive example in targets")
    return float(np.nanmean(ap))


def _midranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    starts = np.r_[0, np.nonzero(np.diff(sorted_values))[0] + 1]
    ends = np.r_[starts[1:], len(values)]
    ranks_sorted = np.repeat((starts + ends + 1) / 2.0, ends - starts)  # mean of start+1..end
    ranks = np.empty(len(values))
    ranks[order] = ranks_sorted
    return ranks


def roc_auc_per_class(scores: Any, targets: Any) -> np.ndarray:
    """ROC AUC per class, [C]; NaN for a class with no positive or no negative example.

    AUC = P(score of a random positive > score of a random negative) + 0.5 * P(equal), the
    Mann-Whitney statistic, equal to the trapezoidal area under the ROC curve (scikit-learn).
    """
    s, t = _check_multilabel(scores, targets)
    auc = np.full(s.shape[1], np.nan)
    for c in range(s.shape[1]):
        positives = int(t[:, c].sum())
        negatives = len(t) - positives
        if positives == 0 or negatives == 0:
            continue
        rank_sum = _midranks(s[:, c])[t[:, c]].sum()
        auc[c] = (rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives)
    return auc


def roc_auc(scores: Any, targets: Any) -> float:
    """Mean over classes of the ROC AUC; classes with no positive or no negative example (where
    AUC is undefined) are left out. Raises if no class is defined."""
    auc = roc_auc_per_class(scores, targets)
    if not np.isfinite(auc).any():
        raise ValueError("roc_auc: no class has both positive and negative examples in targets")
    return float(np.nanmean(auc))


def d_prime(auc: Any) -> Any:
    """d' = sqrt(2) * Phi^-1(AUC) (AudioSet convention): a float for a float, an array for an
    array. AUC 1 gives +inf and 0 gives -inf. The reported d' is d_prime(mean AUC)."""
    values = torch.as_tensor(np.asarray(auc, dtype=np.float64))
    if ((values < 0) | (values > 1)).any():
        raise ValueError(f"d_prime: AUC must lie in [0, 1], got {auc}")
    out = (math.sqrt(2.0) * torch.special.ndtri(values)).numpy()
    return float(out) if out.ndim == 0 else out


# ---------------------------------------------------------------------------------------------
# Retrieval


def retrieval_ranks(similarity: Any, match: Optional[Any] = None) -> np.ndarray:
    """1-based rank of each query's matching item, [Nq] (int64).

    similarity[i, j] scores query i against item j. The match of query i is item `match[i]`
    (default: item i, which needs Nq <= Ni). Pessimistic ties: rank = 1 + the number of other
    items scoring >= the match.
    """
    sim = _as_numpy(similarity, "similarity", 2)
    num_queries, num_items = sim.shape
    if match is None:
        if num_queries > num_items:
            raise ValueError(f"similarity is {sim.shape}: with no `match`, query i's match is "
                             "item i, so there must be at least as many items as queries")
        idx = np.arange(num_queries)
    else:
        idx = _as_numpy(match, "match", 1, dtype=np.int64)
        if idx.shape[0] != num_queries or ((idx < 0) | (idx >= num_items)).any():
            raise ValueError(f"match must hold {num_queries} item ids in [0, {num_items})")
    matched = sim[np.arange(num_queries), idx][:, None]  # (Nq, 1)
    return (sim >= matched).sum(axis=1).astype(np.int64)  # includes the match itself


def retrieval_metrics(similarity: Any, match: Optional[Any] = None) -> dict[str, float]:
    """{"R@1", "R@5", "R@10", "MedR", "MRR"} for a query x item similarity matrix.

    R@k is the share of queries whose match ranks <= k; MedR is the median 1-based rank (for an
    even number of queries, the mean of the two middle ranks); MRR the mean of 1/rank, which
    uses every rank (R@10 saturates on a small set while MRR still tells models apart). See
    `retrieval_ranks`.
    """
    ranks = retrieval_ranks(similarity, match)
    if ranks.size == 0:
        raise ValueError("retrieval_metrics needs at least one query")
    return {
        "R@1": float((ranks <= 1).mean()),
        "R@5": float((ranks <= 5).mean()),
        "R@10": float((ranks <= 10).mean()),
        "MedR": float(np.median(ranks)),
        "MRR": float((1.0 / ranks).mean()),
    }


def chance_recall_at_k(num_items: int, k: int) -> float:
    """R@k of a random ranking over `num_items` items (for reading the numbers)."""
    return min(k, num_items) / num_items


def is_better_or_equal(metric: str, new: float, current: float, margin: float = 0.0) -> bool:
    """The promotion comparison in the direction of `metric` (see LOWER_IS_BETTER, matched on
    the last dotted part, e.g. 'text_video_retrieval.MedR'): with `margin` 0, 'not worse'; with
    a margin, better by at least that much (a difference within run-to-run noise is none)."""
    if metric.split(".")[-1] in LOWER_IS_BETTER:
        return new <= current - margin
    return new >= current + margin


__all__ = [
    "topk_accuracy", "average_precision_per_class", "mean_average_precision",
    "roc_auc_per_class", "roc_auc", "d_prime", "retrieval_ranks", "retrieval_metrics",
    "chance_recall_at_k", "is_better_or_equal", "LOWER_IS_BETTER",
]
