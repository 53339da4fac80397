"""Model training-step benchmark (issue: model and foundation). Not a test: prints a table.

1. DropToken: time of one training step (forward, backward, Adam) of a CPU-sized config at drop
   0/25/50/75%, beside the FLOPs ratio of each, all in one run.
2. Model FLOP utilisation: achieved training FLOP/s of a width-768 video backbone divided by this
   machine's fp32 matmul FLOP/s measured in the same run, side by side with timm's ViT blocks on
   the same token count (`pip install timm` for that part; it is skipped with a note otherwise).

    python benchmarks/model_step.py [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from vatt.config import load_config
from vatt.losses import vatt_loss
from vatt.model import build_model
from vatt.model.summary import random_batch


def timed(step, repeats: int, warmup: int = 2) -> float:
    """Median seconds of `step()` over `repeats` runs after `warmup` runs."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def training_flops(step) -> int:
    """FLOPs of one forward+backward as FlopCounterMode counts them (2 per multiply-add)."""
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return counter.get_total_flops()


def matmul_peak(size: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    seconds = timed(lambda: a @ b, repeats)
    return 2 * size ** 3 / seconds


def droptoken_table(args) -> None:
    print(f"\n## DropToken: training step of preset '{args.preset}' "
          f"{' '.join(args.overrides)} (batch {args.batch})")
    rates = (0.0, 0.25, 0.5, 0.75)
    steps, flops = {}, {}
    for rate in rates:
        cfg = load_config(args.preset, args.overrides + [f"model.video.drop_rate={rate}",
                                                         f"model.audio.drop_rate={rate}"])
        torch.manual_seed(0)
        model = build_model(cfg).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, eps=1e-7)
        batch = random_batch(cfg, args.batch)

        def step(model=model, optimizer=optimizer, batch=batch, cfg=cfg):
            optimizer.zero_grad(set_to_none=True)
            loss = vatt_loss(model(batch), batch["text_mask"], cfg.loss)["total"]
            loss.backward()
            optimizer.step()

        steps[rate], flops[rate] = step, training_flops(step)
    # rounds interleave the rates so a noisy neighbour slows all of them alike
    times = {rate: [] for rate in rates}
    for _ in range(args.repeats):
        for rate in rates:
            times[rate].append(timed(steps[rate], repeats=1, warmup=1))
    seconds = {rate: statistics.median(times[rate]) for rate in rates}
    print("| drop rate | step (s) | time vs drop 0 | FLOPs vs drop 0 |")
    print("|---|---|---|---|")
    for rate in rates:
        print(f"| {rate:.2f} | {seconds[rate]:.3f} | {seconds[rate] / seconds[0.0]:.2f}x | "
              f"{flops[rate] / flops[0.0]:.2f}x |")


def adam_step(module: torch.nn.Module, inputs: torch.Tensor):
    """One training step of `module` on `inputs` (a stand-in loss), with Adam."""
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-4)

    def step():
        optimizer.zero_grad(set_to_none=True)
        module(inputs).square().mean().backward()
        optimizer.step()

    return step


def mfu_row(name: str, step, repeats: int, peak: float) -> float:
    """Print one MFU table row; returns the step time."""
    flops, seconds = training_flops(step), timed(step, repeats)
    print(f"| {name} | {seconds:.3f} | {flops / seconds / 1e9:.1f} | {flops / seconds / peak:.0%} |")
    return seconds


def mfu_table(args) -> None:
    cfg = load_config("tiny", ["model.video.size=base", "model.video.num_layers=4",
                               "model.video.drop_rate=0", "data.frame_size=128"])
    torch.manual_seed(0)
    video = build_model(cfg).backbones["video"].train()
    clips = torch.rand(args.mfu_batch, cfg.data.num_frames, 128, 128, 3) * 2 - 1
    tokens = 1 + video.positions.grid[0] * video.positions.grid[1] * video.positions.grid[2]
    peak = max(matmul_peak() for _ in range(3))  # the best of several: the machine's peak
    print(f"\n## MFU: width-768 video backbone, 4 layers, {tokens} tokens, batch {args.mfu_batch}")
    print(f"fp32 matmul peak (2048^3, best of 3, same run): {peak / 1e9:.1f} GFLOP/s")
    print("| model | step (s) | GFLOP/s | MFU |")
    print("|---|---|---|---|")
    vatt_seconds = mfu_row("vatt video backbone", adam_step(video, clips), args.repeats, peak)
    try:
        from timm.models.vision_transformer import Block
    except ImportError:
        print("(timm not installed: `pip install timm` to compare with timm's ViT blocks)")
        return
    blocks = torch.nn.Sequential(*[Block(768, 12, mlp_ratio=4.0, qkv_bias=True, proj_drop=0.1,
                                         attn_drop=0.1) for _ in range(4)]).train()
    x = torch.randn(args.mfu_batch, tokens, 768)
    timm_seconds = mfu_row("timm ViT blocks (same tokens)", adam_step(blocks, x), args.repeats,
                           peak)
    print(f"vatt step time / timm step time: {vatt_seconds / timm_seconds:.3f} "
          f"(vatt also runs the patch embedding, positions and final norm)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--mfu-batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("overrides", nargs="*", default=["data.frame_size=128"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads")
    droptoken_table(args)
    mfu_table(args)


if __name__ == "__main__":
    main()
