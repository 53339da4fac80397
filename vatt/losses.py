"""Contrastive losses of VATT (spec section 6): video-audio NCE and video-text MIL-NCE.

Embeddings are L2-normalised here. When torch.distributed is initialised, negatives come from
every worker through an autograd-aware all-gather (every worker must pass the same batch size).
Each worker's loss is scaled so that the *average over workers* - what DDP's gradient averaging
computes - equals the loss of one process on the concatenated global batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from vatt.distributed import is_distributed

# masked logits: finite, so that a fully masked row gives a finite value (then dropped)
_MASKED = -1e4


class _GatherWithGradient(torch.autograd.Function):
    """all_gather whose backward sums every worker's gradient for this worker's slice.

    Written out (rather than torch.distributed.nn's all_gather) because the gradients reaching
    it are often non-contiguous (einsum, transposes), which gloo's all-to-all then misreads.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.batch = dist.get_rank(), x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)  # (world * B, ...)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad)  # sum over workers of d(loss_w)/d(gathered)
        return grad[ctx.rank * ctx.batch:(ctx.rank + 1) * ctx.batch]


def gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` from every worker along dim 0; gradients flow back to each worker."""
    if not is_distributed():
        return x
    return _GatherWithGradient.apply(x)


def mil_nce(video: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor | None = None,
            temperature: float = 0.07) -> torch.Tensor:
    """MIL-NCE between clips and their L text candidates.

    video (B, D), text (B, L, D), text_mask (B, L) with 1 for real captions.
    loss_i = logsumexp(all_i) - logsumexp(pos_i), pos_i = {s(v_i, t_il)/T}_l, all_i the
    s(v_i, t_jl)/T and s(v_j, t_il)/T over every clip j of the global batch and every l.
    Clips with no valid caption are left out of the mean.
    """
    B, L, D = text.shape
    if video.shape != (B, D):
        raise ValueError(f"mil_nce: video {tuple(video.shape)} and text {tuple(text.shape)} "
                         "disagree; expected video (B, D) and text (B, L, D)")
    if text_mask is None:
        text_mask = torch.ones(B, L, device=text.device)
    valid = text_mask.to(torch.bool)  # (B, L)
    video = F.normalize(video.float(), dim=-1)
    text = F.normalize(text.float(), dim=-1)

    all_video = gather(video)  # (G, D)
    all_text = gather(text)  # (G, L, D)
    all_valid = gather(valid.to(video.dtype)).to(torch.bool)  # (G, L)
    G = all_video.shape[0]

    # s(v_i, t_jl): local clips against every caption of the global batch
    video_vs_texts = (video @ all_text.reshape(G * L, D).t()) / temperature  # (B, G*L)
    video_vs_texts = video_vs_texts.masked_fill(~all_valid.reshape(1, G * L), _MASKED)
    # s(v_j, t_il): local captions against every clip of the global batch
    texts_vs_video = torch.einsum("bld,gd->blg", text, all_video) / temperature  # (B, L, G)
    texts_vs_video = texts_vs_video.masked_fill(~valid.unsqueeze(-1), _MASKED)
    texts_vs_video = texts_vs_video.reshape(B, L * G)  # (B, L*G)
    positives = torch.einsum("bd,bld->bl", video, text) / temperature  # (B, L)
    positives = positives.masked_fill(~valid, _MASKED)

    denominator = torch.logsumexp(torch.cat([video_vs_texts, texts_vs_video], dim=1), dim=1)
    per_clip = denominator - torch.logsumexp(positives, dim=1)  # (B,)
    has_text = valid.any(dim=1)
    per_clip = torch.where(has_text, per_clip, torch.zeros_like(per_clip))

    # mean over the clips of the global batch that have text, as a per-worker share
    global_count = all_valid.any(dim=1).sum().clamp(min=1)
    world = dist.get_world_size() if is_distributed() else 1
    return per_clip.sum() * world / global_count


def nce(x: torch.Tensor, y: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """Symmetric NCE between paired embeddings x (B, D) and y (B, D): MIL-NCE with L = 1."""
    if x.shape != y.shape or x.dim() != 2:
        raise ValueError(f"nce: expected two (B, D) tensors of one shape, got "
                         f"{tuple(x.shape)} and {tuple(y.shape)}")
    return mil_nce(x, y.unsqueeze(1), None, temperature)


def vatt_loss(outputs: dict[str, dict[str, torch.Tensor]], text_mask: torch.Tensor | None,
              loss_cfg) -> dict[str, torch.Tensor]:
    """Total pretraining loss from the model's outputs (spec: w_va*NCE + w_vt*MIL-NCE).

    Always in fp32, also when called under autocast: at temperature 0.07 the similarities are
    multiplied by ~14 before the softmax, and bf16 similarity matmuls would quantise the logits.
    """
    device_type = next(iter(outputs["video"].values())).device.type if "video" in outputs else "cpu"
    with torch.autocast(device_type=device_type, enabled=False):
        fp32 = {modality: {key: value.float() for key, value in heads.items()}
                for modality, heads in outputs.items()}
        return _vatt_loss_fp32(fp32, text_mask, loss_cfg)


def _vatt_loss_fp32(outputs: dict[str, dict[str, torch.Tensor]], text_mask: torch.Tensor | None,
                    loss_cfg) -> dict[str, torch.Tensor]:
    if "video" not in outputs or not ({"audio", "text"} & outputs.keys()):
        raise ValueError("vatt_loss needs video and at least one of audio or text in the "
                         f"model outputs; got {sorted(outputs)}")
    parts: dict[str, torch.Tensor] = {}
    total = 0.0
    if "audio" in outputs:
        parts["video_audio"] = nce(outputs["video"]["va"], outputs["audio"]["va"],
                                   loss_cfg.temperature)
        total = total + loss_cfg.va_weight * parts["video_audio"]
    if "text" in outputs:
        parts["video_text"] = mil_nce(outputs["video"]["vt"], outputs["text"]["vt"], text_mask,
                                      loss_cfg.temperature)
        total = total + loss_cfg.vt_weight * parts["video_text"]
    if loss_cfg.average_pair_losses:
        total = total / len(parts)
    return {"total": total, **parts}
