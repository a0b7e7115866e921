"""Fig. 7: which augmented views agree with the mean target, and which do not.

    python -m tools.figures.fig7_views --images a.jpg b.jpg --output fig7.png    # as the paper: untrained ResNet-50
    python -m tools.figures.fig7_views --checkpoint out/fs25/checkpoint.pth --images a.jpg --distance cosine

As in the paper's Fig. 7, 200 augmented views of each image go through an untrained encoder (a freshly
initialised ResNet-50 with the SimSiam projector, seeded by --seed) and are ranked by their distance to the
mean of all views; the figure shows the three views closest to that mean and the three farthest from it.
Options: --checkpoint ranks with a pretrained encoder (this project's checkpoint.pth, whose image_size,
crop_scale_min and blur then set the augmentation), and --distance cosine ranks by cosine distance (1 - cos,
the measure the loss uses) instead of the Euclidean distance.

Views come from the pretraining augmentation (pretrain.augment: the RandomResizedCrops of `cpu_views`, then
`DeviceAugment`'s colour jitter, grayscale, blur and flip). Each view's vector is z, the projector output
(the stop-gradient target in the loss), with the model in eval mode, so that a view's z does not depend on
which other views share its batch (for an untrained model, eval-mode BatchNorm is the identity).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from pretrain.augment import IMAGENET_MEAN, IMAGENET_STD, DeviceAugment, cpu_views
from pretrain.checkpoint import CheckpointError, load_checkpoint, load_model
from pretrain.model import SiameseNet
from tools.figures.plotting import UsageError, load_image, plt, run_main, save_figure

SHOW = 3  # views shown on each side
DISTANCES = ("euclidean", "cosine")
ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


def distance_to_mean(z: torch.Tensor, measure: str = "euclidean") -> torch.Tensor:
    """z: V x dim -> V distances to the mean of the V vectors (lower is closer). euclidean: |z_i - mean|;
    cosine: 1 - cos(z_i, mean)."""
    target = z.mean(0, keepdim=True)  # 1 x dim: the mean target over all views
    if measure == "euclidean":
        return (z - target).norm(dim=1)
    if measure == "cosine":
        return 1 - F.cosine_similarity(z, target, dim=1)
    raise ValueError(f"distance must be one of {DISTANCES}, not {measure!r}")


@torch.no_grad()
def rank_views(model, img: torch.Tensor, num_views: int, size: int, scale_min: float, blur: bool,
               generator: torch.Generator, batch: int = 50,
               measure: str = "euclidean") -> tuple[torch.Tensor, torch.Tensor]:
    """img: uint8 3 x H x W -> (views: float V x 3 x S x S normalised, each z's distance to the mean z: V)."""
    views = DeviceAugment(blur=blur)(cpu_views(img, num_views, size, (scale_min, 1.0), generator=generator),
                                     generator)  # V x 3 x S x S
    z = torch.cat([model([chunk])[1][0] for chunk in views.split(batch)])  # V x dim
    return views, distance_to_mean(z, measure)


def untrained_model(arch: str, dim: int, seed: int) -> SiameseNet:
    """The encoder before any training step: pretraining's own initialisation, seeded, in eval mode (the
    predictor, built with it, plays no part: z is the projector's output)."""
    torch.manual_seed(seed)
    return SiameseNet(arch=arch, dim=dim).eval()


def to_rgb(x: torch.Tensor):
    """normalised 3 x S x S -> S x S x 3 in [0, 1] for imshow."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (x * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m tools.figures.fig7_views", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--checkpoint", help="rank with this checkpoint.pth (default: an untrained encoder)")
    ap.add_argument("--arch", choices=ARCHS, default="resnet50", help="untrained encoder's backbone")
    ap.add_argument("--dim", type=int, default=2048, help="untrained encoder's projector output size")
    ap.add_argument("--images", nargs="+", required=True)
    ap.add_argument("--num-views", type=int, default=200, help="views sampled per image (the paper: 200)")
    ap.add_argument("--distance", choices=DISTANCES, default="euclidean",
                    help="distance to the mean (default: euclidean, as in the paper)")
    ap.add_argument("--size", type=int, help="view size (default: the checkpoint's image_size, or 224)")
    ap.add_argument("--seed", type=int, default=0, help="views and, untrained, the encoder's initialisation")
    ap.add_argument("--output", type=Path, default=Path("fig7_views.png"))
    return ap


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if args.num_views < 2 * SHOW:
        raise UsageError(f"--num-views must be at least {2 * SHOW}")
    if args.checkpoint:
        try:
            cfg = load_checkpoint(args.checkpoint).get("config") or {}
            model = load_model(args.checkpoint)
        except (CheckpointError, RuntimeError) as e:
            raise UsageError(str(e).splitlines()[0]) from None
        encoder = f"{Path(args.checkpoint).parent.name}/{Path(args.checkpoint).name}"
    else:  # the paper's setting: the pretraining recipe's augmentation, an encoder that has seen no data
        cfg, model = {}, untrained_model(args.arch, args.dim, args.seed)
        encoder = f"untrained {args.arch} (seed {args.seed})"
    size = args.size or cfg.get("image_size") or 224
    scale_min, blur = cfg.get("crop_scale_min", 0.2), cfg.get("blur", True)
    g = torch.Generator().manual_seed(args.seed)
    rows = len(args.images)
    fig, axes = plt.subplots(rows, 1 + 2 * SHOW, figsize=(2 * (1 + 2 * SHOW), 2.2 * rows + 0.4),
                             squeeze=False)
    fig.suptitle(f"{args.num_views} views through {encoder}, ranked by {args.distance} distance to their "
                 f"mean z", fontsize=9)
    for i, path in enumerate(args.images):
        # crops come from the whole image as in pretraining; huge photos are shrunk to keep 200 crops quick
        img = load_image(path, 2 * size, crop=False)  # 3 x H x W uint8
        views, dist = rank_views(model, img, args.num_views, size, scale_min, blur, g, measure=args.distance)
        order = dist.argsort()  # closest first
        axes[i, 0].imshow(img.permute(1, 2, 0).numpy())
        axes[i, 0].set_title(Path(path).name, fontsize=8)
        picks = [("closest", j) for j in order[:SHOW].tolist()]
        picks += [("farthest", j) for j in order[-SHOW:].tolist()]
        for ax, (kind, j) in zip(axes[i, 1:], picks, strict=True):
            ax.imshow(to_rgb(views[j]))
            ax.set_title(f"{kind}\ndist {dist[j]:.3g}", fontsize=8, color="g" if kind == "closest" else "r")
        print(f"{path}: {args.distance} distance to the mean target over {args.num_views} views: "
              f"min {dist.min():.4g}, max {dist.max():.4g}", file=sys.stderr)
    for ax in axes.flat:
        ax.axis("off")
    save_figure(fig, args.output)
    return 0


if __name__ == "__main__":
    run_main(main)
