"""Common-space projection heads, MMV "fine and coarse" (spec section 5).

video -> S_va (fine, shared with audio) -> S_vt (coarse, shared with text). The BatchNorms become
SyncBatchNorm in distributed training (the trainer converts them).
"""

from __future__ import annotations

import torch
from torch import nn


class CommonSpaceHeads(nn.Module):
    def __init__(self, video_dim: int, audio_dim: int, text_dim: int, *, va_dim: int = 512,
                 vt_dim: int = 256, bn_after_audio_text: bool = False, bn_momentum: float = 0.1,
                 bn_eps: float = 1e-5):
        super().__init__()

        def bn(dim: int) -> nn.BatchNorm1d:
            return nn.BatchNorm1d(dim, eps=bn_eps, momentum=bn_momentum)

        self.video_to_va_space = nn.Sequential(
            nn.Linear(video_dim, va_dim, bias=False), bn(va_dim), nn.ReLU(),
            nn.Linear(va_dim, va_dim, bias=False), bn(va_dim))
        self.va_to_vt_space = nn.Sequential(
            nn.ReLU(), nn.Linear(va_dim, vt_dim, bias=False), bn(vt_dim))
        self.audio_to_va_space = nn.Sequential(
            nn.Linear(audio_dim, va_dim), *([bn(va_dim)] if bn_after_audio_text else []))
        self.text_to_vt_space = nn.Sequential(
            nn.Linear(text_dim, vt_dim), *([bn(vt_dim)] if bn_after_audio_text else []))

    def video(self, pooled: torch.Tensor) -> dict[str, torch.Tensor]:
        va = self.video_to_va_space(pooled)  # (B, va_dim)
        return {"va": va, "vt": self.va_to_vt_space(va)}  # vt: (B, vt_dim)

    def audio(self, pooled: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"va": self.audio_to_va_space(pooled)}  # (B, va_dim)

    def text(self, pooled: torch.Tensor) -> dict[str, torch.Tensor]:
        B, L, D = pooled.shape
        vt = self.text_to_vt_space(pooled.reshape(B * L, D))  # BN sees every candidate
        return {"vt": vt.view(B, L, -1)}  # (B, L, vt_dim)
