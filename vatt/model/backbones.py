"""Per-modality backbones: raw input -> pooled feature (spec sections 2-4).

Each backbone holds everything the paper's Table 7 counts for its modality: tokenizer,
positions, AGG token and its Transformer. In the modality-agnostic model (VATT-MA) the three
backbones hold the *same* Transformer object plus their own pre-/post-projections, so calling
`backbones['audio']` runs audio alone through the shared weights.
"""

from __future__ import annotations

import torch
from torch import nn

from vatt.model.layers import RelativePositionBias, Transformer
from vatt.model.tokenizers import AudioPatchEmbed, PositionEmbedding, VideoPatchEmbed, drop_tokens


def _projection(in_dim: int, out_dim: int) -> nn.Module:
    """MA pre-/post-projection: Linear (with bias) + GELU."""
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU())


class _PatchBackbone(nn.Module):
    """Shared recipe of video and audio: tokens -> [pre-proj] -> positions -> DropToken ->
    AGG token -> Transformer -> output at index 0 -> [post-proj]."""

    def __init__(self, *, dim: int, grid: tuple[int, ...], transformer: Transformer,
                 drop_rate: float, per_sample_drop: bool, dropout: float, eps: float,
                 agnostic_output_dim: int | None):
        super().__init__()
        self.drop_rate = drop_rate
        self.per_sample_drop = per_sample_drop
        agnostic = agnostic_output_dim is not None
        self.pre_projection = _projection(dim, dim) if agnostic else nn.Identity()
        self.positions = PositionEmbedding(grid, dim, dropout=dropout, eps=eps)
        self.agg_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.transformer = transformer
        self.post_projection = (_projection(dim, agnostic_output_dim) if agnostic
                                else nn.Identity())
        self.output_dim = agnostic_output_dim or dim

    def encode(self, tokens: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
        tokens = self.positions(self.pre_projection(tokens), grid)  # (B, N, d)
        if self.training and self.drop_rate > 0:
            tokens = drop_tokens(tokens, self.drop_rate, self.per_sample_drop)  # (B, keep, d)
        agg = self.agg_token.expand(tokens.shape[0], -1, -1)
        x = self.transformer(torch.cat([agg, tokens], dim=1))  # (B, 1 + keep, d)
        return self.post_projection(x[:, 0])  # (B, d_out)


class VideoBackbone(_PatchBackbone):
    """video (B, T, H, W, 3) in [-1, 1] -> pooled (B, d_out)."""

    def __init__(self, *, patch_size: tuple[int, int, int], grid: tuple[int, int, int], dim: int,
                 transformer: Transformer, **kwargs):
        super().__init__(dim=dim, grid=grid, transformer=transformer, **kwargs)
        self.patch_embed = VideoPatchEmbed(patch_size, dim)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.encode(self.patch_embed(video), self.patch_embed.grid(video.shape))


class AudioBackbone(_PatchBackbone):
    """audio (B, S) waveform in [-1, 1] -> pooled (B, d_out); `input_scale` multiplies the
    waveform before the tokenizer (model.audio.input_scale)."""

    def __init__(self, *, patch_size: int, num_tokens: int, dim: int, transformer: Transformer,
                 input_scale: float = 1.0, **kwargs):
        super().__init__(dim=dim, grid=(num_tokens,), transformer=transformer, **kwargs)
        self.patch_embed = AudioPatchEmbed(patch_size, dim)
        self.input_scale = float(input_scale)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(audio * self.input_scale if self.input_scale != 1.0 else audio)
        return self.encode(tokens, (tokens.shape[1],))


class TextBackbone(nn.Module):
    """text token ids (..., max_tokens), pad id 0 -> pooled (..., d_out).

    Modality-specific (T5-style): 300-d word embeddings, a learnable 300-d AGG token prepended,
    Linear(300 -> d, no bias) + GELU, relative position bias shared by all layers.
    Modality-agnostic: pre-projection Linear(300 -> d) + GELU, a learnable absolute position
    table, AGG token, the shared Transformer, post-projection.
    """

    def __init__(self, *, vocab_size: int, embedding_dim: int, max_tokens: int, dim: int,
                 transformer: Transformer, num_heads: int, num_buckets: int, max_distance: int,
                 dropout: float, agnostic_output_dim: int | None):
        super().__init__()
        self.agnostic = agnostic_output_dim is not None
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=0)
        self.transformer = transformer
        if self.agnostic:
            self.pre_projection = _projection(embedding_dim, dim)
            self.positions = nn.Parameter(torch.empty(max_tokens, dim))
            nn.init.trunc_normal_(self.positions, std=dim ** -0.5)
            self.agg_token = nn.Parameter(torch.zeros(1, 1, dim))
            self.post_projection = _projection(dim, agnostic_output_dim)
        else:
            self.agg_token = nn.Parameter(torch.zeros(1, 1, embedding_dim))
            self.pre_projection = nn.Sequential(nn.Linear(embedding_dim, dim, bias=False),
                                                nn.GELU())
            self.relative_bias = RelativePositionBias(num_heads, num_buckets, max_distance)
            self.post_projection = nn.Identity()
        self.dropout = nn.Dropout(dropout)
        self.output_dim = agnostic_output_dim or dim

    def load_word_embeddings(self, table: torch.Tensor, freeze: bool = True) -> None:
        """Fill the word table (e.g. from word2vec) and freeze it, as the reference does."""
        if table.shape != self.embedding.weight.shape:
            raise ValueError(
                f"word embedding table has shape {tuple(table.shape)}, the model expects "
                f"{tuple(self.embedding.weight.shape)} (data.vocab_size x model.text.embedding_dim)")
        with torch.no_grad():
            self.embedding.weight.copy_(table)
        self.embedding.weight.requires_grad_(not freeze)

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        lead_shape = text.shape[:-1]
        ids = text.reshape(-1, text.shape[-1])  # (B*L, n)
        M, n = ids.shape
        words = self.embedding(ids)  # (M, n, 300)
        if self.agnostic:
            x = self.pre_projection(words) + self.positions[:n]  # (M, n, d)
            x = torch.cat([self.agg_token.expand(M, -1, -1), self.dropout(x)], dim=1)
            bias = None
        else:
            x = torch.cat([self.agg_token.expand(M, -1, -1), words], dim=1)  # (M, 1 + n, 300)
            x = self.dropout(self.pre_projection(x))  # (M, 1 + n, d)
            bias = self.relative_bias(n + 1, ids.device)  # (1, nh, 1 + n, 1 + n)
        # padding: keys with id 0 are masked out; the AGG token is always visible
        pad = torch.cat([torch.zeros(M, 1, dtype=torch.bool, device=ids.device), ids == 0], 1)
        pad_bias = torch.zeros(pad.shape, dtype=x.dtype, device=ids.device)
        pad_bias = pad_bias.masked_fill(pad, torch.finfo(x.dtype).min)[:, None, None, :]
        bias = pad_bias if bias is None else bias.to(x.dtype) + pad_bias  # (M, nh|1, 1|N, N)
        pooled = self.post_projection(self.transformer(x, bias)[:, 0])  # (M, d_out)
        return pooled.view(*lead_shape, -1)

