"""Validation during pretraining: zero-shot retrieval on a held-out split (`train.validation`).

Every `train.validation.every` steps (at the next report; the first report always validates, so
that every reported row carries a validation score for the sweeps' schedulers) the first worker
embeds the validation videos, their audio and captions with the model in eval mode (no
DropToken) and measures text->video and video->audio retrieval as the evaluation does
(`vatt.evaluate.retrieval`). The rows carry `val_tv_MRR`, `val_va_MRR`, their mean `val_MRR`,
`val_tv_R@1`, `val_tv_R@10`, `val_va_R@1` and `val_step` (the step they were measured at).

The split is held out of pretraining and is never the test split that reports and the
promotion gate measure (the config refuses `test`), so a sweep that selects on it does not tune
on test data. The decoded batches are kept after the first pass (a validation split is small:
the default is 40 videos x 2 windows, about 50 MB), so later validations cost only the forward
passes.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from vatt.config import Config

VAL_KEYS = ("val_MRR", "val_tv_MRR", "val_tv_R@1", "val_tv_R@10", "val_va_MRR", "val_va_R@1")


def build_validation_dataset(cfg: Config, vocab_words: Optional[tuple[str, ...]] = None):
    """The Ray Dataset of the validation split (evaluation mode: evenly spread windows, centre
    crop), captions encoded with the run's vocabulary."""
    from vatt.data.loader import DataError, build_dataset

    val = cfg.train.validation
    try:
        return build_dataset(cfg, val.split, training=False, dataset=val.dataset,
                             num_windows=val.num_windows, vocab_words=vocab_words)
    except DataError as err:
        raise DataError(
            f"train.validation reads split {val.split!r} of {val.dataset} and cannot: {err}. "
            "Ingest a dataset with a held-out split (the generated data has one since generator "
            "version 3: `vatt ingest --source synthetic` again), point train.validation.dataset/"
            "split at one, or set train.validation.every=0") from None


class Validator:
    """Runs the validation on one worker; `shard` is its (unsplit) Ray Train dataset iterator."""

    def __init__(self, cfg: Config, shard: Any, device: torch.device):
        self.cfg = cfg
        self.shard = shard
        self.device = device
        self._batches: Optional[list[dict[str, Any]]] = None

    def batches(self) -> list[dict[str, Any]]:
        if self._batches is None:
            from vatt.data.loader import torch_batches

            self._batches = list(torch_batches(self.shard, self.cfg.train.validation.batch_size,
                                               training=False))
            if not self._batches:
                raise RuntimeError(f"the validation split {self.cfg.train.validation.split!r} of "
                                   f"{self.cfg.train.validation.dataset} is empty")
        return self._batches

    @torch.no_grad()
    def __call__(self, model: torch.nn.Module) -> dict[str, float]:
        from vatt.evaluate import retrieval
        from vatt.evaluate.features import extract_features

        was_training = model.training
        try:
            features = extract_features(model, self.batches(), device=self.device)
        finally:
            model.train(was_training)
        text_video = retrieval.text_to_video(
            features.require("video_vt", "validation"), features.require("video_id", "validation"),
            features.require("text_vt", "validation"),
            features.captions["video_id"]).metrics
        video_audio = retrieval.video_to_audio(
            features.require("video_va", "validation"), features.require("audio_va", "validation"),
            features.require("video_id", "validation")).metrics
        return {"val_MRR": (text_video["MRR"] + video_audio["MRR"]) / 2,
                "val_tv_MRR": text_video["MRR"], "val_tv_R@1": text_video["R@1"],
                "val_tv_R@10": text_video["R@10"], "val_va_MRR": video_audio["MRR"],
                "val_va_R@1": video_audio["R@1"]}


def validation_due(cfg: Config, step: int, last_step: Optional[int]) -> bool:
    """Whether the report at `step` validates (the same answer on every worker)."""
    every = cfg.train.validation.every
    if every <= 0:
        return False
    return last_step is None or step - last_step >= every or step == cfg.train.optim.total_steps


__all__ = ["Validator", "build_validation_dataset", "validation_due", "VAL_KEYS"]
