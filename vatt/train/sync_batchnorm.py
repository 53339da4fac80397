"""BatchNorm over the global batch in distributed training.

On GPU the heads' BatchNorm1d become `nn.SyncBatchNorm`. PyTorch's SyncBatchNorm refuses CPU
tensors, so CPU (gloo) training uses `GlobalBatchNorm1d`: the same statistics (mean and variance
over every worker's batch, one autograd-aware all-reduce per layer), written for (N, C) inputs.
"""

from __future__ import annotations

import torch
from torch import nn

from vatt.distributed import is_distributed


class GlobalBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d for (N, C) inputs whose training statistics span all workers."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_distributed()):
            return super().forward(x)
        if x.dim() != 2:
            raise ValueError(f"GlobalBatchNorm1d expects (N, C) inputs, got shape {tuple(x.shape)}")
        from torch.distributed.nn.functional import all_reduce

        # statistics in fp32 under bf16 autocast: E[x^2] - E[x]^2 cancels badly in 8 mantissa bits
        x = x.float()
        count = torch.full((1,), float(x.shape[0]), device=x.device, dtype=x.dtype)
        # one all-reduce of [sum, sum of squares, count]; gradients flow back to every worker
        packed = all_reduce(torch.cat([x.sum(0), (x * x).sum(0), count]))  # (2C + 1,)
        channels = x.shape[1]
        total = packed[-1]
        mean = packed[:channels] / total  # (C,)
        var = (packed[channels:2 * channels] / total - mean * mean).clamp_min(0.0)  # biased, (C,)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                momentum = 0.1 if self.momentum is None else self.momentum
                unbiased = var * total / (total - 1).clamp_min(1.0)
                self.running_mean.lerp_(mean.detach(), momentum)
                self.running_var.lerp_(unbiased.detach(), momentum)
                self.num_batches_tracked += 1
        y = (x - mean) * torch.rsqrt(var + self.eps)  # (N, C)
        if self.affine:
            y = y * self.weight + self.bias
        return y


def convert_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm1d in `module` -> a global-batch BatchNorm for `device` (state kept)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if type(module) is nn.BatchNorm1d:
        converted = GlobalBatchNorm1d(module.num_features, module.eps, module.momentum,
                                      module.affine, module.track_running_stats)
        converted.load_state_dict(module.state_dict())
        return converted
    for name, child in module.named_children():
        module.add_module(name, convert_batchnorm(child, device))
    return module
