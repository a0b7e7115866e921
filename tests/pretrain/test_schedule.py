import math

import pytest

from pretrain.schedule import cosine_schedule


def test_cosine_endpoints_and_length():
    lrs = cosine_schedule(0.125, epochs=3, iters_per_epoch=10)
    assert len(lrs) == 30
    assert lrs[0] == 0.125  # no warmup: starts at the base lr
    assert lrs[15] == pytest.approx(0.125 * 0.5 * (1 + math.cos(math.pi * 15 / 30)))
    assert all(a >= b for a, b in zip(lrs[:-1], lrs[1:], strict=True)) and lrs[-1] < 0.125 * 0.01


def test_warmup():
    lrs = cosine_schedule(1.0, epochs=4, iters_per_epoch=5, warmup_epochs=1)
    assert list(lrs[:5]) == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert lrs[5] == 1.0 and lrs[6] < 1.0
