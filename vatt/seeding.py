"""One seed for every random number generator a run draws from (python, numpy, torch): used by
training and by evaluation, so it lives in neither."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


__all__ = ["seed_everything"]
