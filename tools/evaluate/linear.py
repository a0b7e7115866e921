"""Linear probe on frozen features: the standard SSL linear evaluation, trained on cached features.

The protocol of the papers trains only a linear classifier on the frozen, global-average-pooled backbone
output, with weight decay 0 and a fixed schedule, and reports top-1/top-5 on the val images after the last
epoch (no model selection on val here):
- SimSiam (paper, Appendix A): LARS, base lr 0.02 with lr = base lr x b/256, batch b = 4096, cosine decay,
  90 epochs, weight decay 0, momentum 0.9; SGD with lr 30 at batch 256 is reported about 1% lower. Its
  main_lincls.py defaults to --lr 0.1 --batch-size 4096 (apex LARC, trust 0.001), fc ~ N(0, 0.01), bias 0;
- MoCo v2 (moco main_lincls.py): SGD momentum 0.9, lr 30, batch 256, 100 epochs (lr x0.1 at 60 and 80), wd 0.

Both augment every epoch (RandomResizedCrop + flip) and push the images through the backbone each time. This
probe is the **cached-features variant**: each image is featurised once with the centre-crop val transform
(features.py) and the classifier is trained on those fixed vectors, so an ImageNet epoch is one pass over a
1.28M x 2048 matrix instead of 1.28M forward passes, and the result is deterministic. Expect it to read
somewhat below the augmented protocol (no augmentation: the classifier sees one view per image); compare
numbers only within one variant.

Defaults (chosen for cached features; docs/evaluate.md): the features are standardised with the train set's
per-dimension mean and std and divided by sqrt(D), a fixed BatchNorm-free affine map in front of the
classifier (MAE's probe puts BatchNorm1d(affine=False) there). Every input then has unit expected squared
norm, so one lr fits every checkpoint and width, where raw features need MoCo's lr 30 for MoCo and far less
for a supervised network. Then SGD momentum 0.9, weight decay 0, cosine decay per iteration, 100 epochs,
lr = base_lr x batch_size / 256 (SimSiam's rule) with base_lr 3.0 at batch 256. On random-init ResNet-18
CIFAR-10 features (10k train, 2k val, 100 epochs) base_lr 1, 3 and 10 land within 0.5 point of each other and
30 overshoots in the first epochs, as does base_lr 10 at batch 1024 (lr 40): for large batches keep the
lr itself below ~20 or use `optimizer="lars"`, MoCo v3's LARS (moco/optimizer.py; trust 0.001, bias
excluded), for SimSiam's large-batch setting (base_lr 0.1, batch 4096, 90 epochs). LARS moves each weight
by about lr x 0.001 of its norm per step, so it needs the many steps of a large set (ImageNet: 28k) and
undertrains a small one.
Seeded and deterministic on the CPU: the init and each epoch's order come from (seed, epoch).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pretrain.data import generator
from pretrain.schedule import cosine_schedule
from tools.evaluate import EvalError


@dataclass
class ProbeConfig:
    epochs: int = 100
    batch_size: int = 256
    base_lr: float = 3.0  # per 256 images, on standardised features: lr = base_lr * batch_size / 256
    optimizer: str = "sgd"  # sgd | lars
    momentum: float = 0.9
    weight_decay: float = 0.0
    standardize: bool = True
    seed: int = 0

    @property
    def lr(self) -> float:
        return self.base_lr * self.batch_size / 256

    def to_dict(self) -> dict:
        return asdict(self) | {"lr": self.lr, "lr_rule": "base_lr * batch_size / 256", "schedule": "cosine"}


class LARS(torch.optim.Optimizer):
    """LARS, as moco-v3 moco/optimizer.py (SimSiam used apex's LARC): each weight matrix's update is scaled by
    trust * |w| / |g|; 1-d parameters (the bias) take the plain momentum step."""

    def __init__(self, params, lr: float, weight_decay: float = 0.0, momentum: float = 0.9,
                 trust_coefficient: float = 0.001):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum,
                                      trust_coefficient=trust_coefficient))

    @torch.no_grad()
    def step(self):
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                dp = p.grad
                if p.ndim > 1:
                    dp = dp.add(p, alpha=g["weight_decay"])
                    p_norm, d_norm = torch.norm(p), torch.norm(dp)
                    one = torch.ones_like(p_norm)
                    ratio = torch.where(d_norm > 0, g["trust_coefficient"] * p_norm / d_norm, one)
                    q = torch.where(p_norm > 0, ratio, one)
                    dp = dp.mul(q)
                mu = self.state[p].setdefault("mu", torch.zeros_like(p))
                mu.mul_(g["momentum"]).add_(dp)
                p.add_(mu, alpha=-g["lr"])


class Probe(nn.Module):
    """(x - mean) / std, then one linear layer: D -> C. mean 0 / std 1 when standardisation is off."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc((x.float() - self.mean) / self.std)  # N x C


def _moments(x: Tensor, chunk: int = 65536) -> tuple[Tensor, Tensor]:
    """Per-dimension mean and std of N x D features in float64 chunks (fp16 caches, ImageNet-size N)."""
    s = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    s2 = torch.zeros_like(s)
    for c in x.split(chunk):
        c = c.double()
        s += c.sum(0)
        s2 += (c * c).sum(0)
    mean = s / len(x)
    var = (s2 / len(x) - mean * mean).clamp_min(0)
    return mean.float(), var.sqrt().float().clamp_min(1e-6)  # a dead (constant) unit stays 0, not NaN


def train_probe(x: Tensor, y: Tensor, num_classes: int, cfg: ProbeConfig,
                device: torch.device) -> tuple[Probe, list[float]]:
    """The trained probe (eval mode, on `device`) and the mean training loss of every epoch.

    x: N x D train features (any float dtype, CPU or `device`), y: int64 N. The features are moved to
    `device` once, in their cached dtype, and each batch is gathered and cast to float32 there."""
    if cfg.optimizer not in ("sgd", "lars"):
        raise EvalError(f"--linear-optimizer must be sgd or lars, not {cfg.optimizer!r}")
    x, y = x.to(device), y.to(device)
    probe = Probe(x.shape[1], num_classes).to(device)
    g = generator(cfg.seed, 2**31)  # init stream, apart from every epoch's order stream
    with torch.no_grad():  # SimSiam/MoCo main_lincls: fc.weight ~ N(0, 0.01), bias 0
        probe.fc.weight.copy_(torch.randn(probe.fc.weight.shape, generator=g) * 0.01)
        probe.fc.bias.zero_()
        if cfg.standardize:
            mean, std = _moments(x)
            # x' = (x - mean) / (std * sqrt(D)): unit variance per dimension and unit expected squared norm,
            # so that one lr fits 512-d (ResNet-18) and 2048-d (ResNet-50) features alike
            probe.mean, probe.std = mean, std * math.sqrt(x.shape[1])
    params = list(probe.fc.parameters())
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    else:
        opt = LARS(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    iters = math.ceil(len(x) / cfg.batch_size)  # no drop_last: every image counts once per epoch
    lrs = cosine_schedule(cfg.lr, cfg.epochs, iters)
    losses = []
    for epoch in range(cfg.epochs):
        order = torch.randperm(len(x), generator=generator(cfg.seed, epoch)).to(device)
        total = torch.zeros((), device=device)
        for it, idx in enumerate(order.split(cfg.batch_size)):
            for group in opt.param_groups:
                group["lr"] = float(lrs[epoch * iters + it])
            loss = F.cross_entropy(probe(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach() * len(idx)
        losses.append(total.item() / len(x))  # one sync per epoch, not per step
        if not math.isfinite(losses[-1]):
            raise EvalError(f"linear probe diverged in epoch {epoch + 1} (loss {losses[-1]}): "
                            "lower --linear-lr")
    return probe.eval(), losses


@torch.no_grad()
def probe_scores(probe: Probe, x: Tensor, chunk: int = 65536) -> Tensor:
    """Class scores N x C (float32, on the probe's device) of features x."""
    device = probe.fc.weight.device
    return torch.cat([probe(c.to(device)) for c in x.split(chunk)])
