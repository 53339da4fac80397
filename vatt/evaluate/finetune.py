"""Fine-tuning the video backbone for action recognition (spec section 7), the `action_finetune`
task of `vatt evaluate`.

A copy of the pretrained video backbone (the model itself is left untouched) gets a linear
classifier on its pooled output and is trained end to end on the train split's windows: SGD with
momentum 0.9, lr `eval.finetune_lr` (spec 0.005) with linear warmup over
`eval.finetune_warmup_steps` (spec 2.5k) then cosine to 0, batch `eval.finetune_batch_size`
(spec 64), label smoothing 0.1, no DropToken. Test: logits averaged over each video's views,
the spec's 4 clips x 3 crops (`data.eval_num_windows` windows x `eval.finetune_test_crops`
left / centre / right crops, as vatt.evaluate.data reads the test split for this task).

    result = finetune_action(model, train_batches, test_batches, num_classes, settings)
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vatt.config import EvalConfig
from vatt.evaluate.probes import (ClassificationResult, _per_video_targets, group_mean,
                                  score_predictions)

_EVAL_DEFAULTS = EvalConfig()  # the defaults live once, in the structured config


@dataclass(frozen=True)
class FinetuneSettings:
    """Defaults are `EvalConfig`'s (the spec's); `from_config` reads a config's `eval`.
    Momentum and label smoothing are the spec's fixed values."""

    steps: int = _EVAL_DEFAULTS.finetune_steps
    lr: float = _EVAL_DEFAULTS.finetune_lr
    warmup_steps: int = _EVAL_DEFAULTS.finetune_warmup_steps
    batch_size: int = _EVAL_DEFAULTS.finetune_batch_size
    momentum: float = 0.9
    label_smoothing: float = 0.1
    seed: int = _EVAL_DEFAULTS.seed

    @classmethod
    def from_config(cls, eval_cfg: Any) -> "FinetuneSettings":
        return cls(steps=eval_cfg.finetune_steps, lr=eval_cfg.finetune_lr,
                   warmup_steps=eval_cfg.finetune_warmup_steps,
                   batch_size=eval_cfg.finetune_batch_size, seed=eval_cfg.seed)


class VideoClassifier(nn.Module):
    """The video backbone (pooled output, before the heads) + a linear layer."""

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.classifier = nn.Linear(feature_dim, num_classes)
        nn.init.zeros_(self.classifier.weight)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.backbone(video))


def _windows(batches: Iterable[dict], task: str) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """(video [N, T, H, W, 3], labels [N], video ids [N]) of the labelled windows."""
    videos, labels, ids = [], [], []
    for batch in batches:
        if "video" not in batch or "label" not in batch:
            raise KeyError(f"{task}: batches need 'video' and 'label' (a labelled video split)")
        label = np.asarray(batch["label"]).astype(np.int64)
        keep = label >= 0
        videos.append(torch.as_tensor(np.asarray(batch["video"]))[torch.as_tensor(keep)])
        labels.append(label[keep])
        ids.append(np.asarray(batch["video_id"])[keep])
    if not videos or sum(len(x) for x in labels) == 0:
        raise ValueError(f"{task}: no labelled window in the split")
    return torch.cat(videos), np.concatenate(labels), np.concatenate(ids)


def learning_rate(step: int, settings: FinetuneSettings) -> float:
    """Linear warmup to settings.lr, then cosine to 0 at settings.steps."""
    if step < settings.warmup_steps:
        return settings.lr * (step + 1) / settings.warmup_steps
    span = max(1, settings.steps - settings.warmup_steps)
    return 0.5 * settings.lr * (1 + math.cos(math.pi * min(1.0, (step - settings.warmup_steps) / span)))


def finetune_action(model: nn.Module, train_batches: Iterable[dict], test_batches: Iterable[dict],
                    num_classes: int, settings: FinetuneSettings = FinetuneSettings(),
                    device: str | torch.device = "cpu",
                    task: str = "action_finetune") -> ClassificationResult:
    """Fine-tune a copy of `model`'s video backbone on the train windows; score the test videos
    (window logits averaged per video). Deterministic for `settings.seed`."""
    if settings.steps < 1 or settings.batch_size < 1:
        raise ValueError(f"{task}: eval.finetune_steps and eval.finetune_batch_size must be >= 1")
    train_x, train_y, _ = _windows(train_batches, task)
    test_x, test_y, test_ids = _windows(test_batches, task)
    if int(max(train_y.max(), test_y.max())) >= num_classes:
        raise ValueError(f"{task}: a label is outside the dataset's {num_classes} classes")
    generator = torch.Generator().manual_seed(settings.seed)
    backbone = copy.deepcopy(model.backbones["video"]).to(device)
    backbone.drop_rate = 0.0  # spec: no DropToken at fine-tuning
    with torch.no_grad():
        feature_dim = backbone.eval()(train_x[:1].to(device)).shape[-1]
    net = VideoClassifier(backbone, feature_dim, num_classes).to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=settings.lr, momentum=settings.momentum)
    targets = torch.as_tensor(train_y)
    order = torch.randperm(len(train_x), generator=generator)
    cursor = 0
    net.train()
    for step in range(settings.steps):
        if cursor + settings.batch_size > len(order):
            order, cursor = torch.randperm(len(train_x), generator=generator), 0
        pick = order[cursor:cursor + settings.batch_size]
        cursor += settings.batch_size
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, settings)
        logits = net(train_x[pick].to(device))
        loss = F.cross_entropy(logits, targets[pick].to(device),
                               label_smoothing=settings.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    net.eval()
    with torch.no_grad():
        window_logits = torch.cat([net(test_x[i:i + 64].to(device)).float().cpu()
                                   for i in range(0, len(test_x), 64)]).numpy()
    _, video_logits = group_mean(window_logits, test_ids)
    video_targets = _per_video_targets(test_y, test_ids, task)  # same sorted-id order
    result = score_predictions(video_logits, video_targets, num_classes, multilabel=False)
    result.metrics.update({"num_train_windows": int(len(train_x)),
                           "num_test_windows": int(len(test_x)), "steps": settings.steps,
                           "final_train_loss": float(loss.item())})
    return result


__all__ = ["FinetuneSettings", "VideoClassifier", "finetune_action", "learning_rate"]
