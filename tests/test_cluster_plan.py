"""The plan before the spend (vatt.cluster.plan): accelerators and hosts read from the rendered
RayJob, training FLOPs, and the expected wall time at cluster.plan_mfu of the accelerator's
dense bf16 peak, checked by hand; `vatt submit --dry-run` keeps stdout valid YAML. No server:
rendering runs `kubectl kustomize` on the project's k8s/.
"""

from __future__ import annotations

import copy
import subprocess
from dataclasses import replace as dc_replace

import pytest
import yaml

from conftest import REPO_ROOT, vatt_command
from vatt.cluster.plan import dense_bf16_peak, plan_for
from vatt.cluster.render import render_job
from vatt.config import ConfigError, load_config

S3_PATHS = ["train.storage_path=s3://vatt-data/runs", "data.path=s3://vatt-data/data"]


def _rendered(preset: str, accelerator: str, *overrides: str):
    return render_job(load_config(preset, [*S3_PATHS, "train.run_name=plan",
                                           f"cluster.manifests={REPO_ROOT / 'k8s'}",
                                           f"cluster.accelerator={accelerator}", *overrides]))


def _encoder(tokens: int, layers: int, d: int, d_ff: int) -> int:
    """Forward FLOPs of a pre-LN Transformer as the hardware computes them (2 per multiply-add):
    QKV and output projections 4d^2 and the MLP 2*d*d_ff per token, the two attention products
    4*N^2*d per layer (the spec's section 8 counts them at half that: the paper's convention)."""
    return 2 * tokens * layers * (4 * d * d + 2 * d * d_ff) + 4 * layers * tokens ** 2 * d


def test_mbs_on_a_v6e_4x4_slice_by_hand():
    plan = plan_for(_rendered("mbs", "tpu"))
    # the slice of k8s/overlays/tpu: 1 slice of 4 hosts, 4 chips each
    assert (plan.accelerator, plan.topology) == ("tpu-v6e-slice", "4x4")
    assert (plan.chips, plan.hosts, plan.per_host, plan.workers) == (16, 4, 4, 4)
    assert (plan.global_batch, plan.steps) == (2048, 500_000)  # spec section 7
    # mbs at the spec's input, DropToken 50%: video 8x14x14 = 1,568 patches keep 784, audio
    # 1,200 keep 600, plus the AGG token; text 16 tokens + AGG, 5 captions per clip
    transformers = (_encoder(784 + 1, 12, 1024, 4096)  # Medium video
                    + _encoder(600 + 1, 12, 768, 3072)  # Base audio
                    + 5 * _encoder(16 + 1, 6, 512, 2048))  # Small text, per caption
    # patch embeddings (4x16x16x3 = 3,072 and 128 values per patch) run on every patch, before
    # DropToken; the text's Linear(300 -> 512) on each token of each caption
    embeddings = 2 * 1568 * 3072 * 1024 + 2 * 1200 * 128 * 768 + 5 * 2 * 17 * 300 * 512
    # backward is twice a forward where the input needs a gradient too (every Transformer);
    # the embeddings' inputs (pixels, samples, frozen word vectors) need none: once
    by_hand = 3 * transformers + 2 * embeddings
    assert plan.flops_per_clip == pytest.approx(by_hand, rel=1e-3)  # the heads: the rest
    total = by_hand * 2048 * 500_000
    hours = total / (16 * 918e12 * 0.35) / 3600  # v6e: 918 TFLOP/s dense bf16 per chip
    assert plan.wall_s / 3600 == pytest.approx(hours, rel=1e-3)
    assert plan.accelerator_hours == pytest.approx(16 * hours, rel=1e-3)
    text = "\n".join(plan.lines())
    assert "16 x tpu-v6e-slice, topology 4x4: 918 TFLOP/s dense bf16 each (TPU v6e)" in text
    assert f"{hours:,.1f} h" in text and "at 35% of the peak (cluster.plan_mfu)" in text
    assert f"{16 * hours:,.0f} chip-hours" in text


def test_gpu_overlay_two_h100s_at_a_configured_utilisation():
    plan = plan_for(_rendered("tiny", "gpu", "cluster.plan_mfu=0.5"))
    assert (plan.accelerator, plan.resource) == ("nvidia-h100-80gb", "nvidia.com/gpu")
    assert (plan.chips, plan.hosts, plan.per_host, plan.workers) == (2, 2, 1, 2)
    total = plan.flops_per_clip * plan.global_batch * plan.steps
    seconds = total / (2 * 989e12 * 0.5)  # H100 SXM: 989 TFLOP/s dense bf16
    assert plan.wall_s == pytest.approx(seconds)
    assert plan.accelerator_hours == pytest.approx(2 * seconds / 3600)
    text = "\n".join(plan.lines())
    assert "2 x nvidia-h100-80gb: 989 TFLOP/s dense bf16 each (H100)" in text
    assert "at 50% of the peak" in text and "GPU-hours" in text


def test_an_unknown_accelerator_says_what_to_set():
    rendered = _rendered("tiny", "gpu")
    documents = copy.deepcopy(rendered.documents)
    worker = next(d for d in documents if d["kind"] == "RayJob")["spec"]["rayClusterSpec"][
        "workerGroupSpecs"][0]["template"]["spec"]
    worker["nodeSelector"]["cloud.google.com/gke-accelerator"] = "nvidia-tesla-t4"  # no bf16
    plan = plan_for(dc_replace(rendered, documents=documents))
    assert plan.wall_s is None and plan.accelerator_hours is None
    text = "\n".join(plan.lines())
    assert ("peak unknown for 'nvidia-tesla-t4': set cluster.plan_peak_tflops=<dense bf16 "
            "TFLOP/s of one accelerator>") in text
    assert "hours" not in text  # nothing invented
    # the override replaces the table, for any accelerator
    cfg = dc_replace(rendered.config, cluster=dc_replace(rendered.config.cluster,
                                                         plan_peak_tflops=65.0))
    plan = plan_for(dc_replace(rendered, documents=documents, config=cfg))
    assert plan.wall_s == pytest.approx(plan.total_flops / (2 * 65e12 * 0.35))
    assert "65 TFLOP/s dense bf16 each (cluster.plan_peak_tflops)" in "\n".join(plan.lines())
    # CPU worker pods have no table entry either
    cpu = plan_for(_rendered("tiny", "cpu"))
    assert cpu.chips == 0 and cpu.wall_s is None
    assert "of one CPU worker pod" in "\n".join(cpu.lines())
    for wrong in ("cluster.plan_mfu=1.5", "cluster.plan_mfu=0", "cluster.plan_peak_tflops=0"):
        with pytest.raises(ConfigError, match="cluster.plan_mfu=.* must be in \\(0, 1\\]"):
            load_config("tiny", [wrong])


@pytest.mark.parametrize("name, expected", [
    ("NVIDIA H100 80GB HBM3", ("H100", 989.0)),  # torch.cuda.get_device_name (gpu_step.py)
    ("NVIDIA H100 PCIe", ("H100 PCIe", 756.0)), ("NVIDIA L40S", ("L40S", 362.0)),
    ("NVIDIA-A100-SXM4-80GB", ("A100", 312.0)),  # the nvidia.com/gpu.product label
    ("nvidia-l4", ("L4", 121.0)), ("tpu-v5p-slice", ("TPU v5p", 459.0)),
    ("tpu-v5-lite-podslice", ("TPU v5e", 197.0)), ("TPU-V6E", ("TPU v6e", 918.0)),
    ("nvidia-tesla-t4", None), ("cpu", None)])
def test_dense_bf16_peaks_by_every_name_an_accelerator_goes_by(name, expected):
    assert dense_bf16_peak(name) == expected


def test_submit_dry_run_prints_the_plan_to_stderr_and_yaml_to_stdout():
    # as the README shows it: from the project folder, the default cluster.manifests=k8s
    done = subprocess.run([*vatt_command(), "submit", "--target", "tpu", "--dry-run",
                           "--preset", "mbs", "train.run_name=dry", *S3_PATHS],
                          cwd=REPO_ROOT, text=True, capture_output=True)
    assert done.returncode == 0, done.stderr
    kinds = [doc["kind"] for doc in yaml.safe_load_all(done.stdout) if doc]
    assert kinds.count("RayJob") == 1
    assert "plan for rayjob dry (preset mbs, overlay tpu):" in done.stderr
    assert "16 x tpu-v6e-slice" in done.stderr and "chip-hours" in done.stderr
    assert "plan for" not in done.stdout
