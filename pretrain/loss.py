"""FastSiam loss, paper Eq. 4-5: each view's prediction regresses the mean projection of the other views.

    L(p_i) = -cos(p_i, stopgrad(1/K * sum_{j != i} z_j))                (Eq. 4, K = V - 1 target views)
    L_total = sum_{i=1..K+1} 1/(K+1) * L(p_i)                            (Eq. 5)

With V = 2 the target of view 1 is z_2 and vice versa, so this is SimSiam's symmetric loss
-(cos(p1, z2) + cos(p2, z1)) / 2, bit for bit: one code path runs FastSiam and the SimSiam baseline.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def fastsiam_loss(p: Sequence[torch.Tensor], z: Sequence[torch.Tensor]) -> torch.Tensor:
    """p[i], z[i]: N x D prediction and projection of view i. Returns the scalar loss (minimum -1).

    The stop-gradient lives here: no gradient ever flows into z. Computed in float32 under autocast.
    """
    num_views = len(p)
    assert num_views == len(z) >= 2, "need at least two views"
    z = [zi.detach().float() for zi in z]
    loss = p[0].new_zeros((), dtype=torch.float32)
    for i in range(num_views):
        # mean of the other views' projections; stacking keeps V=2 exact (the mean of one tensor is itself)
        target = torch.stack([z[j] for j in range(num_views) if j != i]).mean(dim=0)  # N x D
        loss = loss - F.cosine_similarity(p[i].float(), target, dim=-1).mean()
    return loss / num_views
