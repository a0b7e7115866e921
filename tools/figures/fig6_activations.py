"""Fig. 6: where the backbone looks, for two checkpoints side by side.

    python -m tools.figures.fig6_activations --checkpoints out/fs25/checkpoint.pth out/ss100/checkpoint.pth \\
        --labels FastSiam SimSiam --images a.jpg b.jpg c.jpg --output fig6.png
    python -m tools.figures.fig6_activations --checkpoints checkpoint.pth resnet50_torchvision.pth --images a.jpg

Each map is the channel-mean of the last stage's activations (layer4, N x C x h x w -> h x w), upsampled
bilinearly onto the image and scaled to [0, 1] per image. A checkpoint is either this project's checkpoint.pth
(loaded with pretrain.checkpoint.load_model) or a plain torchvision ResNet state dict (.pth, e.g. from
`transfer.convert --format torchvision`), whose depth is read off its keys. Runs on the CPU.
"""
from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from pretrain.augment import IMAGENET_MEAN, IMAGENET_STD
from pretrain.checkpoint import CheckpointError, load_model
from tools.figures.plotting import UsageError, load_image, plt, run_main, save_figure

# (bottleneck?, blocks per stage) -> torchvision constructor
ARCHS = {(False, (2, 2, 2, 2)): "resnet18", (False, (3, 4, 6, 3)): "resnet34",
         (True, (3, 4, 6, 3)): "resnet50", (True, (3, 4, 23, 3)): "resnet101",
         (True, (3, 8, 36, 3)): "resnet152"}


def backbone_from_state_dict(sd: dict, path) -> nn.Module:
    """A torchvision ResNet (fc dropped) from its state dict; arch and CIFAR stem inferred from the keys."""
    sd = {k.removeprefix("module.").removeprefix("backbone."): v for k, v in sd.items()}
    sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    blocks = tuple(len({k.split(".")[1] for k in sd if k.startswith(f"layer{i}.")}) for i in range(1, 5))
    arch = ARCHS.get(("layer1.0.conv3.weight" in sd, blocks))
    if arch is None or "conv1.weight" not in sd:
        raise UsageError(f"{path}: not a torchvision ResNet state dict (blocks per stage {blocks})")
    net = getattr(torchvision.models, arch)(weights=None)
    net.fc = nn.Identity()
    if sd["conv1.weight"].shape[-1] == 3:  # CIFAR stem: 3x3 stride-1 conv, no max-pool (pretrain/model.py)
        net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    try:
        net.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise UsageError(f"{path}: does not match torchvision {arch}: {str(e).splitlines()[0]}") from None
    return net


def load_backbone(path: str | Path) -> tuple[nn.Module, int | None]:
    """(backbone in eval mode, the image size it was pretrained at or None)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (FileNotFoundError, IsADirectoryError):
        raise UsageError(f"checkpoint not found: {path}") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"{path}: cannot be loaded as a weights-only file: {first}") from None
    if not isinstance(obj, dict):
        raise UsageError(f"{path}: neither a checkpoint.pth nor a state dict")
    if "model" in obj:  # this project's checkpoint.pth
        try:
            model = load_model(path)
        except (CheckpointError, RuntimeError) as e:
            raise UsageError(str(e).splitlines()[0]) from None
        return model.backbone, (obj.get("config") or {}).get("image_size")
    return backbone_from_state_dict(obj, path).eval(), None


@torch.no_grad()
def activation_map(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """x: N x 3 x S x S normalised -> N x S x S in [0, 1]: layer4's channel-mean, upsampled, min-max."""
    b = backbone
    f = b.maxpool(b.relu(b.bn1(b.conv1(x))))
    f = b.layer4(b.layer3(b.layer2(b.layer1(f))))  # N x C x h x w
    a = F.interpolate(f.mean(1, keepdim=True), size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    lo, hi = a.amin((1, 2), keepdim=True), a.amax((1, 2), keepdim=True)
    return (a - lo) / (hi - lo).clamp_min(1e-12)  # N x S x S


def normalise(img: torch.Tensor) -> torch.Tensor:
    """uint8 N x 3 x S x S -> float, ImageNet-normalised as in pretraining."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (img.float() / 255 - mean) / std


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.figures.fig6_activations", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--checkpoints", nargs="+", required=True, help="checkpoint.pth / state dicts")
    ap.add_argument("--labels", nargs="+", help="one column title per checkpoint (default: file names)")
    ap.add_argument("--images", nargs="+", required=True)
    ap.add_argument("--size", type=int, help="image side (default: checkpoint's, or 224)")
    ap.add_argument("--alpha", type=float, default=0.5, help="opacity of the map over the image")
    ap.add_argument("--output", type=Path, default=Path("fig6_activations.png"))
    args = ap.parse_args(argv)
    labels = args.labels or [Path(c).parent.name + "/" + Path(c).name for c in args.checkpoints]
    if len(labels) != len(args.checkpoints):
        raise UsageError(f"{len(labels)} --labels for {len(args.checkpoints)} --checkpoints")
    nets = [load_backbone(c) for c in args.checkpoints]
    size = args.size or nets[0][1] or 224
    imgs = torch.stack([load_image(p, size) for p in args.images])  # N x 3 x S x S uint8
    x = normalise(imgs)
    maps = [activation_map(net, x) for net, _ in nets]  # per checkpoint: N x S x S
    rows, cols = len(args.images), 1 + len(nets)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.6 * rows), squeeze=False)
    for i in range(rows):
        rgb = imgs[i].permute(1, 2, 0).numpy()
        axes[i, 0].imshow(rgb)
        axes[i, 0].set_title(Path(args.images[i]).name, fontsize=8)
        for j, m in enumerate(maps, 1):
            axes[i, j].imshow(rgb)
            axes[i, j].imshow(m[i].numpy(), cmap="jet", alpha=args.alpha, vmin=0, vmax=1)
            if i == 0:
                axes[i, j].set_title(labels[j - 1], fontsize=9)
    for ax in axes.flat:
        ax.axis("off")
    save_figure(fig, args.output)
    return 0


if __name__ == "__main__":
    run_main(main)
