"""The frozen backbone of a checkpoint transfer.convert reads: a torchvision ResNet minus fc, loaded strictly.

Reading goes only through transfer.convert's public functions (`load_checkpoint`, `find_state_dict`,
`split_checkpoint`), so every layout the converter learns (this project's, SimSiam's, MoCo v1/v2/v3's,
torchvision's, and later ones) is evaluated the same way, and a file the converter refuses is refused here
with the converter's one-line reason. `split_checkpoint` returns the backbone in torchvision key names; the
network is `torchvision.models.resnet{depth}` with `fc = Identity` (so forward gives the global-average-pooled
feature, N x 2048 for ResNet-50, N x 512 for ResNet-18/34). Wide ResNets and ResNeXt, which the converter
accepts too, get the same ResNet class with the width and groups their tensors show; a 3x3 stem is this
project's CIFAR stem (pretrain/model.py: 3x3 stride-1 conv1, no max-pool).
"""
from __future__ import annotations

import hashlib

import torch
from torch import nn
from torchvision.models.resnet import Bottleneck, ResNet

from pretrain.model import resnet_backbone
from tools.evaluate import EvalError
from transfer import convert


def sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def build_resnet(sd: dict, depth: int, blocks: tuple[int, ...]) -> tuple[nn.Module, dict]:
    """An untrained ResNet shaped like the torchvision-key state dict `sd` (fc = Identity), and its shape."""
    bottleneck = "layer1.0.conv3.weight" in sd
    stem = sd["conv1.weight"].shape[-1]
    width, groups = 64, 1
    if bottleneck:  # as transfer.convert.check_shapes reads them: stage-1 inner width, and its 3x3's groups
        width = sd["layer1.0.conv1.weight"].shape[0]
        groups = width // sd["layer1.0.conv2.weight"].shape[1]
    if (width, groups) == (64, 1):  # resnet18 ... resnet152, through the project's own constructor
        net, _ = resnet_backbone(f"resnet{depth}", cifar_stem=stem == 3)
    else:  # wide ResNet / ResNeXt: torchvision's ResNet class with their width_per_group and groups
        net = ResNet(Bottleneck, list(blocks), groups=groups, width_per_group=width // groups)
        net.fc = nn.Identity()
        if stem == 3:
            net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
    return net, {"stem": f"{stem}x{stem}", "width": width, "groups": groups}


def load_backbone(path: str) -> tuple[nn.Module, dict]:
    """(backbone in eval mode on the CPU, info for results.json); EvalError for what the converter refuses."""
    try:
        ckpt = convert.load_checkpoint(path)
        sd, where = convert.find_state_dict(ckpt, path)
        parts = convert.split_checkpoint(sd, path)
    except convert.ConvertError as e:
        raise EvalError(str(e)) from None
    backbone = dict(parts["backbone"])
    net, shape = build_resnet(backbone, parts["depth"], parts["blocks"])
    for key, value in net.state_dict().items():  # old files lack num_batches_tracked, unused in eval()
        if key.endswith(".num_batches_tracked") and key not in backbone:
            backbone[key] = torch.zeros_like(value)
    try:
        net.load_state_dict(backbone, strict=True)
    except RuntimeError as e:  # the converter checked keys and shapes, so this is a layout it cannot see
        raise EvalError(f"{path}: the backbone does not load into a ResNet-{parts['depth']}: "
                        f"{str(e).splitlines()[-1].strip()[:200]}") from None
    for p in net.parameters():
        p.requires_grad_(False)
    info = {"path": str(path), "sha256": sha256(path), "format": parts["format"], "prefix": parts["prefix"],
            "state_dict_at": where, "depth": parts["depth"], "blocks": list(parts["blocks"]), **shape,
            "tensors_dropped": parts["dropped"], "feature_dim": _feature_dim(net)}
    return net.eval(), info


def _feature_dim(net: nn.Module) -> int:
    last = net.layer4[-1]
    return (last.bn3 if hasattr(last, "bn3") else last.bn2).num_features
