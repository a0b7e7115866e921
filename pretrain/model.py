"""SimSiam/FastSiam's Siamese network: ResNet backbone + projector + predictor; forward gives (p, z) per view.

SimSiam (Chen & He, 2021), Sec. 3: "The projection MLP (in f) has BN applied to each fully-connected (fc)
layer, including its output fc. Its output fc has no ReLU. The hidden fc is 2048-d. This MLP has 3 layers. The
prediction MLP (h) has BN applied to its hidden fc layers. Its output fc does not have BN or ReLU. This MLP
has 2 layers." FastSiam keeps the network and changes only the target (pretrain/loss.py). The 2048-d hidden
fc is ResNet-50's feature width: SimSiam's code sizes it by the backbone (512-d for ResNet-18, `projector`).

BatchNorm over views (a deliberate choice): with bn_mode="per_view" (default) every view is its own forward
pass, so BN statistics are computed per view as in SimSiam's `forward(x1, x2)` and lightly's FastSiam example;
with bn_mode="joint" all V views go through as one batch of V*N (fewer, larger kernels; BN statistics over all
views).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torchvision


def projector(feat_dim: int, dim: int) -> nn.Sequential:
    """feat_dim -> feat_dim -> feat_dim -> dim, as SimSiam's builder (facebookresearch/simsiam,
    simsiam/builder.py): its two hidden fc layers are `prev_dim` wide, the backbone's feature width
    (`encoder.fc.weight.shape[1]`), and only the output fc is `dim`. ResNet-50: 2048-2048-2048-2048;
    ResNet-18/34: 512-512-512-dim."""
    # no bias before BN: it would be cancelled by the BN mean (SimSiam freezes that bias, fc[6], instead)
    return nn.Sequential(
        nn.Linear(feat_dim, feat_dim, bias=False), nn.BatchNorm1d(feat_dim), nn.ReLU(inplace=True),
        nn.Linear(feat_dim, feat_dim, bias=False), nn.BatchNorm1d(feat_dim), nn.ReLU(inplace=True),
        nn.Linear(feat_dim, dim, bias=False), nn.BatchNorm1d(dim, affine=False),
    )


def predictor(dim: int, pred_dim: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(dim, pred_dim, bias=False), nn.BatchNorm1d(pred_dim), nn.ReLU(inplace=True),
        nn.Linear(pred_dim, dim),
    )


def resnet_backbone(arch: str = "resnet50", cifar_stem: bool = False) -> tuple[nn.Module, int]:
    """torchvision ResNet without fc (backbone(x) -> N x feat_dim); keys are torchvision's minus `fc.*`."""
    net = getattr(torchvision.models, arch)(weights=None, zero_init_residual=True)
    feat_dim = net.fc.in_features
    net.fc = nn.Identity()
    if cifar_stem:  # 32 px inputs: 3x3 stride-1 first conv, no max-pool (SimCLR/SimSiam CIFAR variant)
        net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    return net, feat_dim


class SiameseNet(nn.Module):
    def __init__(self, arch: str = "resnet50", dim: int = 2048, pred_dim: int = 512, cifar_stem: bool = False,
                 bn_mode: str = "per_view"):
        super().__init__()
        assert bn_mode in ("per_view", "joint"), bn_mode
        self.bn_mode = bn_mode
        self.backbone, feat_dim = resnet_backbone(arch, cifar_stem)
        self.projector = projector(feat_dim, dim)
        self.predictor = predictor(dim, pred_dim)

    def _pz(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.projector(self.backbone(x))  # N x dim
        return self.predictor(z), z

    def forward(self, views: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """views: V tensors N x 3 x H x W. Returns ([p_1..p_V], [z_1..z_V]), each N x dim; z not detached."""
        if self.bn_mode == "per_view":
            out = [self._pz(v) for v in views]
            return [p for p, _ in out], [z for _, z in out]
        p, z = self._pz(torch.cat(list(views)))  # (V*N) x dim
        return list(p.chunk(len(views))), list(z.chunk(len(views)))
