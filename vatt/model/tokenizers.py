"""Raw-input tokenizers, positional encodings and DropToken (spec sections 2 and 3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class VideoPatchEmbed(nn.Module):
    """Conv3d with kernel = stride = (t, h, w) on RGB video given channels-last.

    Computed as patchify + one matmul with the convolution's own weight (identical result and
    FLOPs, much faster than a strided Conv3d on the CPU; weights stay Conv3d-shaped).
    """

    def __init__(self, patch_size: tuple[int, int, int], dim: int, in_channels: int = 3):
        super().__init__()
        self.patch_size = tuple(patch_size)
        self.proj = nn.Conv3d(in_channels, dim, kernel_size=self.patch_size,
                              stride=self.patch_size, bias=True)

    def grid(self, video_shape: torch.Size) -> tuple[int, int, int]:
        _, T, H, W, _ = video_shape
        t, h, w = self.patch_size
        return T // t, H // h, W // w

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        B, T, H, W, C = video.shape
        t, h, w = self.patch_size
        nt, nh, nw = T // t, H // h, W // w
        x = video.view(B, nt, t, nh, h, nw, w, C)
        x = x.permute(0, 1, 3, 5, 7, 2, 4, 6)  # (B, nt, nh, nw, C, t, h, w): Conv3d weight order
        x = x.reshape(B, nt * nh * nw, C * t * h * w)
        weight = self.proj.weight.view(self.proj.out_channels, -1)  # (d, C*t*h*w)
        return F.linear(x, weight, self.proj.bias)  # (B, N, d), tokens in (t, h, w) order


class AudioPatchEmbed(nn.Module):
    """Conv1d with kernel = stride = patch_size on the raw mono waveform, as one matmul."""

    def __init__(self, patch_size: int, dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv1d(1, dim, kernel_size=patch_size, stride=patch_size, bias=True)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        B, S = audio.shape
        x = audio.view(B, S // self.patch_size, self.patch_size)  # (B, N, patch)
        weight = self.proj.weight.view(self.proj.out_channels, -1)  # (d, patch)
        return F.linear(x, weight, self.proj.bias)  # (B, N, d)


def _resize_table(table: torch.Tensor, length: int) -> torch.Tensor:
    """Cubic interpolation of a (n, d) position table to (length, d)."""
    if table.shape[0] == length:
        return table
    grid = table.t()[None, :, :, None]  # (1, d, n, 1): bicubic needs a 2-D image
    resized = F.interpolate(grid, size=(length, 1), mode="bicubic", align_corners=False)
    return resized[0, :, :, 0].t()  # (length, d)


class PositionEmbedding(nn.Module):
    """Learnable positions: one table per axis (video: t, h, w; audio: time), summed over the
    grid, LayerNorm over the summed positions, added to the tokens, then dropout. A grid that
    differs from the tables' (e.g. 320 px or 64 frames) interpolates each table cubically."""

    def __init__(self, grid: tuple[int, ...], dim: int, dropout: float = 0.1, eps: float = 1e-6):
        super().__init__()
        self.grid = tuple(grid)
        self.tables = nn.ParameterList(nn.Parameter(torch.empty(n, dim)) for n in self.grid)
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.dropout = nn.Dropout(dropout)
        for table in self.tables:
            nn.init.trunc_normal_(table, std=dim ** -0.5)

    def forward(self, tokens: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
        if len(grid) != len(self.grid):
            raise ValueError(f"position grid {grid} does not match tables {self.grid}")
        summed = None
        for axis, (table, n) in enumerate(zip(self.tables, grid)):
            shape = [1] * len(grid) + [table.shape[1]]
            shape[axis] = n
            axis_pos = _resize_table(table, n).view(shape)  # broadcast along the other axes
            summed = axis_pos if summed is None else summed + axis_pos
        positions = self.norm(summed.reshape(-1, summed.shape[-1]))  # (N, d)
        return self.dropout(tokens + positions.unsqueeze(0))


def drop_tokens(tokens: torch.Tensor, drop_rate: float, per_sample: bool) -> torch.Tensor:
    """DropToken: keep int((1 - drop_rate) * N) of the N tokens, chosen at random.

    per_sample=False is the reference: one random subset shared by the batch.
    """
    B, N, D = tokens.shape
    keep = int((1.0 - drop_rate) * N)
    if keep >= N:
        return tokens
    if per_sample:
        index = torch.rand(B, N, device=tokens.device).argsort(dim=1)[:, :keep]  # (B, keep)
        return tokens.gather(1, index.unsqueeze(-1).expand(B, keep, D))
    index = torch.randperm(N, device=tokens.device)[:keep]
    return tokens[:, index]  # (B, keep, D)
