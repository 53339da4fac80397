"""Whether this process is one of several torch.distributed workers: the losses gather negatives
from all of them, the heads' BatchNorm and DDP span them."""

from __future__ import annotations

import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


__all__ = ["is_distributed"]
