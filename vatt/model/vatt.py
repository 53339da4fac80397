"""The VATT model: three backbones (modality-specific or one shared Transformer) and the
common-space heads. Read top to bottom: build_model -> VATT.__init__ -> VATT.forward.

Batch layout (what forward takes; any non-empty subset of modalities):
    video      float (B, T, H, W, 3), RGB in [-1, 1], channels last as decoded frames are
    audio      float (B, S), mono waveform in [-1, 1], time-aligned with the video
    text       int64 (B, L, n), L caption candidates of n word ids, pad id 0
    text_mask  float or bool (B, L), 1 where candidate l of clip b is a real caption
Output: {"video": {"pooled", "va", "vt"}, "audio": {"pooled", "va"}, "text": {"pooled", "vt"}}
with pooled (B, d) backbone features (text: (B, L, d)) and un-normalised common-space embeddings.
"""

from __future__ import annotations

import torch
from torch import nn

from vatt.config import BackboneSharing, Config, DropTokenSampling
from vatt.model.backbones import AudioBackbone, TextBackbone, VideoBackbone
from vatt.model.heads import CommonSpaceHeads
from vatt.model.layers import Transformer
from vatt.sizes import resolve

MODALITIES = ("video", "audio", "text")


class InputError(ValueError):
    """A batch the model cannot take; the message names the modality and the expected shape."""


class VATT(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        m, data = cfg.model, cfg.data
        agnostic = m.sharing == BackboneSharing.agnostic
        per_sample = m.droptoken_sampling == DropTokenSampling.sample

        def transformer(encoder_cfg, t5: bool = False) -> Transformer:
            size = resolve(encoder_cfg)
            return Transformer(size.num_layers, size.d_model, size.num_heads, size.mlp_dim,
                               dropout=m.dropout, attention_dropout=m.attention_dropout,
                               eps=m.layer_norm_eps, t5=t5)

        if agnostic:
            shared = transformer(m.shared)
            encoders = {"video": shared, "audio": shared, "text": shared}
            output_dim: int | None = m.agnostic_output_dim
        else:
            encoders = {"video": transformer(m.video), "audio": transformer(m.audio),
                        "text": transformer(m.text, t5=True)}
            output_dim = None

        t, h, w = m.video.patch_size
        patch_kwargs = dict(per_sample_drop=per_sample, dropout=m.dropout,
                            eps=m.layer_norm_eps, agnostic_output_dim=output_dim)
        text_heads = resolve(m.shared if agnostic else m.text).num_heads
        self.backbones = nn.ModuleDict({
            "video": VideoBackbone(
                patch_size=(t, h, w),
                grid=(data.num_frames // t, data.frame_size // h, data.frame_size // w),
                dim=encoders["video"].dim, transformer=encoders["video"],
                drop_rate=m.video.drop_rate, **patch_kwargs),
            "audio": AudioBackbone(
                patch_size=m.audio.patch_size, num_tokens=data.audio_samples // m.audio.patch_size,
                dim=encoders["audio"].dim, transformer=encoders["audio"],
                drop_rate=m.audio.drop_rate, input_scale=m.audio.input_scale, **patch_kwargs),
            "text": TextBackbone(
                vocab_size=data.vocab_size, embedding_dim=m.text.embedding_dim,
                max_tokens=data.max_text_tokens, dim=encoders["text"].dim,
                transformer=encoders["text"], num_heads=text_heads,
                num_buckets=m.text.relative_num_buckets,
                max_distance=m.text.relative_max_distance, dropout=m.dropout,
                agnostic_output_dim=output_dim),
        })
        self.heads = CommonSpaceHeads(
            self.backbones["video"].output_dim, self.backbones["audio"].output_dim,
            self.backbones["text"].output_dim, va_dim=m.heads.va_dim, vt_dim=m.heads.vt_dim,
            bn_after_audio_text=m.heads.bn_after_audio_text, bn_momentum=m.heads.bn_momentum,
            bn_eps=m.heads.bn_eps)
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        # one init for the whole model; position tables and AGG tokens are set where they live
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=self.cfg.model.init_std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.Conv1d, nn.Conv3d)):
            # raw-input tokenizers: fan-in scaling (LeCun, as JAX ViTs init the patch embedding)
            # keeps the content at the scale of the LayerNorm'd positions; at std 0.02 a 128-
            # sample audio patch gives tokens ~40x smaller than the positions, the pooled audio
            # feature barely depends on the input and the audio embeddings collapse
            weight = module.weight.view(module.out_channels, -1)  # (d, fan_in)
            nn.init.trunc_normal_(weight, std=weight.shape[1] ** -0.5)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding) and module.weight.requires_grad:
            nn.init.normal_(module.weight, std=1.0)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
        self.check_batch(batch)
        out: dict[str, dict[str, torch.Tensor]] = {}
        if "video" in batch:
            pooled = self.backbones["video"](batch["video"])  # (B, d_v)
            out["video"] = {"pooled": pooled, **self.heads.video(pooled)}
        if "audio" in batch:
            pooled = self.backbones["audio"](batch["audio"])  # (B, d_a)
            out["audio"] = {"pooled": pooled, **self.heads.audio(pooled)}
        if "text" in batch:
            pooled = self.backbones["text"](batch["text"])  # (B, L, d_t)
            out["text"] = {"pooled": pooled, **self.heads.text(pooled)}
        return out

    def check_batch(self, batch: dict[str, torch.Tensor]) -> None:
        """Fail early, naming the modality and the shape the model expects."""
        data, m = self.cfg.data, self.cfg.model
        if not any(k in batch for k in MODALITIES):
            raise InputError(f"batch has none of the modalities {MODALITIES}; "
                             f"got keys {sorted(batch)}")
        sizes = {}
        if "video" in batch:
            v = batch["video"]
            t, h, w = m.video.patch_size
            expected = (f"float (B, T, H, W, 3) in [-1, 1] with T a multiple of {t} and H, W "
                        f"multiples of {h}x{w} (config: T={data.num_frames}, "
                        f"H=W={data.frame_size})")
            if (not torch.is_floating_point(v) or v.dim() != 5 or v.shape[-1] != 3
                    or v.shape[1] % t or v.shape[2] % h or v.shape[3] % w or v.shape[1] == 0):
                raise InputError(f"video: got {v.dtype} {tuple(v.shape)}, expected {expected}")
            sizes["video"] = v.shape[0]
        if "audio" in batch:
            a = batch["audio"]
            p = m.audio.patch_size
            if (not torch.is_floating_point(a) or a.dim() != 2 or a.shape[1] % p
                    or a.shape[1] == 0):
                raise InputError(
                    f"audio: got {a.dtype} {tuple(a.shape)}, expected float (B, S) mono waveform "
                    f"with S a multiple of {p} (config: S={data.audio_samples})")
            sizes["audio"] = a.shape[0]
        if "text" in batch:
            x = batch["text"]
            n = data.max_text_tokens
            if x.dtype != torch.int64 or x.dim() != 3 or x.shape[2] > n:
                raise InputError(
                    f"text: got {x.dtype} {tuple(x.shape)}, expected int64 (B, L, n) word ids "
                    f"with n <= {n} (data.max_text_tokens), pad id 0")
            # checked on the CPU only: on an accelerator it would force a sync every step
            if x.device.type == "cpu" and x.numel() and int(x.max()) >= data.vocab_size:
                raise InputError(f"text: word id {int(x.max())} is outside the vocabulary of "
                                 f"data.vocab_size={data.vocab_size}")
            mask = batch.get("text_mask")
            if mask is None or tuple(mask.shape) != tuple(x.shape[:2]):
                got = "missing" if mask is None else tuple(mask.shape)
                raise InputError(f"text_mask: got {got}, expected (B, L) = {tuple(x.shape[:2])} "
                                 "with 1 for real captions and 0 for padding candidates")
            sizes["text"] = x.shape[0]
        if len(set(sizes.values())) > 1:
            raise InputError(f"batch sizes differ between modalities: {sizes}")


def build_model(cfg: Config, vocabulary=None) -> VATT:
    """Build VATT from the config. With `model.text.word2vec_path` set, the word table is
    loaded from that file for `vocabulary` (a vatt.text.Vocabulary) and frozen."""
    model = VATT(cfg)
    if cfg.model.text.word2vec_path:
        if vocabulary is None:
            raise ValueError(
                f"model.text.word2vec_path={cfg.model.text.word2vec_path} needs the dataset's "
                "vocabulary: pass vocabulary=Vocabulary.load(<data>/vocab.json) to build_model")
        from vatt.text import load_word2vec

        table = load_word2vec(cfg.model.text.word2vec_path, vocabulary,
                              dim=cfg.model.text.embedding_dim)
        full = torch.zeros(cfg.data.vocab_size, cfg.model.text.embedding_dim)
        rows = min(len(table), cfg.data.vocab_size)
        full[:rows] = table[:rows]
        model.backbones["text"].load_word_embeddings(full, freeze=True)
    return model
