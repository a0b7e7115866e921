"""fastsiam_loss: Eq. 4-5 against an independent formula, SimSiam at V=2, the stop-gradient, descent."""
import math

import pytest
import torch

from pretrain.loss import fastsiam_loss


def eq5_reference(p, z):
    """Eq. 5 written out with explicit Python loops (no code shared with the implementation)."""
    v, n = len(p), p[0].shape[0]
    total = 0.0
    for i in range(v):
        per_sample = 0.0
        for s in range(n):
            dims = range(p[i].shape[1])
            target = [sum(float(z[j][s, d]) for j in range(v) if j != i) / (v - 1) for d in dims]
            pi = [float(x) for x in p[i][s]]
            dot = sum(a * b for a, b in zip(pi, target, strict=True))
            norm = math.sqrt(sum(a * a for a in pi)) * math.sqrt(sum(b * b for b in target))
            per_sample += -dot / norm
        total += per_sample / n / v
    return total


@pytest.mark.parametrize("num_views", [2, 3, 4, 5])
def test_matches_eq5(num_views):
    g = torch.Generator().manual_seed(num_views)
    p = [torch.randn(6, 8, generator=g, dtype=torch.float64) for _ in range(num_views)]
    z = [torch.randn(6, 8, generator=g, dtype=torch.float64) for _ in range(num_views)]
    assert fastsiam_loss(p, z).item() == pytest.approx(eq5_reference(p, z), abs=1e-6)


def test_two_views_is_simsiam_exactly():
    g = torch.Generator().manual_seed(0)
    p1, p2, z1, z2 = (torch.randn(32, 128, generator=g) for _ in range(4))
    cos = torch.nn.functional.cosine_similarity
    simsiam = -(cos(p1, z2.detach(), dim=-1).mean() + cos(p2, z1.detach(), dim=-1).mean()) * 0.5
    assert torch.equal(fastsiam_loss([p1, p2], [z1, z2]), simsiam)


def test_no_gradient_into_z():
    g = torch.Generator().manual_seed(1)
    p = [torch.randn(4, 16, generator=g, requires_grad=True) for _ in range(4)]
    z = [torch.randn(4, 16, generator=g, requires_grad=True) for _ in range(4)]
    fastsiam_loss(p, z).backward()
    assert all(zi.grad is None for zi in z)
    assert all(pi.grad is not None and pi.grad.abs().sum() > 0 for pi in p)


def test_minimum_and_descent():
    z = [torch.randn(8, 16) for _ in range(4)]
    targets = [torch.stack([z[j] for j in range(4) if j != i]).mean(0) for i in range(4)]
    assert fastsiam_loss(targets, z).item() == pytest.approx(-1.0, abs=1e-6)  # p_i = its target: minimum -1
    p = [torch.randn(8, 16, requires_grad=True) for _ in range(4)]
    opt = torch.optim.SGD(p, lr=50.0)  # the gradient is divided by N*V and |p|: a large step
    losses = []
    for _ in range(20):
        loss = fastsiam_loss(p, z)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.3 and losses[-1] < -0.5
