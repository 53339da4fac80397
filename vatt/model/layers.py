"""Transformer building blocks: attention on scaled-dot-product attention, MLP, pre-LN block,
the T5-style relative position bias, and the encoder stack (spec section 4)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """T5's layer norm: scale only, no mean subtraction, no bias."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        variance = x.float().pow(2).mean(-1, keepdim=True)
        return (x.float() * torch.rsqrt(variance + self.eps)).type_as(x) * self.weight


class Attention(nn.Module):
    """Multi-head self-attention. `scale=None` is 1/sqrt(head_dim); T5 uses scale=1."""

    def __init__(self, dim: int, num_heads: int, bias: bool = True, attention_dropout: float = 0.0,
                 dropout: float = 0.0, scale: float | None = None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"d_model={dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = scale
        self.attention_dropout = attention_dropout
        self.qkv = nn.Linear(dim, 3 * dim, bias=bias)
        self.out = nn.Linear(dim, dim, bias=bias)
        self.out_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None = None) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.num_heads, self.head_dim)  # (B, N, 3, nh, hs)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, nh, N, hs)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_bias,
            dropout_p=self.attention_dropout if self.training else 0.0, scale=self.scale)
        y = y.transpose(1, 2).reshape(B, N, C)  # (B, N, nh*hs)
        return self.out_dropout(self.out(y))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden_dim: int, bias: bool = True, dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim, bias=bias)
        self.fc2 = nn.Linear(hidden_dim, dim, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(F.gelu(self.fc1(x)))  # exact GELU
        return self.dropout(self.fc2(x))


class Block(nn.Module):
    """Pre-norm Transformer block: x + Attn(norm(x)), then x + Mlp(norm(x)).

    `t5=True` is the text encoder's variant: no biases, no score scaling, RMS norm before
    attention and a regular LayerNorm before the feed-forward layer.
    """

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, *, dropout: float = 0.1,
                 attention_dropout: float = 0.1, eps: float = 1e-6, t5: bool = False):
        super().__init__()
        self.attn_norm = RMSNorm(dim, eps) if t5 else nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, bias=not t5, attention_dropout=attention_dropout,
                              dropout=dropout, scale=1.0 if t5 else None)
        self.mlp_norm = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, mlp_dim, bias=not t5, dropout=dropout)

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), attn_bias)
        return x + self.mlp(self.mlp_norm(x))


class Transformer(nn.Module):
    """A stack of blocks and the final norm."""

    def __init__(self, num_layers: int, dim: int, num_heads: int, mlp_dim: int, *,
                 dropout: float = 0.1, attention_dropout: float = 0.1, eps: float = 1e-6,
                 t5: bool = False):
        super().__init__()
        self.dim = dim
        self.blocks = nn.ModuleList(
            Block(dim, num_heads, mlp_dim, dropout=dropout, attention_dropout=attention_dropout,
                  eps=eps, t5=t5)
            for _ in range(num_layers))
        self.norm = RMSNorm(dim, eps) if t5 else nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, attn_bias)
        return self.norm(x)


class RelativePositionBias(nn.Module):
    """T5's bucketed relative position bias, one scalar per head and bucket; computed once per
    forward and shared by every layer (spec: 32 buckets, max distance 64, bidirectional)."""

    def __init__(self, num_heads: int, num_buckets: int = 32, max_distance: int = 64):
        super().__init__()
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.bias = nn.Embedding(num_buckets, num_heads)

    def bucket(self, relative_position: torch.Tensor) -> torch.Tensor:
        half = self.num_buckets // 2  # one half per direction
        buckets = (relative_position > 0).long() * half
        distance = relative_position.abs()
        max_exact = half // 2  # small distances get a bucket each, larger ones log-spaced
        log_bucket = max_exact + (
            torch.log(distance.float().clamp(min=1) / max_exact)
            / math.log(self.max_distance / max_exact) * (half - max_exact)).long()
        log_bucket = log_bucket.clamp(max=half - 1)
        return buckets + torch.where(distance < max_exact, distance, log_bucket)

    def forward(self, length: int, device: torch.device) -> torch.Tensor:
        position = torch.arange(length, device=device)
        relative = position[None, :] - position[:, None]  # (N, N): key minus query
        return self.bias(self.bucket(relative)).permute(2, 0, 1).unsqueeze(0)  # (1, nh, N, N)
