"""GPU training-step benchmark (issue 15): preset `mbs` at the spec's full input (32x224x224
video, 153,600 audio samples, 5 captions of 16 tokens), 50% DropToken, bf16 autocast
(train.precision=auto on CUDA), scaled-dot-product attention on its flash kernel where it can.

Prints steps/s, clips/s, peak GPU memory and MFU: training FLOPs counted with attention on the
meta device (vatt.model.flops.training_flops_per_clip) over the card's dense bf16 peak (a table of
known cards; `--peak-tflops` for another). Runs in under 5 minutes on an H100-class card:

    python benchmarks/gpu_step.py [--batch 8] [--steps 20] [--compile] [--peak-tflops 989]

Channels-last is not applied: the video arrives channels-last (B, T, H, W, 3) and the patch
embedding is a patchify + one matmul (vatt.model.tokenizers), so no convolution runs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from vatt.cluster.plan import dense_bf16_peak
from vatt.config import load_config
from vatt.losses import vatt_loss
from vatt.model import build_model
from vatt.model.flops import training_flops_per_clip
from vatt.model.summary import random_batch
from vatt.train.precision import autocast, resolve_precision
from vatt.train.schedule import build_optimizer


def card_peak(name: str, override: float | None) -> float | None:
    """The card's dense bf16 peak in FLOP/s (None when unknown and not given), from the table
    the cluster plan uses too (vatt.cluster.plan.DENSE_BF16_PEAK_TFLOPS)."""
    if override is not None:
        return override * 1e12
    known = dense_bf16_peak(name)
    return None if known is None else known[1] * 1e12


def flash_attention_works(device: torch.device, tokens: int, heads: int) -> str:
    """Run SDPA alone restricted to the flash kernel at the video's shape; '' when it runs,
    else why not."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q = torch.randn(2, heads, tokens, 64, device=device, dtype=torch.bfloat16)
    try:
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            F.scaled_dot_product_attention(q, q, q, dropout_p=0.1)
    except RuntimeError as err:
        return str(err).splitlines()[0]
    return ""


def attention_kernels(step) -> list[str]:
    """Names of the attention kernels one profiled step launched."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    names = {event.key for event in prof.key_averages()}
    markers = ("flash", "fmha", "efficient_attention", "attention")
    return sorted(n for n in names if any(marker in n.lower() for marker in markers))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="mbs")
    parser.add_argument("--batch", type=int, default=8, help="clips per step")
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the card's dense bf16 peak, when it is not in the table")
    parser.add_argument("overrides", nargs="*", default=[],
                        help="config overrides (default: the preset's full input, 50%% DropToken)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_step: no CUDA device is visible (torch.cuda.is_available() is False); run "
              "this on a machine with an NVIDIA GPU and a CUDA build of torch. For the CPU, "
              "use benchmarks/model_step.py", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    name = torch.cuda.get_device_name(device)
    cfg = load_config(args.preset, list(args.overrides))
    precision = resolve_precision(cfg.train.precision, device)
    d = cfg.data
    print(f"{name}, torch {torch.__version__}; preset {cfg.name}: video {d.num_frames}x"
          f"{d.frame_size}x{d.frame_size}, audio {d.audio_samples} samples, DropToken video "
          f"{cfg.model.video.drop_rate:.0%} / audio {cfg.model.audio.drop_rate:.0%}; "
          f"batch {args.batch}; {precision.describe()}; compile {args.compile}")

    torch.manual_seed(0)
    model = build_model(cfg).to(device).train()
    run = torch.compile(model) if args.compile else model
    optimizer = build_optimizer(model.parameters(), cfg.train.optim)
    for group in optimizer.param_groups:
        group["lr"] = 1e-4
    batch = {k: v.to(device) for k, v in random_batch(cfg, args.batch).items()}

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast(precision, device):
            outputs = run(batch)
        vatt_loss(outputs, batch["text_mask"], cfg.loss)["total"].backward()
        optimizer.step()

    video = model.backbones["video"]
    kept = int((1 - cfg.model.video.drop_rate) * video.positions.grid[0]
               * video.positions.grid[1] * video.positions.grid[2])
    heads = video.transformer.blocks[0].attn.num_heads
    why_not = flash_attention_works(device, 1 + kept, heads)
    print(f"flash attention at the video's {1 + kept} tokens, {heads} heads: "
          f"{'runs' if not why_not else 'NOT available: ' + why_not}")

    start = time.perf_counter()
    step()
    torch.cuda.synchronize()
    print(f"first step (allocations{', compilation' if args.compile else ''}): "
          f"{time.perf_counter() - start:.1f} s")
    for _ in range(args.warmup - 1):
        step()
    print("attention kernels launched in one step: "
          f"{', '.join(attention_kernels(step)) or 'none found by name'}")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)

    flops = training_flops_per_clip(cfg) * args.batch  # the cluster plan's count too
    peak = card_peak(name, args.peak_tflops)
    achieved = flops / seconds
    print(f"step: median {seconds * 1e3:.1f} ms (min {min(times) * 1e3:.1f}, max "
          f"{max(times) * 1e3:.1f}) over {args.steps} steps")
    print(f"steps/s {1 / seconds:.2f}, clips/s {args.batch / seconds:.1f}, peak memory "
          f"{torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")
    print(f"training FLOPs per step (attention counted, meta device): {flops / 1e12:.2f} TFLOP; "
          f"achieved {achieved / 1e12:.1f} TFLOP/s")
    if peak is None:
        print(f"MFU: n/a, '{name}' is not in the table of peaks; pass --peak-tflops")
    else:
        print(f"MFU: {achieved / peak:.1%} of {peak / 1e12:.0f} TFLOP/s dense bf16")
    return 0


if __name__ == "__main__":
    sys.exit(main())
