"""Per-iteration learning-rate schedule: optional linear warmup, then cosine decay to 0 (SimSiam's cosine,
applied per iteration as moco-v3 does rather than once per epoch).
"""
from __future__ import annotations

import math

import numpy as np


def cosine_schedule(base_lr: float, epochs: int, iters_per_epoch: int,
                    warmup_epochs: float = 0.0) -> np.ndarray:
    """lr for every global iteration 0 .. epochs*iters_per_epoch - 1.

    1) warmup: linear from base_lr/warmup_iters up to base_lr;
    2) cosine: base_lr * 0.5 * (1 + cos(pi * t / T)) over the remaining T iterations, so the first iteration
       after warmup runs at base_lr.
    """
    total = epochs * iters_per_epoch
    warmup = min(int(round(warmup_epochs * iters_per_epoch)), total)
    lrs = np.empty(total, dtype=np.float64)
    for it in range(warmup):
        lrs[it] = base_lr * (it + 1) / warmup
    decay = total - warmup
    for t in range(decay):
        lrs[warmup + t] = base_lr * 0.5 * (1.0 + math.cos(math.pi * t / decay))
    return lrs
