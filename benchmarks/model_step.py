"""Model training-step benchmark (issues 2 and 15). Not a test: prints tables.

1. DropToken: time of one training step (forward, backward, Adam) of a CPU-sized config at drop
   0/25/50/75%, beside the FLOPs ratio of each, all in one run.
2. Model FLOP utilisation and timm at equal work: a width-768 video backbone (4 layers) against
   timm's ViT blocks on the same tokens, both with dropout 0.1 and both with dropout 0,
   alternating rounds; MFU against this machine's matmul FLOP/s in the precision that ran,
   measured in the same run (`pip install timm` for the timm rows; skipped with a note otherwise).
3. torch.compile: eager vs compiled training step of `tiny` and of the width-768 backbone, and
   the compile warm-up (`--compile`).

FLOPs are counted with FlopCounterMode on the meta device, where scaled-dot-product attention
decomposes into `bmm` ops and is counted; on the CPU its fused kernel counts 0 (vatt.model.flops).
They are the FLOPs actually computed (attention at 4*N^2*d per layer), not the paper's convention.
bf16 (`--bf16`) on a CPU without avx512_bf16/AMX is emulated: its rows are for the record only.

    python benchmarks/model_step.py [--rounds 5] [--threads 2] [--compile] [--bf16]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from typing import Callable

import torch

from vatt.config import load_config
from vatt.losses import vatt_loss
from vatt.model import build_model
from vatt.model.flops import count_training_flops, training_flops_per_clip
from vatt.model.summary import random_batch
from vatt.train.precision import cpu_bf16_support

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def seconds_of(step: Callable[[], None]) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def alternating_rounds(steps: dict[str, Callable[[], None]], rounds: int,
                       warmup: int = 1) -> dict[str, list[float]]:
    """Seconds of each step per round; within a round the steps take turns, so a noisy
    neighbour slows all of them alike."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            times[name].append(seconds_of(step))
    return times


def spread(values: list[float]) -> str:
    """Median and (min-max) of `values`."""
    return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def matmul_peak(dtype: torch.dtype, size: int = 2048, rounds: int = 5) -> float:
    """FLOP/s of a size^3 matmul in `dtype` on this machine (best of `rounds`)."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    return 2 * size ** 3 / min(seconds_of(lambda: a @ b) for _ in range(rounds))


def autocast_for(precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast("cpu", dtype=DTYPES[precision])


def adam_step(module: torch.nn.Module, inputs: torch.Tensor, precision: str = "fp32"):
    """One training step of `module` on `inputs` (a stand-in loss), with Adam."""
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-4)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast_for(precision):
            out = module(inputs)
        out.float().square().mean().backward()
        optimizer.step()

    return step


# --- 1. DropToken ----------------------------------------------------------------------------

def droptoken_table(args) -> None:
    print(f"\n## DropToken: training step of preset '{args.preset}' "
          f"{' '.join(args.overrides)} (batch {args.batch}, fp32)")
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

        steps[rate] = step
        flops[rate] = training_flops_per_clip(cfg) * args.batch
    times = alternating_rounds(steps, args.rounds)
    seconds = {rate: statistics.median(times[rate]) for rate in rates}
    print("| drop rate | step (s), median (min-max) | time vs drop 0 | FLOPs vs drop 0 "
          "(attention counted) | training GFLOPs |")
    print("|---|---|---|---|---|")
    for rate in rates:
        print(f"| {rate:.2f} | {spread(times[rate])} | {seconds[rate] / seconds[0.0]:.2f}x | "
              f"{flops[rate] / flops[0.0]:.2f}x | {flops[rate] / 1e9:.1f} |")


# --- 2. MFU and timm at equal work -----------------------------------------------------------

def backbone_cfg(dropout: float):
    return load_config("tiny", ["model.video.size=base", "model.video.num_layers=4",
                                "model.video.drop_rate=0", "data.frame_size=128",
                                f"model.dropout={dropout}", f"model.attention_dropout={dropout}"])


def timm_blocks(dropout: float, layers: int = 4) -> torch.nn.Module:
    """timm's ViT blocks at the backbone's width, dropout on attention, projection and MLP,
    and a final LayerNorm (the backbone's Transformer ends with one too)."""
    from functools import partial

    from timm.models.vision_transformer import Block

    norm = partial(torch.nn.LayerNorm, eps=1e-6)
    return torch.nn.Sequential(
        *[Block(768, 12, mlp_ratio=4.0, qkv_bias=True, proj_drop=dropout, attn_drop=dropout,
                norm_layer=norm) for _ in range(layers)], norm(768))


def mfu_table(args, precision: str, batch: int, rounds: int,
              dropouts: tuple[float, ...]) -> None:
    try:
        import timm
    except ImportError:
        timm = None
    peak = matmul_peak(DTYPES[precision])
    emulated = precision == "bf16" and not cpu_bf16_support().native
    cfg = backbone_cfg(0.0)
    note = " (EMULATED: this CPU lacks avx512_bf16/AMX)" if emulated else ""
    print(f"\n## MFU, {precision}{note}: width-768 video backbone, 4 layers, batch {batch}")
    print(f"{precision} matmul peak (2048^3, best of 5, same run): {peak / 1e9:.1f} GFLOP/s")
    if timm is None:
        print("(timm not installed: `pip install --no-deps timm` (it needs torchvision) to "
              "compare with timm's ViT blocks at equal work)")
    print("| model | dropout | step (s), median (min-max) | GFLOP/s | MFU |")
    print("|---|---|---|---|---|")
    for dropout in dropouts:
        cfg = backbone_cfg(dropout)
        torch.manual_seed(0)
        video = build_model(cfg).backbones["video"].train()
        clips = torch.rand(batch, cfg.data.num_frames, 128, 128, 3) * 2 - 1
        tokens = 1 + video.positions.grid[0] * video.positions.grid[1] * video.positions.grid[2]
        x = torch.randn(batch, tokens, 768)
        steps = {"vatt video backbone (patches, positions, blocks, norm)":
                 adam_step(video, clips, precision),
                 "vatt Transformer stack alone (blocks, norm)":
                 adam_step(video.transformer, x, precision)}
        flops = {next(iter(steps)): count_training_flops(
                     lambda: build_model(cfg).backbones["video"],
                     lambda: torch.empty(batch, cfg.data.num_frames, 128, 128, 3)),
                 "vatt Transformer stack alone (blocks, norm)": count_training_flops(
                     lambda: build_model(cfg).backbones["video"].transformer,
                     lambda: torch.empty(batch, tokens, 768))}
        if timm is not None:
            name = f"timm {timm.__version__} ViT blocks + norm (same {tokens} tokens)"
            blocks = timm_blocks(dropout).train()
            steps[name] = adam_step(blocks, x, precision)
            flops[name] = count_training_flops(lambda: timm_blocks(dropout),
                                              lambda: torch.empty(batch, tokens, 768))
        times = alternating_rounds(steps, rounds)
        for name, values in times.items():
            seconds = statistics.median(values)
            print(f"| {name} | {dropout} | {spread(values)} | {flops[name] / seconds / 1e9:.1f} | "
                  f"{flops[name] / seconds / peak:.0%} |")
        if timm is not None:
            stack = "vatt Transformer stack alone (blocks, norm)"
            ratios = [a / b for a, b in zip(times[stack], times[name])]
            print(f"dropout {dropout}: vatt stack / timm blocks, per round: median "
                  f"{statistics.median(ratios):.3f} (min {min(ratios):.3f}, max "
                  f"{max(ratios):.3f}); GFLOPs per step vatt {flops[stack] / 1e9:.1f} vs timm "
                  f"{flops[name] / 1e9:.1f}")


# --- 3. torch.compile ------------------------------------------------------------------------

def compile_table(args) -> None:
    print("\n## torch.compile vs eager, fp32, training step (forward, backward, Adam)")
    print("| model | eager step (s) | compiled step (s) | compiled / eager | compile warm-up (s) |")
    print("|---|---|---|---|---|")
    tiny = load_config(args.preset, args.overrides)
    tiny_batch = random_batch(tiny, args.batch)
    wide = backbone_cfg(0.1)
    clips = torch.rand(args.mfu_batch, wide.data.num_frames, 128, 128, 3) * 2 - 1

    def tiny_step(compiled: bool):
        torch.manual_seed(0)
        model = build_model(tiny).train()
        run = torch.compile(model) if compiled else model
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, eps=1e-7)

        def step():
            optimizer.zero_grad(set_to_none=True)
            vatt_loss(run(tiny_batch), tiny_batch["text_mask"], tiny.loss)["total"].backward()
            optimizer.step()
        return step

    def wide_step(compiled: bool):
        torch.manual_seed(0)
        video = build_model(wide).backbones["video"].train()
        return adam_step(torch.compile(video) if compiled else video, clips)

    for name, make in ((f"{args.preset} whole model, batch {args.batch}", tiny_step),
                       (f"width-768 video backbone, 4 layers, batch {args.mfu_batch}",
                        wide_step)):
        eager, compiled = make(False), make(True)
        warmup = seconds_of(compiled)  # the first call compiles forward and backward
        times = alternating_rounds({"eager": eager, "compiled": compiled}, args.rounds)
        ratios = [c / e for c, e in zip(times["compiled"], times["eager"])]
        print(f"| {name} | {spread(times['eager'])} | {spread(times['compiled'])} | "
              f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}) | "
              f"{warmup:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--mfu-batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--skip-droptoken", action="store_true")
    parser.add_argument("--skip-mfu", action="store_true")
    parser.add_argument("--compile", action="store_true", help="also eager vs torch.compile")
    parser.add_argument("--bf16", action="store_true",
                        help="also the MFU rows in bf16 (emulated without avx512_bf16/AMX)")
    parser.add_argument("--bf16-batch", type=int, default=2)
    parser.add_argument("--bf16-rounds", type=int, default=1)
    parser.add_argument("overrides", nargs="*", default=["data.frame_size=128"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cpu = cpu_bf16_support()
    print(f"torch {torch.__version__}, {args.threads} threads, CPU avx512_bf16={cpu.avx512_bf16}"
          f" amx_tile={cpu.amx_tile}")
    if not args.skip_droptoken:
        droptoken_table(args)
    if not args.skip_mfu:
        mfu_table(args, "fp32", args.mfu_batch, args.rounds, (0.1, 0.0))
    if args.bf16:
        mfu_table(args, "bf16", args.bf16_batch, args.bf16_rounds, (0.1,))
    if args.compile:
        compile_table(args)


if __name__ == "__main__":
    main()
