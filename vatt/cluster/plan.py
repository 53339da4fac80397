"""The plan before the spend: what a rendered RayJob will use and cost, before it is created.

`vatt submit` (to stderr with --dry-run, so stdout stays YAML) and the flows' cluster runs
(`pretrain_on_cluster`, as log lines) print it: accelerators and hosts read from the rendered
RayJob, the global batch and steps of the shipped config, the training FLOPs, and the expected
wall time and accelerator-hours

    training FLOPs = FLOPs per clip x train.global_batch_size x train.optim.total_steps
    wall time      = training FLOPs / (accelerators x dense bf16 peak x cluster.plan_mfu)

FLOPs per clip are the benchmarks' count (vatt.model.flops.training_flops_per_clip: forward +
backward on the meta device, attention included, DropToken's kept tokens); the optimiser step,
validation and data loading are not counted. The peak comes from the overlay's node selector
(GKE's accelerator label) or train.tpu_accelerator_type, looked up in DENSE_BF16_PEAK_TFLOPS;
cluster.plan_peak_tflops replaces it (an accelerator not in the table, or CPU worker pods).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from vatt.cluster.render import RenderedJob

# Dense (no sparsity) bf16 peak per accelerator, TFLOP/s, from the vendors' data sheets. NVIDIA
# (nvidia.com/en-us/data-center/<h100|h200|a100|l4>/) lists bf16 "with sparsity", twice the
# dense figure: H100 SXM 1,979 -> 989, H100 PCIe 1,513 -> 756, H200 1,979 -> 989, A100 624 -> 312,
# L4 242 -> 121. Google (cloud.google.com/tpu/docs/<v6e|v5p|v5e|v4>) lists "peak compute per chip
# (bf16)", dense: v6e 918, v5p 459, v5e 197, v4 275. A name matches the first key it contains
# (case-insensitive), so longer keys come first; benchmarks/gpu_step.py matches CUDA's names.
DENSE_BF16_PEAK_TFLOPS = {
    "GB200": 2500.0, "B200": 2250.0, "H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0,
    "H800": 989.0, "A100": 312.0, "A800": 312.0, "L40S": 362.0, "L40": 181.0, "L4": 121.0,
    "A10G": 70.0, "A10": 125.0, "RTX 4090": 165.0, "RTX 6000 Ada": 364.0,
    "TPU v6e": 918.0, "TPU v5p": 459.0, "TPU v5e": 197.0, "TPU v4": 275.0,
}
# names an overlay uses that do not contain a key above: GKE's node labels
# (cloud.google.com/gke-accelerator, cloud.google.com/gke-tpu-accelerator) and Ray's TPU types
# (train.tpu_accelerator_type)
ACCELERATOR_NAMES = {
    "nvidia-h100-mega-80gb": "H100", "nvidia-h100-80gb": "H100", "nvidia-h200-141gb": "H200",
    "nvidia-a100-80gb": "A100", "nvidia-tesla-a100": "A100", "nvidia-l4": "L4",
    "nvidia-b200": "B200", "nvidia-gb200": "GB200",
    "tpu-v6e-slice": "TPU v6e", "tpu-v5p-slice": "TPU v5p", "tpu-v5-lite-podslice": "TPU v5e",
    "tpu-v5-lite-device": "TPU v5e", "tpu-v4-podslice": "TPU v4",
    "TPU-V6E": "TPU v6e", "TPU-V5P": "TPU v5p", "TPU-V5LITEPOD": "TPU v5e", "TPU-V4": "TPU v4",
}
GPU_RESOURCE, TPU_RESOURCE = "nvidia.com/gpu", "google.com/tpu"
# where a worker pod names its accelerator, by resource; the first label found wins
SELECTOR_LABELS = {GPU_RESOURCE: ("cloud.google.com/gke-accelerator", "nvidia.com/gpu.product"),
                   TPU_RESOURCE: ("cloud.google.com/gke-tpu-accelerator",)}


def dense_bf16_peak(name: str) -> Optional[tuple[str, float]]:
    """(product, TFLOP/s) of an accelerator named by a GKE label, a Ray TPU type or a product
    name such as CUDA's "NVIDIA H100 80GB HBM3"; None when the table has no such accelerator."""
    product = ACCELERATOR_NAMES.get(name)
    if product is not None:
        return product, DENSE_BF16_PEAK_TFLOPS[product]
    spaced = name.replace("-", " ").lower()
    for key, tflops in DENSE_BF16_PEAK_TFLOPS.items():
        if key.lower() in spaced:
            return key, tflops
    return None


@dataclass(frozen=True)
class Plan:
    job: str  # the RayJob's name
    preset: str
    overlay: str  # cluster.accelerator: the k8s/overlays folder
    accelerator: str  # as the overlay names it (node selector, TPU type); "cpu" for CPU pods
    resource: Optional[str]  # nvidia.com/gpu or google.com/tpu; None: CPU worker pods
    chips: int  # accelerators in all worker pods (0: CPU worker pods)
    hosts: int  # worker pods (a TPU slice: one per TPU VM host)
    per_host: int  # accelerators per worker pod
    topology: Optional[str]  # a TPU slice's, e.g. "4x4"
    workers: int  # train.num_workers (Ray Train workers)
    global_batch: int  # clips per optimiser step, all workers together
    steps: int  # train.optim.total_steps
    flops_per_clip: int  # training (forward + backward), attention included
    drop_rates: tuple[float, float]  # DropToken's video and audio drop rates
    peak_tflops: Optional[float]  # dense bf16 per unit (chip, or CPU pod); None: unknown
    peak_source: str  # the product the peak is of, or what to set when it is unknown
    mfu: float  # cluster.plan_mfu: the share of the peak assumed reached

    @property
    def units(self) -> int:
        """What the peak is per: accelerators, or worker pods where there are none."""
        return self.chips or self.hosts

    @property
    def total_flops(self) -> int:
        return self.flops_per_clip * self.global_batch * self.steps

    @property
    def wall_s(self) -> Optional[float]:
        if self.peak_tflops is None:
            return None
        return self.total_flops / (self.units * self.peak_tflops * 1e12 * self.mfu)

    @property
    def accelerator_hours(self) -> Optional[float]:
        wall_s = self.wall_s
        return None if wall_s is None else wall_s / 3600 * self.units

    def lines(self) -> list[str]:
        """A small table, one line per fact, for the console or a log."""
        unit = "chip" if self.resource == TPU_RESOURCE else "GPU" if self.resource else "pod"
        peak = (f"{self.peak_tflops:g} TFLOP/s dense bf16 each ({self.peak_source})"
                if self.peak_tflops is not None else "peak unknown")
        topology = f", topology {self.topology}" if self.topology else ""
        if self.chips:
            accelerators = f"{self.chips} x {self.accelerator}{topology}: {peak}"
            hosts = f"{self.hosts} worker pods x {self.per_host} {self.resource}"
        else:
            accelerators = f"none (CPU worker pods): {peak}"
            hosts = f"{self.hosts} worker pods"
        rows = [
            ("accelerators", accelerators),
            ("hosts", f"{hosts}; Ray Train workers: {self.workers}"),
            ("global batch", (f"{self.global_batch:,} clips "
                              f"({self.global_batch // max(self.workers, 1):,} per worker)")),
            ("steps", f"{self.steps:,} (train.optim.total_steps)"),
            ("training FLOPs", (f"{self.total_flops:.3g} = {self.flops_per_clip / 1e12:.3g} "
                                f"TFLOP per clip x {self.global_batch:,} clips x "
                                f"{self.steps:,} steps")),
            ("", (f"(forward + backward, attention included, DropToken video "
                  f"{self.drop_rates[0]:.0%} / audio {self.drop_rates[1]:.0%})")),
        ]
        if self.wall_s is None:
            rows.append(("wall time", self.peak_source))
        else:
            rows.append(("wall time", (f"{_duration(self.wall_s)} at {self.mfu:.0%} of the peak "
                                       "(cluster.plan_mfu)")))
            rows.append(("accelerator-h", f"{self.accelerator_hours:,.0f} {unit}-hours"))
        width = max(len(key) for key, _ in rows)
        return ([f"plan for rayjob {self.job} (preset {self.preset}, overlay {self.overlay}):"]
                + [f"  {key:<{width}}  {value}" for key, value in rows])


def _duration(seconds: float) -> str:
    hours = seconds / 3600
    if hours < 1:
        return f"{seconds / 60:.1f} min"
    return f"{hours:,.1f} h" + (f" ({hours / 24:.1f} days)" if hours >= 48 else "")


def _worker_groups(rendered: RenderedJob) -> list[dict[str, Any]]:
    return rendered.rayjob["spec"]["rayClusterSpec"].get("workerGroupSpecs") or []


def plan_for(rendered: RenderedJob) -> Plan:
    """The plan of a rendered RayJob: hardware from its worker groups, the rest from its
    config (the run's, with the overlay's hardware settings applied)."""
    from vatt.model.flops import training_flops_per_clip  # torch: only when a plan is made

    cfg = rendered.config
    chips = hosts = per_host = 0
    names: list[str] = []
    resource: Optional[str] = None
    topology = cfg.train.tpu_topology
    for group in _worker_groups(rendered):
        pods = int(group.get("replicas", 1)) * int(group.get("numOfHosts", 1))
        pod = group["template"]["spec"]
        limits = pod["containers"][0].get("resources", {}).get("limits", {})
        selector = pod.get("nodeSelector") or {}
        hosts += pods
        for name in (GPU_RESOURCE, TPU_RESOURCE):
            if name in limits:
                resource, per_host = name, int(limits[name])
                chips += pods * per_host
                label = next((selector[key] for key in SELECTOR_LABELS[name] if key in selector),
                             None)
                if label is None and name == TPU_RESOURCE:
                    label = cfg.train.tpu_accelerator_type
                names.append(label or f"{name} (no accelerator named by the node selector)")
                topology = selector.get("cloud.google.com/gke-tpu-topology", topology)
    accelerator = " + ".join(dict.fromkeys(names)) or "cpu"
    known = dense_bf16_peak(accelerator) if len(set(names)) == 1 else None
    if cfg.cluster.plan_peak_tflops is not None:
        peak, source = cfg.cluster.plan_peak_tflops, "cluster.plan_peak_tflops"
    elif known is not None:
        source, peak = known
    else:
        peak = None
        per = "accelerator" if chips else "CPU worker pod"
        source = (f"peak unknown for '{accelerator}': set cluster.plan_peak_tflops=<dense bf16 "
                  f"TFLOP/s of one {per}> (vatt.cluster.plan lists the known accelerators)")
    return Plan(
        job=rendered.name, preset=cfg.name, overlay=cfg.cluster.accelerator.value,
        accelerator=accelerator, resource=resource, chips=chips, hosts=hosts, per_host=per_host,
        topology=topology if resource == TPU_RESOURCE else None, workers=cfg.train.num_workers,
        global_batch=cfg.train.global_batch_size, steps=cfg.train.optim.total_steps,
        flops_per_clip=training_flops_per_clip(cfg),
        drop_rates=(cfg.model.video.drop_rate, cfg.model.audio.drop_rate),
        peak_tflops=peak, peak_source=source, mfu=cfg.cluster.plan_mfu)


__all__ = ["ACCELERATOR_NAMES", "DENSE_BF16_PEAK_TFLOPS", "Plan", "dense_bf16_peak", "plan_for"]
