"""train.precision: which precision is chosen on which machine, bf16 training against fp32, and
a torch.compile'd step against an eager one (all on the CPU; bf16 is emulated on a CPU without
avx512_bf16/AMX, correct but slow, so the batches are small)."""

from __future__ import annotations

import warnings

import pytest
import torch

from vatt.config import ConfigError, Precision, from_dict, load_config, to_dict
from vatt.losses import vatt_loss
from vatt.train.loop import build_training, train_step
from vatt.train.precision import (CpuBf16Support, PrecisionChoice, autocast, choose_precision,
                                  cpu_bf16_support, resolve_precision)
from vatt.model.summary import random_batch

CPU = torch.device("cpu")
PLAIN_AVX2 = CpuBf16Support(avx512_bf16=False, amx_tile=False)
FP32 = PrecisionChoice(torch.float32, "test")
BF16 = PrecisionChoice(torch.bfloat16, "test")


# --- the choice, by its inputs ---------------------------------------------------------------

@pytest.mark.parametrize("avx512_bf16, amx_tile, dtype", [
    (False, False, torch.float32),  # AVX2 only (e.g. this development machine): emulated bf16
    (True, False, torch.bfloat16),
    (False, True, torch.bfloat16),
    (True, True, torch.bfloat16),
])
def test_auto_on_the_cpu_is_bf16_only_with_avx512_bf16_or_amx(avx512_bf16, amx_tile, dtype):
    choice = choose_precision(Precision.auto, "cpu", CpuBf16Support(avx512_bf16, amx_tile))
    assert choice.dtype == dtype and not choice.emulated


def test_auto_on_a_plain_cpu_says_why_it_is_fp32():
    line = choose_precision("auto", "cpu", PLAIN_AVX2).describe()
    assert line == "precision: fp32 (this CPU has no avx512_bf16/AMX; bf16 would be emulated)"


def test_auto_on_cuda_is_bf16_whatever_the_cpu():
    assert choose_precision("auto", "cuda", PLAIN_AVX2).dtype == torch.bfloat16


def test_fp32_is_fp32_everywhere():
    for device_type in ("cpu", "cuda", "xla"):
        assert choose_precision("fp32", device_type, CpuBf16Support(True, True)).dtype == \
            torch.float32


def test_explicit_bf16_on_a_plain_cpu_runs_emulated_and_says_how_to_get_fp32():
    choice = choose_precision("bf16", "cpu", PLAIN_AVX2)
    assert choice.dtype == torch.bfloat16 and choice.emulated
    assert "emulated" in choice.reason and "train.precision=auto" in choice.reason


def test_explicit_bf16_on_a_device_without_bf16_autocast_names_the_key():
    with pytest.raises(ValueError, match="train.precision=bf16"):
        choose_precision("bf16", "xla", PLAIN_AVX2)
    assert choose_precision("auto", "xla", PLAIN_AVX2).dtype == torch.float32
    with pytest.raises(ConfigError, match="train.precision=bf16"):
        load_config("tiny", ["train.use_tpu=true", "train.num_workers=1", "train.precision=bf16"])


def test_this_machine_warns_only_when_bf16_is_emulated():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        choice = resolve_precision("bf16", CPU)
    assert choice.emulated == (not cpu_bf16_support().native)
    assert bool(caught) == choice.emulated


def test_the_run_logs_the_precision_its_workers_will_use():
    from vatt.train.pretrain import workers_precision

    gpu = workers_precision(load_config("tiny", ["train.use_gpu=true"]))
    assert gpu.describe() == "precision: bf16 (train.precision=auto, CUDA)"
    cpu = workers_precision(load_config("tiny"))
    assert cpu.dtype == (torch.bfloat16 if cpu_bf16_support().native else torch.float32)
    assert workers_precision(load_config("tiny", ["train.precision=fp32"])).describe() == \
        "precision: fp32 (train.precision=fp32)"


def test_precision_defaults_to_auto_and_an_old_train_bf16_names_it():
    cfg = load_config("tiny")
    assert cfg.train.precision is Precision.auto
    saved = to_dict(cfg)
    del saved["train"]["precision"]
    saved["train"]["bf16"] = True  # as written by runs before train.precision existed
    with pytest.raises(ConfigError, match=r"train\.bf16.*set train\.precision instead"):
        from_dict(saved)


# --- bf16 against fp32 on the tiny model -----------------------------------------------------

def tiny_training(overrides=(), batch_size=8):
    cfg = load_config("tiny", ["train.optim.warmup_steps=0", "train.optim.lr_peak=1e-3",
                               *overrides])
    model, train_model, optimizer = build_training(cfg, CPU)
    batch = random_batch(cfg, batch_size, generator=torch.Generator().manual_seed(0))
    return cfg, model, train_model, optimizer, batch


def forward_loss(cfg, model, batch, precision):
    torch.manual_seed(1)  # the same DropToken permutation in both precisions
    with autocast(precision, CPU):
        outputs = model(batch)
    return vatt_loss(outputs, batch["text_mask"], cfg.loss)["total"]


def test_bf16_forward_computes_in_bf16_and_its_loss_matches_fp32():
    cfg, model, _, _, batch = tiny_training()
    model.train()
    matmul_dtypes = []  # what the first attention projection of each tower computed in
    for backbone in model.backbones.values():
        backbone.transformer.blocks[0].attn.qkv.register_forward_hook(
            lambda module, args, out: matmul_dtypes.append(out.dtype))
    with torch.no_grad():
        fp32 = forward_loss(cfg, model, batch, FP32)
        assert set(matmul_dtypes) == {torch.float32}
        matmul_dtypes.clear()
        bf16 = forward_loss(cfg, model, batch, BF16)
        assert set(matmul_dtypes) == {torch.bfloat16} and len(matmul_dtypes) == 3
    # bf16 keeps 8 mantissa bits (relative rounding 2^-9 ~ 0.2% per op); through a few layers
    # and the 1/0.07 temperature the NCE logits move by ~1%, the loss by less (0.5% measured)
    assert bf16.dtype == torch.float32
    assert bf16.item() == pytest.approx(fp32.item(), rel=2e-2)


@pytest.mark.slow  # emulated bf16 on an AVX2 CPU: about 2 minutes
def test_bf16_training_lowers_the_loss_as_fp32_does():
    finals = {}
    for precision in (FP32, BF16):
        # 100 audio tokens instead of 400 (and 4 clips): emulated bf16 matmuls are ~20x fp32's
        cfg, _, train_model, optimizer, batch = tiny_training(["model.audio.patch_size=128"], 4)
        torch.manual_seed(2)
        curve = [float(train_step(cfg, train_model, optimizer, [batch], step, CPU,
                                  precision)[0]["total"]) for step in range(20)]
        # memorising one batch: the loss must fall clearly, not wander
        assert curve[-1] < 0.7 * curve[0], (precision.name, curve)
        finals[precision.name] = curve
    # same start; after 20 Adam steps bf16 rounding has moved the trajectory, not its course
    assert finals["bf16"][0] == pytest.approx(finals["fp32"][0], rel=2e-2)
    assert finals["bf16"][-1] == pytest.approx(finals["fp32"][-1], rel=0.15, abs=0.05)


def test_parameters_and_adam_state_stay_fp32_under_bf16():
    cfg, model, train_model, optimizer, batch = tiny_training(batch_size=4)
    train_step(cfg, train_model, optimizer, [batch], 0, CPU, BF16)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in model.parameters())
    assert all(v.dtype == torch.float32 for state in optimizer.state.values()
               for v in state.values() if torch.is_tensor(v) and v.is_floating_point())
    assert all(b.dtype == torch.float32 for name, b in model.named_buffers()
               if "running" in name)


# --- torch.compile ---------------------------------------------------------------------------

@pytest.mark.slow  # inductor compiles the forward and backward graphs: 1-3 minutes on 2 cores
def test_compiled_step_gives_the_eager_loss_gradients_and_update():
    # DropToken off: the compiled graph draws its random permutation from another generator
    no_drop = ["model.video.drop_rate=0", "model.audio.drop_rate=0"]
    runs = {}
    for compiled in (False, True):
        cfg, model, train_model, optimizer, batch = tiny_training(
            [*no_drop, f"train.compile={str(compiled).lower()}"])
        assert (train_model is not model) == compiled
        start = torch.cat([p.detach().flatten() for p in model.parameters()])
        losses = [float(train_step(cfg, train_model, optimizer, [batch], 0, CPU,
                                   FP32)[0]["total"])]
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        losses.append(float(train_step(cfg, train_model, optimizer, [batch], 1, CPU,
                                       FP32)[0]["total"]))
        update = torch.cat([p.detach().flatten() for p in model.parameters()]) - start
        runs[compiled] = losses, grads, update
    (eager_losses, eager_grads, eager_update) = runs[False]
    (compiled_losses, compiled_grads, compiled_update) = runs[True]

    def relative_error(got, want):
        return float((got - want).norm() / want.norm())

    # fp32 both; inductor fuses and reorders reductions, so equal up to float rounding (~1e-6
    # relative per op), not bit for bit: losses and gradients to 1e-4 relative
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-4)
    assert relative_error(compiled_grads, eager_grads) < 1e-4
    # Adam moves each weight by about lr whatever its gradient's size, so near-zero gradients
    # turn rounding into visible moves: the two-step update agrees to 1% of its norm
    assert relative_error(compiled_update, eager_update) < 1e-2
