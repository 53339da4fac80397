"""Forward FLOPs measured on the real modules, and their conversion to the paper's convention.

Measured with torch.utils.flop_counter.FlopCounterMode on the meta device: there scaled-dot-
product attention decomposes into `bmm` ops (the CPU's fused kernel would not be counted at all),
and a forward pass has no other `bmm`. FlopCounterMode counts both attention products at 2 FLOPs
per multiply-add (4*N^2*d per layer); the paper counts 2*N^2*d, so the paper's number is the
measured total minus half the attention share (spec section 8).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from vatt.config import Config


@dataclass(frozen=True)
class FlopCount:
    measured: int  # FlopCounterMode's total
    attention: int  # its bmm share (the two attention products)

    @property
    def paper(self) -> float:
        """FLOPs in the paper's convention."""
        return self.measured - self.attention / 2

    @property
    def paper_gflops(self) -> float:
        return self.paper / 1e9


def count_flops(module: nn.Module, *inputs, per: int = 1) -> FlopCount:
    """Count one forward of `module(*inputs)`; module and inputs must be on the meta device.
    `per` divides the result (e.g. the batch size, for FLOPs per clip)."""
    counter = FlopCounterMode(display=False)
    with counter:  # no torch.no_grad: its views of parameters trip the module tracker
        module(*inputs)
    counts = counter.get_flop_counts()["Global"]
    total = sum(counts.values())
    attention = sum(v for op, v in counts.items() if "bmm" in str(op))
    return FlopCount(total // per, attention // per)


def count_training_flops(build: Callable[[], nn.Module], inputs: Callable[[], Any]) -> int:
    """FLOPs of one forward + backward of `build()(inputs())`, both made on the meta device, as
    FlopCounterMode counts them (attention included, at 4*N^2*d per layer: what the hardware
    computes, for MFU). The loss is a sum of squares of the outputs: the real losses compare
    B x B embeddings (negligible FLOPs) and do not run on meta. The optimiser is not counted."""
    with torch.device("meta"):
        module = build().train()
        args = inputs()
    counter = FlopCounterMode(display=False)
    with counter:
        out = module(args)
        leaves = [v for m in out.values() for v in m.values()] if isinstance(out, dict) else [out]
        sum(leaf.float().square().sum() for leaf in leaves).backward()
    return counter.get_total_flops()


def training_flops_per_clip(cfg: Config) -> int:
    """Training FLOPs of one clip (forward + backward, attention included) of `cfg`'s model at
    its input geometry, DropToken as in pretraining, data.num_text_candidates captions: what
    the benchmarks divide by for MFU and the cluster plan (vatt.cluster.plan) multiplies by
    the global batch and the steps. FLOPs are linear in the batch, so 2 clips are counted
    (BatchNorm refuses 1 in training) and halved."""
    from vatt.model.vatt import build_model  # vatt.model.vatt does not import this module

    clips = 2
    flops = count_training_flops(
        lambda: build_model(cfg),
        lambda: meta_batch(cfg, clips, num_captions=cfg.data.num_text_candidates))
    return flops // clips


def meta_batch(cfg: Config, batch_size: int = 2, num_frames: int | None = None,
               frame_size: int | None = None, num_captions: int = 1) -> dict[str, torch.Tensor]:
    """A batch of the config's input geometry on the meta device (shapes only)."""
    T = num_frames or cfg.data.num_frames
    S = frame_size or cfg.data.frame_size
    meta = torch.device("meta")
    return {
        "video": torch.empty(batch_size, T, S, S, 3, device=meta),
        "audio": torch.empty(batch_size, cfg.data.audio_samples, device=meta),
        "text": torch.empty(batch_size, num_captions, cfg.data.max_text_tokens,
                            dtype=torch.int64, device=meta),
        "text_mask": torch.empty(batch_size, num_captions, device=meta),
    }
