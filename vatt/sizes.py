"""Named Transformer sizes (spec section 4). Kept free of torch so the config can validate."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Size:
    num_layers: int
    d_model: int
    mlp_dim: int
    num_heads: int


SIZES: dict[str, Size] = {
    "tiny": Size(num_layers=4, d_model=128, mlp_dim=512, num_heads=2),  # CPU-sized, not in the paper
    "small": Size(num_layers=6, d_model=512, mlp_dim=2048, num_heads=8),
    "base": Size(num_layers=12, d_model=768, mlp_dim=3072, num_heads=12),
    "medium": Size(num_layers=12, d_model=1024, mlp_dim=4096, num_heads=16),
    "large": Size(num_layers=24, d_model=1024, mlp_dim=4096, num_heads=16),
}


def resolve(encoder_cfg) -> Size:
    """The size row of an EncoderConfig with its per-field overrides applied."""
    row = SIZES[encoder_cfg.size]
    return Size(
        num_layers=encoder_cfg.num_layers or row.num_layers,
        d_model=encoder_cfg.d_model or row.d_model,
        mlp_dim=encoder_cfg.mlp_dim or row.mlp_dim,
        num_heads=encoder_cfg.num_heads or row.num_heads,
    )
