"""`vatt info`: parameter counts, forward FLOPs and one real forward pass for a config."""

from __future__ import annotations

import time
from typing import Iterable

import torch

from vatt.config import Config
from vatt.model.flops import count_flops, meta_batch
from vatt.model.vatt import build_model


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _params_once(modules: Iterable[torch.nn.Module]) -> int:
    """Parameters of `modules` together, each counted once (a shared backbone appears under
    every modality)."""
    return sum(p.numel() for p in {id(p): p for m in modules for p in m.parameters()}.values())


def random_batch(cfg: Config, batch_size: int, generator: torch.Generator | None = None
                 ) -> dict[str, torch.Tensor]:
    """A batch of random inputs in the config's geometry (for smoke runs and benchmarks)."""
    d = cfg.data
    L = d.num_text_candidates
    return {
        "video": torch.rand(batch_size, d.num_frames, d.frame_size, d.frame_size, 3,
                            generator=generator) * 2 - 1,
        "audio": torch.rand(batch_size, d.audio_samples, generator=generator) * 2 - 1,
        "text": torch.randint(1, d.vocab_size, (batch_size, L, d.max_text_tokens),
                              generator=generator),
        "text_mask": torch.ones(batch_size, L),
    }


def model_cost(cfg: Config, batch_size: int = 2) -> dict:
    """Parameters per backbone (M), in all backbones and the whole model, and the training
    forward's GFLOPs per clip (paper convention, DropToken on as in pretraining: Table 5),
    measured on the meta device (no memory, no compute)."""
    with torch.device("meta"):
        meta_model = build_model(cfg)
    meta_model.train()
    flops = count_flops(meta_model, meta_batch(cfg, batch_size), per=batch_size)
    backbones = {name: _params(b) / 1e6 for name, b in meta_model.backbones.items()}
    return {
        "preset": cfg.name,
        "sharing": cfg.model.sharing.value,
        "params_M": backbones,
        "params_backbones_M": _params_once(meta_model.backbones.values()) / 1e6,
        # the Transformer stacks alone (without tokenizers and the word embedding): what
        # modality-agnostic sharing divides by the number of modalities
        "params_transformers_M": _params_once(
            b.transformer for b in meta_model.backbones.values()) / 1e6,
        "params_total_M": _params(meta_model) / 1e6,
        "train_gflops_per_clip": flops.paper_gflops,
        "drop_rate": {"video": cfg.model.video.drop_rate, "audio": cfg.model.audio.drop_rate},
    }


def print_summary(cfg: Config, forward: bool = True, batch_size: int = 2) -> dict:
    """Print (and return) parameters per backbone, GFLOPs per clip and a forward pass."""
    report = model_cost(cfg, batch_size)
    print(f"VATT preset '{cfg.name}' ({report['sharing']} backbones)")
    for name, count in report["params_M"].items():
        print(f"  {name:6s} backbone  {count:9.2f} M parameters")
    print(f"  whole model      {report['params_total_M']:9.2f} M parameters")
    print(f"  training forward {report['train_gflops_per_clip']:9.2f} GFLOPs per clip (paper convention, "
          f"DropToken video {cfg.model.video.drop_rate:.0%} / audio {cfg.model.audio.drop_rate:.0%})")
    if forward:
        torch.manual_seed(cfg.train.seed)
        model = build_model(cfg).eval()
        batch = random_batch(cfg, batch_size)
        start = time.perf_counter()
        with torch.no_grad():
            out = model(batch)
        seconds = time.perf_counter() - start
        print(f"  forward pass on batch {batch_size} (eval mode) in {seconds:.2f} s:")
        for modality, tensors in out.items():
            shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in tensors.items())
            print(f"    {modality:6s} {shapes}")
        report["forward_seconds"] = seconds
    return report
