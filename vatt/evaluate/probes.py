"""Linear evaluation on frozen features (spec section 7).

The classifier is the reference's low-rank linear map (rank 128) trained with Adam at 5e-4 on
per-window features; at test time its logits are averaged over the windows of each video before
scoring. Single-label tasks use softmax cross-entropy and report top-1/top-5; multi-label tasks
(AudioSet-style) use sigmoid binary cross-entropy and report mAP, AUC and d-prime. Features are
standardised with the training set's mean and standard deviation (part of the classifier), so one
learning rate works for backbones of any width and scale.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from vatt.config import ProbeConfig
from vatt.evaluate import metrics


class LowRankClassifier(nn.Module):
    """logits = standardise(x) @ down @ up + bias: a linear map of rank <= `rank`."""

    def __init__(self, in_dim: int, num_classes: int, rank: int = 128):
        super().__init__()
        self.register_buffer("feature_mean", torch.zeros(in_dim))
        self.register_buffer("feature_std", torch.ones(in_dim))
        self.down = nn.Linear(in_dim, rank, bias=False)
        self.up = nn.Linear(rank, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:  # (N, D) -> (N, C)
        x = (features - self.feature_mean) / self.feature_std
        return self.up(self.down(x))


def _float_tensor(x: Any, name: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    if t.ndim != 2:
        raise ValueError(f"{name} must be [N, D] features, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or infinite values; check the model outputs")
    return t


def fit_probe(features: Any, targets: Any, num_classes: int, *, multilabel: bool = False,
              settings: ProbeConfig = ProbeConfig(), seed: int = 0) -> LowRankClassifier:
    """Train a `LowRankClassifier` on frozen features (deterministic for a given seed).

    features: [N, D]; targets: [N] class ids, or [N, C] multi-hot when `multilabel`.
    """
    x = _float_tensor(features, "features")
    if multilabel:
        y = torch.as_tensor(np.asarray(targets), dtype=torch.float32)
        if y.shape != (x.shape[0], num_classes):
            raise ValueError(f"multi-label targets must be [{x.shape[0]}, {num_classes}], "
                             f"got {tuple(y.shape)}")
    else:
        y = torch.as_tensor(np.asarray(targets), dtype=torch.int64)
        if y.shape != (x.shape[0],) or (y < 0).any() or (y >= num_classes).any():
            raise ValueError(f"targets must be {x.shape[0]} class ids in [0, {num_classes}) "
                             "(label -1 marks an unlabelled clip: drop it before the probe)")
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        probe = LowRankClassifier(x.shape[1], num_classes, settings.rank)
    probe.feature_mean.copy_(x.mean(0))
    probe.feature_std.copy_(x.std(0, unbiased=False).clamp_min(1e-6))
    optimizer = torch.optim.Adam(probe.parameters(), lr=settings.lr,
                                 weight_decay=settings.weight_decay)
    probe.train()
    for _ in range(settings.epochs):
        for idx in torch.randperm(x.shape[0], generator=generator).split(settings.batch_size):
            logits = probe(x[idx])
            if multilabel:
                loss = F.binary_cross_entropy_with_logits(logits, y[idx])
            else:
                loss = F.cross_entropy(logits, y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    probe.eval()
    return probe


def group_mean(values: Any, group_ids: Any) -> tuple[np.ndarray, np.ndarray]:
    """Average rows of `values` [N, ...] that share a group id (e.g. the windows of a video).

    Returns (ids [G] sorted, means [G, ...]); rows of group ids[g] are averaged into means[g].
    """
    vals = np.asarray(values, dtype=np.float64)
    ids = np.asarray(group_ids)
    if ids.shape[0] != vals.shape[0]:
        raise ValueError(f"{vals.shape[0]} rows but {ids.shape[0]} group ids")
    unique, inverse = np.unique(ids, return_inverse=True)
    sums = np.zeros((len(unique),) + vals.shape[1:])
    np.add.at(sums, inverse, vals)
    counts = np.bincount(inverse, minlength=len(unique)).reshape((-1,) + (1,) * (vals.ndim - 1))
    return unique, sums / counts


def _per_video_targets(targets: np.ndarray, video_ids: np.ndarray, task: str) -> np.ndarray:
    """The one target of each video, in sorted-id order (as `group_mean`); the windows of a
    video must agree."""
    if len(targets) != len(video_ids):
        raise ValueError(f"{task}: {len(targets)} targets but {len(video_ids)} video ids")
    _, first, inverse = np.unique(video_ids, return_index=True, return_inverse=True)
    per_video = targets[first]
    disagree = (targets != per_video[inverse]).reshape(len(targets), -1).any(axis=1)
    if disagree.any():
        bad = video_ids[disagree][0]
        raise ValueError(f"{task}: the windows of video '{bad}' carry different labels; "
                         "a video's windows must share its label")
    return per_video


@dataclass
class ClassificationResult:
    """Metrics (JSON-ready) plus the arrays the report plots."""

    metrics: dict[str, Any]
    per_class: dict[str, list[float]]  # e.g. {"accuracy": [...]} or {"AP": [...]}
    confusion: Optional[list[list[int]]] = None  # [true, predicted], single-label only
    class_names: list[str] = field(default_factory=list)


def score_predictions(logits: np.ndarray, targets: np.ndarray, num_classes: int,
                      multilabel: bool) -> ClassificationResult:
    """Score per-video logits [V, C] against per-video targets ([V] ids or [V, C] multi-hot)."""
    if multilabel:
        ap = metrics.average_precision_per_class(logits, targets)
        auc = metrics.roc_auc_per_class(logits, targets)
        mean_auc = metrics.roc_auc(logits, targets)
        result = {"mAP": metrics.mean_average_precision(logits, targets), "AUC": mean_auc,
                  "d_prime": metrics.d_prime(mean_auc),
                  "classes_scored": int(np.isfinite(ap).sum()),
                  "chance_mAP": float(np.asarray(targets).mean(0)[np.isfinite(ap)].mean())}
        return ClassificationResult(result, {"AP": ap.tolist(), "AUC": auc.tolist()})
    labels = np.asarray(targets, dtype=np.int64)
    predicted = np.argmax(logits, axis=1)
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    support = confusion.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class_acc = np.where(support > 0, np.diag(confusion) / support, np.nan)
    result = {"top1": metrics.topk_accuracy(logits, labels, 1),
              "top5": metrics.topk_accuracy(logits, labels, min(5, num_classes)),
              "chance_top1": 1.0 / num_classes, "num_test_videos": int(len(labels))}
    return ClassificationResult(result, {"accuracy": per_class_acc.tolist()},
                                confusion.tolist())


def linear_probe(train_features: Any, train_targets: Any, train_video_ids: Any,
                 test_features: Any, test_targets: Any, test_video_ids: Any, num_classes: int,
                 *, multilabel: bool = False, settings: ProbeConfig = ProbeConfig(),
                 seed: int = 0, task: str = "linear probe") -> ClassificationResult:
    """Train on per-window features, test on logits averaged over each test video's windows.

    targets: [N] class ids, or [N, C] multi-hot when `multilabel`; *_video_ids: [N] ids grouping
    the windows of a video (train ids are only checked for consistency of labels).
    """
    train_targets = np.asarray(train_targets)
    _per_video_targets(train_targets, np.asarray(train_video_ids), task)
    probe = fit_probe(train_features, train_targets, num_classes, multilabel=multilabel,
                      settings=settings, seed=seed)
    with torch.no_grad():
        window_logits = probe(_float_tensor(test_features, "test features")).numpy()
    ids = np.asarray(test_video_ids)
    _, video_logits = group_mean(window_logits, ids)  # (V, C)
    video_targets = _per_video_targets(np.asarray(test_targets), ids, task)
    result = score_predictions(video_logits, video_targets, num_classes, multilabel)
    result.metrics["num_train_windows"] = int(len(train_targets))
    result.metrics["num_test_windows"] = int(len(ids))
    return result


def cross_validated_probe(features: Any, targets: Any, video_ids: Any, folds: Any,
                          num_classes: int, *, settings: ProbeConfig = ProbeConfig(),
                          seed: int = 0, task: str = "linear probe") -> ClassificationResult:
    """ESC-50 style: for each fold, train on the other folds and test on it; top-1 averaged over
    folds (also top-5). The per-class accuracy and confusion matrix pool every fold's tests."""
    x, y = np.asarray(features), np.asarray(targets)
    ids, fold_of = np.asarray(video_ids), np.asarray(folds)
    fold_values = np.unique(fold_of)
    if len(fold_values) < 2:
        raise ValueError(f"{task}: cross-validation needs at least 2 folds, got "
                         f"{fold_values.tolist()}")
    per_fold, confusion = [], np.zeros((num_classes, num_classes), dtype=np.int64)
    for fold in fold_values:
        test = fold_of == fold
        result = linear_probe(x[~test], y[~test], ids[~test], x[test], y[test], ids[test],
                              num_classes, settings=settings, seed=seed,
                              task=f"{task} fold {fold}")
        per_fold.append(result.metrics)
        confusion += np.asarray(result.confusion)
    support = confusion.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class_acc = np.where(support > 0, np.diag(confusion) / support, np.nan)
    summary = {"top1": float(np.mean([m["top1"] for m in per_fold])),
               "top5": float(np.mean([m["top5"] for m in per_fold])),
               "top1_per_fold": [m["top1"] for m in per_fold],
               "chance_top1": 1.0 / num_classes, "num_folds": int(len(fold_values))}
    return ClassificationResult(summary, {"accuracy": per_class_acc.tolist()}, confusion.tolist())


__all__ = ["LowRankClassifier", "fit_probe", "group_mean", "linear_probe",
           "cross_validated_probe", "score_predictions", "ClassificationResult"]
