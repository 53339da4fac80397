"""Fine-tuning a backbone with a linear layer (spec section 7): the `action_finetune`,
`image_finetune` (video backbone) and `audio_finetune` (audio backbone, multi-label) tasks of
`vatt evaluate` (vatt.evaluate.tasks).

A copy of the pretrained backbone (the model itself is left untouched) gets a linear
classifier on its pooled output and is trained end to end on the train split's windows, read from
the loader epoch after epoch (an `EvalSplit` reads its shards in a seeded order each epoch;
batches held in memory are permuted) and mixed through a seeded shuffle buffer of
`SHUFFLE_BATCHES` batches, so memory does not grow with the split: SGD with
momentum 0.9, lr `eval.finetune_lr` (spec 0.005) with linear warmup over
`eval.finetune_warmup_steps` (spec 2.5k) then cosine to 0, batch `eval.finetune_batch_size`
(spec 64), label smoothing 0.1, no DropToken. Test: logits averaged over each video's views,
the spec's 4 clips x 3 crops (`data.eval_num_windows` windows x `eval.finetune_test_crops`
left / centre / right crops, as vatt.evaluate.data reads the test split for this task).
Multi-label (AudioSet): binary cross-entropy on the multi-hot `labels` (no label smoothing, which
the spec gives for the softmax), scored with mAP, AUC and d-prime. Images (ImageNet): each image
is one frame replicated to the video patch's temporal size (`ImageToPatch`), one token slab.

    result = finetune_classifier(model, train_batches, test_batches, num_classes, settings,
                                 modality="video")
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vatt.config import EvalConfig
from vatt.evaluate.probes import (ClassificationResult, _per_video_targets, group_mean,
                                  score_predictions)

_EVAL_DEFAULTS = EvalConfig()  # the defaults live once, in the structured config
SHUFFLE_BATCHES = 4  # the training shuffle buffer, in batches (what it holds of decoded windows)


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
    cache_mb: float = _EVAL_DEFAULTS.finetune_cache_mb

    @classmethod
    def from_config(cls, eval_cfg: Any) -> "FinetuneSettings":
        return cls(steps=eval_cfg.finetune_steps, lr=eval_cfg.finetune_lr,
                   warmup_steps=eval_cfg.finetune_warmup_steps,
                   batch_size=eval_cfg.finetune_batch_size, seed=eval_cfg.seed,
                   cache_mb=eval_cfg.finetune_cache_mb)


class BackboneClassifier(nn.Module):
    """A backbone (pooled output, before the heads) + a linear layer."""

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.classifier = nn.Linear(feature_dim, num_classes)
        nn.init.zeros_(self.classifier.weight)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.backbone(inputs))


class ImageToPatch:
    """An image batch as the video backbone's input: each image (one frame, T = 1) replicated
    to the temporal patch size, so it fills exactly one temporal patch (spec: 4 frames; tiny:
    2). The loader already gives 1-frame clips that many frames; anything else is refused."""

    def __init__(self, temporal_patch: int, task: str):
        self.temporal_patch, self.task = temporal_patch, task

    def __call__(self, video: torch.Tensor) -> torch.Tensor:  # (B, T, H, W, 3)
        frames = video.shape[1]
        if frames == 1:
            return video.expand(-1, self.temporal_patch, -1, -1, -1)  # (B, t, H, W, 3)
        if frames != self.temporal_patch:
            raise ValueError(f"{self.task}: image batches of {frames} frames; an image is one "
                             f"frame (or {self.temporal_patch}, model.video.patch_size[0], as "
                             "the loader replicates it): ingest the images as 1-frame clips")
        return video


def _labelled(batch: dict, task: str, modality: str = "video", multilabel: bool = False
              ) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """(inputs [n, ...], targets [n] or [n, C] multi-hot, video ids [n]) of the labelled
    windows of a batch."""
    target_key = "labels" if multilabel else "label"
    if modality not in batch or target_key not in batch:
        raise KeyError(f"{task}: batches need '{modality}' and '{target_key}' (a labelled "
                       f"{modality} split{', multi-hot' if multilabel else ''})")
    if multilabel:
        targets = np.asarray(batch["labels"]).astype(np.float32)
        keep = np.ones(len(targets), dtype=bool)  # every AudioSet clip has its label set
    else:
        targets = np.asarray(batch["label"]).astype(np.int64)
        keep = targets >= 0
    inputs = torch.as_tensor(np.asarray(batch[modality]))[torch.as_tensor(keep)]
    return inputs, targets[keep], np.asarray(batch["video_id"])[keep]


def _epoch(batches: Iterable[dict], seed: int, generator: torch.Generator) -> Iterable[dict]:
    """One pass over the train split in a seeded order."""
    if hasattr(batches, "shuffled"):  # vatt.evaluate.data.EvalSplit: its shards in seed's order
        return batches.shuffled(seed)
    held = list(batches)  # batches held in memory already (a list): permute them
    return [held[i] for i in torch.randperm(len(held), generator=generator).tolist()]


class _TrainingStream:
    """Endless training batches (video, labels) of `settings.batch_size` windows: the split read
    epoch after epoch, its labelled windows mixed through a seeded shuffle buffer of
    SHUFFLE_BATCHES batches. Labels are checked against `num_classes` as they arrive."""

    def __init__(self, batches: Iterable[dict], num_classes: int, settings: "FinetuneSettings",
                 task: str, modality: str = "video", multilabel: bool = False):
        self.source, self.num_classes = batches, num_classes
        self.settings, self.task = settings, task
        self.modality, self.multilabel = modality, multilabel
        self.generator = torch.Generator().manual_seed(settings.seed)
        self.windows_per_epoch = 0  # labelled windows in one pass (known after the first)

    def _windows(self) -> Iterator[tuple[torch.Tensor, Any]]:
        """The split's labelled windows, epoch after epoch. A split whose decoded windows fit in
        settings.cache_mb is read once and then permuted (reading a small split through the
        loader again every epoch costs more than the steps); a larger one streams every epoch."""
        epoch, budget = 0, self.settings.cache_mb * 2 ** 20
        cached: Optional[list[tuple[torch.Tensor, Any]]] = [] if budget > 0 else None
        held = 0
        while True:
            if cached and epoch > 0:
                order = torch.randperm(len(cached), generator=self.generator).tolist()
                yield from (cached[i] for i in order)
                epoch += 1
                continue
            count = 0
            for batch in _epoch(self.source, self.settings.seed + epoch, self.generator):
                inputs, labels, _ = _labelled(batch, self.task, self.modality, self.multilabel)
                if self.multilabel and labels.shape[1:] != (self.num_classes,):
                    raise ValueError(f"{self.task}: multi-hot labels of {labels.shape[1:]} "
                                     f"classes, expected {self.num_classes}")
                if not self.multilabel and len(labels) and int(labels.max()) >= self.num_classes:
                    raise ValueError(f"{self.task}: label {int(labels.max())} is outside the "
                                     f"dataset's {self.num_classes} classes")
                for window, label in zip(inputs, list(labels)):
                    count += 1
                    item = (window.clone(), label)  # a copy: a view would keep its whole batch
                    if cached is not None:
                        held += item[0].numel() * item[0].element_size()
                        if held <= budget:
                            cached.append(item)
                        else:  # too large to hold: stream it every epoch
                            cached = None
                    yield item
            if count == 0:
                raise ValueError(f"{self.task}: no labelled window in the split")
            self.windows_per_epoch = self.windows_per_epoch or count
            epoch += 1

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        size = self.settings.batch_size
        capacity = size * SHUFFLE_BATCHES
        buffer: list[tuple[torch.Tensor, Any]] = []
        for item in self._windows():
            buffer.append(item)
            if len(buffer) < capacity:
                continue
            picked = []
            for _ in range(size):  # draw without replacement: swap the pick to the end, pop it
                i = int(torch.randint(len(buffer), (1,), generator=self.generator))
                buffer[i], buffer[-1] = buffer[-1], buffer[i]
                picked.append(buffer.pop())
            yield (torch.stack([inputs for inputs, _ in picked]),  # (B, T, H, W, 3) or (B, S)
                   torch.as_tensor(np.stack([label for _, label in picked])))  # (B,) or (B, C)


def learning_rate(step: int, settings: FinetuneSettings) -> float:
    """Linear warmup to settings.lr, then cosine to 0 at settings.steps."""
    if step < settings.warmup_steps:
        return settings.lr * (step + 1) / settings.warmup_steps
    span = max(1, settings.steps - settings.warmup_steps)
    return 0.5 * settings.lr * (1 + math.cos(math.pi * min(1.0, (step - settings.warmup_steps) / span)))


def finetune_classifier(model: nn.Module, train_batches: Iterable[dict],
                        test_batches: Iterable[dict], num_classes: int,
                        settings: FinetuneSettings = FinetuneSettings(), *,
                        modality: str = "video", multilabel: bool = False,
                        prepare: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                        device: str | torch.device = "cpu",
                        task: str = "action_finetune") -> ClassificationResult:
    """Fine-tune a copy of `model`'s `modality` backbone on the train windows; score the test
    videos (window logits averaged per video). `multilabel`: multi-hot `labels`, binary
    cross-entropy, mAP/AUC/d-prime; else `label` ids, cross-entropy with label smoothing,
    top-1/top-5. `prepare` maps each input batch before the backbone (ImageToPatch). Both
    splits are read batch by batch (re-iterable sources: lists of batches or
    vatt.evaluate.data.EvalSplit). Deterministic for `settings.seed` when the sources give the
    same batches each time."""
    if settings.steps < 1 or settings.batch_size < 1:
        raise ValueError(f"{task}: eval.finetune_steps and eval.finetune_batch_size must be >= 1")
    if modality not in model.backbones:
        raise KeyError(f"{task}: the model has no {modality} backbone ({sorted(model.backbones)})")
    device = torch.device(device)
    prepare = prepare or (lambda inputs: inputs)
    backbone = copy.deepcopy(model.backbones[modality]).to(device)
    backbone.drop_rate = 0.0  # spec: no DropToken at fine-tuning
    stream = _TrainingStream(train_batches, num_classes, settings, task, modality, multilabel)
    net, optimizer, loss = None, None, None
    for step, (inputs, targets) in zip(range(settings.steps), stream):
        inputs = prepare(inputs).to(device)
        if net is None:  # the feature width, from the first batch
            with torch.no_grad():
                feature_dim = backbone.eval()(inputs[:1]).shape[-1]
            net = BackboneClassifier(backbone, feature_dim, num_classes).to(device)
            optimizer = torch.optim.SGD(net.parameters(), lr=settings.lr,
                                        momentum=settings.momentum)
            net.train()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, settings)
        logits = net(inputs)
        if multilabel:
            loss = F.binary_cross_entropy_with_logits(logits, targets.float().to(device))
        else:
            loss = F.cross_entropy(logits, targets.to(device),
                                   label_smoothing=settings.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    net.eval()
    window_logits, test_targets, test_ids = [], [], []
    with torch.no_grad():
        for batch in test_batches:
            inputs, targets, ids = _labelled(batch, task, modality, multilabel)
            if not len(targets):
                continue
            if not multilabel and int(targets.max()) >= num_classes:
                raise ValueError(f"{task}: a label is outside the dataset's {num_classes} classes")
            window_logits.append(net(prepare(inputs).to(device)).float().cpu().numpy())
            test_targets.append(targets)
            test_ids.append(ids)
    if not window_logits:
        raise ValueError(f"{task}: no labelled window in the test split")
    test_y, test_ids = np.concatenate(test_targets), np.concatenate(test_ids)
    _, video_logits = group_mean(np.concatenate(window_logits), test_ids)
    video_targets = _per_video_targets(test_y, test_ids, task)  # same sorted-id order
    result = score_predictions(video_logits, video_targets, num_classes, multilabel=multilabel)
    # None when the steps ended within the first pass over the train split
    result.metrics.update({"num_train_windows": stream.windows_per_epoch or None,
                           "num_test_windows": int(len(test_y)), "steps": settings.steps,
                           "final_train_loss": float(loss.item())})
    return result


__all__ = ["FinetuneSettings", "BackboneClassifier", "ImageToPatch", "finetune_classifier",
           "learning_rate"]
