"""Fine-tuning a backbone with a linear layer (spec section 7): the `action_finetune`,
`image_finetune` (video backbone) and `audio_finetune` (audio backbone, multi-label) tasks of
`vatt evaluate` (vatt.evaluate.tasks).

A copy of the pretrained backbone (the model itself is left untouched) gets a linear
classifier on its pooled output and is trained end to end on the train split's training windows:
vatt.evaluate.data reads it through the loader in training mode, as pretraining does (a random
temporal window, random resized crop or scale jitter, flip, colour jitter, audio noise), one
pass per epoch with its shards in that epoch's seeded order and its augmentation drawn from the
same seed, so every epoch sees new crops of each clip and a second run the same ones (batches
held in memory are permuted instead); the epochs the steps need are read in one Ray Data
execution (`EvalSplit.passes`), not one each. The windows are mixed through a seeded shuffle buffer
of `SHUFFLE_BATCHES` batches but at most `eval.finetune.shuffle_mb` (default 1 GiB: 222 windows
at the spec's input, where 4 batches of 64 would take 1.15 GiB), which holds video as the
loader's uint8 (a quarter of float32) and turns each batch into float on the device, so memory
grows with neither the split nor the steps: SGD with
momentum 0.9, lr `eval.finetune.lr` (spec 0.005) with linear warmup over
`eval.finetune.warmup_steps` (spec 2.5k) then cosine to 0, batch `eval.finetune.batch_size`
(spec 64), label smoothing 0.1, no DropToken. Test: the evaluation windows, no augmentation,
logits averaged over each video's views, the spec's 4 clips x 3 crops
(`data.eval_num_windows` windows x `eval.finetune.test_crops` left / centre / right crops, as
vatt.evaluate.data reads the test split for this task).
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

from vatt.config import FinetuneConfig
from vatt.data.loader import video_to_float
from vatt.evaluate.probes import (ClassificationResult, _per_video_targets, group_mean,
                                  score_predictions)

# the spec's fixed values
MOMENTUM = 0.9
LABEL_SMOOTHING = 0.1
# the shuffle buffer holds this many batches of windows unless eval.finetune.shuffle_mb holds
# fewer: enough to mix a few shards; more would only delay the first step of a small split
SHUFFLE_BATCHES = 4


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
    windows of a batch; a training split's uint8 video becomes float here (zeros where the
    batch's has_video is 0), as the buffer's batches do."""
    inputs, targets, ids, present = _labelled_raw(batch, task, modality, multilabel)
    if inputs.dtype == torch.uint8:
        inputs = video_to_float(inputs, present)
    return inputs, targets, ids


def _labelled_raw(batch: dict, task: str, modality: str, multilabel: bool
                  ) -> tuple[torch.Tensor, np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """`_labelled` as the batch holds it (uint8 video stays uint8), and has_video [n] or None."""
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
    present = np.asarray(batch["has_video"])[keep] if "has_video" in batch else None
    return inputs, targets[keep], np.asarray(batch["video_id"])[keep], present


def _epoch(batches: Iterable[dict], generator: torch.Generator) -> list[dict]:
    """One pass over batches held in memory (a list), permuted."""
    held = list(batches)
    return [held[i] for i in torch.randperm(len(held), generator=generator).tolist()]


def _by_pass(batch: dict, first_seed: int) -> Iterator[tuple[int, dict]]:
    """(epoch, the batch's rows of that epoch) for a batch of `EvalSplit.passes`, whose rows
    carry their pass's seed (first_seed + epoch); a batch straddles at most a few passes."""
    seeds = np.asarray(batch["pass_seed"])
    starts = [0, *(np.flatnonzero(seeds[1:] != seeds[:-1]) + 1).tolist(), len(seeds)]
    for start, end in zip(starts[:-1], starts[1:]):
        yield int(seeds[start]) - first_seed, {key: value[start:end]
                                               for key, value in batch.items()}


@dataclass(frozen=True)
class _Window:
    """One training window in the shuffle buffer: its input as the loader gave it (uint8 video,
    float32 audio), its target, and whether the clip has video (uint8 rows of 0 are zeros)."""

    inputs: torch.Tensor
    target: Any
    has_video: float = 1.0

    @property
    def nbytes(self) -> int:
        return self.inputs.numel() * self.inputs.element_size()


class _TrainingStream:
    """Endless training batches (inputs, targets, has_video) of `settings.batch_size` windows:
    the split read epoch after epoch (a fresh, seeded pass each), its labelled windows mixed
    through a seeded shuffle buffer of SHUFFLE_BATCHES batches that holds at most
    `settings.shuffle_mb` MiB (the batch being trained, drawn from it, is on top). Labels are checked against `num_classes` as they arrive.
    `peak_bytes` is the most the buffer held."""

    def __init__(self, batches: Iterable[dict], num_classes: int, settings: FinetuneConfig,
                 task: str, modality: str = "video", multilabel: bool = False, seed: int = 0):
        self.source, self.num_classes = batches, num_classes
        self.settings, self.task, self.seed = settings, task, seed
        self.modality, self.multilabel = modality, multilabel
        self.generator = torch.Generator().manual_seed(seed)
        self.windows_per_epoch = 0  # labelled windows in one pass (known after the first)
        self._yielded = 0  # labelled windows read so far
        self.peak_bytes = 0

    def _epoch_batches(self) -> Iterator[tuple[int, dict]]:
        """(epoch, batch) over the split's epochs, in order: epoch e is the split read with
        seed self.seed + e (`EvalSplit.shuffled`). An EvalSplit reads as many epochs as
        the steps can still use in one Ray Data execution (`EvalSplit.passes`, the same
        windows in the same order); batches held in memory are permuted per epoch."""
        seed, epoch = self.seed, 0
        if not hasattr(self.source, "passes"):
            while True:
                held = _epoch(self.source, self.generator)
                if not held:
                    raise ValueError(f"{self.task}: no labelled window in the split")
                for batch in held:
                    yield epoch, batch
                epoch += 1
        # windows the steps draw: a full buffer, then a batch per step (its capacity is at
        # most SHUFFLE_BATCHES batches); per epoch: every clip until a pass has counted them
        needed = (SHUFFLE_BATCHES + self.settings.steps - 1) * self.settings.batch_size
        while True:
            per_epoch = self.windows_per_epoch or max(1, self.source.num_clips)
            count = max(1, math.ceil((needed - self._yielded) / per_epoch))
            for batch in self.source.passes(range(seed + epoch, seed + epoch + count)):
                yield from _by_pass(batch, seed)
            epoch += count

    def _windows(self) -> Iterator[_Window]:
        """The split's labelled windows, epoch after epoch."""
        epoch, count = 0, 0  # the epoch being read, its labelled windows so far

        def close(upto: int) -> None:  # the epochs before `upto` are read: each had windows
            nonlocal epoch, count
            while epoch < upto:
                if count == 0:
                    raise ValueError(f"{self.task}: no labelled window in the split")
                self.windows_per_epoch = self.windows_per_epoch or count
                epoch, count = epoch + 1, 0

        for batch_epoch, batch in self._epoch_batches():
            close(batch_epoch)
            inputs, labels, _, present = _labelled_raw(batch, self.task, self.modality,
                                                       self.multilabel)
            if self.multilabel and labels.shape[1:] != (self.num_classes,):
                raise ValueError(f"{self.task}: multi-hot labels of {labels.shape[1:]} "
                                 f"classes, expected {self.num_classes}")
            if not self.multilabel and len(labels) and int(labels.max()) >= self.num_classes:
                raise ValueError(f"{self.task}: label {int(labels.max())} is outside the "
                                 f"dataset's {self.num_classes} classes")
            for i, (window, label) in enumerate(zip(inputs, list(labels))):
                count += 1
                self._yielded += 1
                # a copy: a view would keep its whole batch alive in the buffer
                yield _Window(window.clone(), label,
                              1.0 if present is None else float(present[i]))

    def _capacity(self, window: _Window) -> int:
        """Windows the buffer holds: SHUFFLE_BATCHES batches, fewer where the byte bound holds
        fewer; at least a batch, or a clear error."""
        bound = self.settings.shuffle_mb * 2 ** 20
        capacity = min(int(bound // max(1, window.nbytes)),
                       SHUFFLE_BATCHES * self.settings.batch_size)
        if capacity < self.settings.batch_size:
            need = self.settings.batch_size * window.nbytes / 2 ** 20
            raise ValueError(f"{self.task}: eval.finetune.shuffle_mb={self.settings.shuffle_mb:g}"
                             f" holds {capacity} windows of {tuple(window.inputs.shape)} "
                             f"{window.inputs.dtype}, fewer than a batch "
                             f"(eval.finetune.batch_size={self.settings.batch_size}); raise it to "
                             f"at least {math.ceil(need)} or lower the batch size")
        return capacity

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, np.ndarray]]:
        buffer: list[_Window] = []
        capacity, held = None, 0
        for window in self._windows():
            capacity = capacity or self._capacity(window)
            buffer.append(window)
            held += window.nbytes
            self.peak_bytes = max(self.peak_bytes, held)
            if len(buffer) < capacity:
                continue
            # yielded as made: this frame keeps no reference to the batch while it refills
            yield self._draw(buffer)
            held = sum(w.nbytes for w in buffer)

    def _draw(self, buffer: list[_Window]) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """(inputs, targets, has_video) of a batch drawn at random from `buffer`, removed
        from it."""
        picked = []
        for _ in range(self.settings.batch_size):  # without replacement: swap to the end, pop
            i = int(torch.randint(len(buffer), (1,), generator=self.generator))
            buffer[i], buffer[-1] = buffer[-1], buffer[i]
            picked.append(buffer.pop())
        return (torch.stack([w.inputs for w in picked]),  # (B, T, H, W, 3) or (B, S)
                torch.as_tensor(np.stack([w.target for w in picked])),  # (B,) or (B, C)
                np.array([w.has_video for w in picked], dtype=np.float32))  # (B,)


def learning_rate(step: int, settings: FinetuneConfig) -> float:
    """Linear warmup to settings.lr, then cosine to 0 at settings.steps."""
    if step < settings.warmup_steps:
        return settings.lr * (step + 1) / settings.warmup_steps
    span = max(1, settings.steps - settings.warmup_steps)
    return 0.5 * settings.lr * (1 + math.cos(math.pi * min(1.0, (step - settings.warmup_steps) / span)))


def finetune_classifier(model: nn.Module, train_batches: Iterable[dict],
                        test_batches: Iterable[dict], num_classes: int,
                        settings: FinetuneConfig = FinetuneConfig(), *, seed: int = 0,
                        modality: str = "video", multilabel: bool = False,
                        prepare: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                        device: str | torch.device = "cpu",
                        task: str = "action_finetune") -> ClassificationResult:
    """Fine-tune a copy of `model`'s `modality` backbone on the train windows; score the test
    videos (window logits averaged per video). `multilabel`: multi-hot `labels`, binary
    cross-entropy, mAP/AUC/d-prime; else `label` ids, cross-entropy with label smoothing,
    top-1/top-5. `prepare` maps each input batch before the backbone (ImageToPatch). Both
    splits are read batch by batch (re-iterable sources: lists of batches or
    vatt.evaluate.data.EvalSplit). Deterministic for `seed` when the sources give the same
    batches each time. Momentum and label smoothing are the spec's (MOMENTUM, LABEL_SMOOTHING)."""
    settings.check()
    if modality not in model.backbones:
        raise KeyError(f"{task}: the model has no {modality} backbone ({sorted(model.backbones)})")
    device = torch.device(device)
    prepare = prepare or (lambda inputs: inputs)
    backbone = copy.deepcopy(model.backbones[modality]).to(device)
    backbone.drop_rate = 0.0  # spec: no DropToken at fine-tuning
    stream = _TrainingStream(train_batches, num_classes, settings, task, modality, multilabel,
                             seed)
    net, optimizer, loss = None, None, None
    for step, (inputs, targets, present) in zip(range(settings.steps), stream):
        if inputs.dtype == torch.uint8:  # the loader's pixels: to float on the device
            inputs = video_to_float(inputs.to(device), present)
        inputs = prepare(inputs).to(device)
        if net is None:  # the feature width, from the first batch
            with torch.no_grad():
                feature_dim = backbone.eval()(inputs[:1]).shape[-1]
            net = BackboneClassifier(backbone, feature_dim, num_classes).to(device)
            optimizer = torch.optim.SGD(net.parameters(), lr=settings.lr,
                                        momentum=MOMENTUM)
            net.train()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, settings)
        logits = net(inputs)
        if multilabel:
            loss = F.binary_cross_entropy_with_logits(logits, targets.float().to(device))
        else:
            loss = F.cross_entropy(logits, targets.to(device),
                                   label_smoothing=LABEL_SMOOTHING)
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
                           "shuffle_buffer_peak_mb": round(stream.peak_bytes / 2 ** 20, 1),
                           "final_train_loss": float(loss.item())})
    return result


__all__ = ["MOMENTUM", "LABEL_SMOOTHING", "BackboneClassifier", "ImageToPatch",
           "finetune_classifier", "learning_rate"]
