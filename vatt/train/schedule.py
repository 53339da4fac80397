"""Optimiser and learning-rate schedule of VATT pretraining (spec section 7).

Adam(0.9, 0.999, eps 1e-7), no weight decay, no clipping; the learning rate rises linearly from 0
to `lr_peak` over `warmup_steps`, then follows a quarter-period cosine from `lr_peak` down to
`lr_end` at `total_steps` (the reference code's `WarmupCosineDecay` with a quarter period).
"""

from __future__ import annotations

import math

import torch

from vatt.config import OptimConfig


def learning_rate(step: int, optim: OptimConfig) -> float:
    """The learning rate used for optimiser step `step` (0-based: the first update is step 0)."""
    if step < optim.warmup_steps:
        return optim.lr_peak * step / optim.warmup_steps
    decay_steps = max(optim.total_steps - optim.warmup_steps, 1)
    progress = min((step - optim.warmup_steps) / decay_steps, 1.0)
    # quarter period: cos goes 1 -> 0 over progress 0 -> 1, so lr goes peak -> end
    return optim.lr_end + (optim.lr_peak - optim.lr_end) * math.cos(0.5 * math.pi * progress)


def build_optimizer(params, optim: OptimConfig) -> torch.optim.Adam:
    # lr is set per step by `set_learning_rate`; the value here is overwritten before the first update
    return torch.optim.Adam(params, lr=learning_rate(0, optim), betas=(optim.beta1, optim.beta2),
                            eps=optim.eps, weight_decay=optim.weight_decay)


def set_learning_rate(optimizer: torch.optim.Optimizer, step: int, optim: OptimConfig) -> float:
    lr = learning_rate(step, optim)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr
