"""Which precision the model computes in: `train.precision` (auto | bf16 | fp32) on a device.

bf16 autocast covers the backbones and the heads (the model's forward). The losses compute in
fp32 themselves (vatt.losses); BatchNorm keeps fp32 running statistics and accumulates its batch
statistics in fp32 (GlobalBatchNorm1d casts to fp32 itself); the parameters, gradients and Adam
state stay fp32: autocast only casts the inputs of matmuls and convolutions.

`auto` is bf16 where the device computes it natively: CUDA, or a CPU with AVX512-BF16 or AMX
tiles. Elsewhere bf16 is emulated (each op converts to fp32 and back), slower than fp32, so auto
picks fp32 there; an explicit `bf16` still runs (it is correct, only slow) and warns.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass

import torch

from vatt.config import Precision


@dataclass(frozen=True)
class CpuBf16Support:
    """The CPU instructions that make bf16 native (False where this torch cannot tell)."""

    avx512_bf16: bool
    amx_tile: bool

    @property
    def native(self) -> bool:
        return self.avx512_bf16 or self.amx_tile


def cpu_bf16_support() -> CpuBf16Support:
    """This machine's CPU, as torch reports it (private helpers, absent in some builds)."""
    def probe(name: str) -> bool:
        check = getattr(torch.cpu, name, None)
        return bool(check()) if callable(check) else False

    return CpuBf16Support(avx512_bf16=probe("_is_avx512_bf16_supported"),
                          amx_tile=probe("_is_amx_tile_supported"))


@dataclass(frozen=True)
class PrecisionChoice:
    dtype: torch.dtype  # torch.bfloat16 or torch.float32
    reason: str  # why, for the log line
    emulated: bool = False  # bf16 on a CPU without native support

    @property
    def name(self) -> str:
        return "bf16" if self.dtype == torch.bfloat16 else "fp32"

    def describe(self) -> str:
        return f"precision: {self.name} ({self.reason})"


def choose_precision(requested: Precision | str, device_type: str,
                     cpu: CpuBf16Support) -> PrecisionChoice:
    """The precision to run `requested` in on a device of `device_type` ("cuda", "cpu", ...)
    with `cpu`'s instructions; pure, so tests give it any machine."""
    requested = Precision(requested)
    if requested is Precision.fp32:
        return PrecisionChoice(torch.float32, "train.precision=fp32")
    if device_type == "cuda":
        return PrecisionChoice(torch.bfloat16, f"train.precision={requested.value}, CUDA")
    if device_type == "cpu":
        if cpu.native:
            which = "AMX" if cpu.amx_tile else "avx512_bf16"
            return PrecisionChoice(torch.bfloat16,
                                   f"train.precision={requested.value}, this CPU has {which}")
        if requested is Precision.auto:
            return PrecisionChoice(
                torch.float32, "this CPU has no avx512_bf16/AMX; bf16 would be emulated")
        return PrecisionChoice(
            torch.bfloat16, "train.precision=bf16, but this CPU has no avx512_bf16/AMX: "
            "bf16 is emulated and slower than fp32; set train.precision=auto for fp32 here",
            emulated=True)
    # TPU (xla) and others: no bf16 autocast wired here, the model runs as built
    if requested is Precision.bf16:
        raise ValueError(f"train.precision=bf16 on a '{device_type}' device: bf16 autocast is "
                         "wired for CUDA and CPU only; set train.precision=auto or fp32")
    return PrecisionChoice(torch.float32, f"no bf16 autocast for '{device_type}' devices")


def resolve_precision(requested: Precision | str, device: torch.device) -> PrecisionChoice:
    """`choose_precision` for this machine; warns once when bf16 would be emulated."""
    choice = choose_precision(requested, device.type, cpu_bf16_support())
    if choice.emulated:
        warnings.warn(choice.describe(), RuntimeWarning, stacklevel=2)
    return choice


def autocast(choice: PrecisionChoice, device: torch.device):
    """The autocast context of `choice` on `device` (nothing to do in fp32)."""
    if choice.dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=choice.dtype)


__all__ = ["CpuBf16Support", "cpu_bf16_support", "PrecisionChoice", "choose_precision",
           "resolve_precision", "autocast"]
