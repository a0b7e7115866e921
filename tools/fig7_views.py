"""Fig. 7: which augmented views agree with the mean target, and which do not.

    python tools/fig7_views.py --checkpoint out/fs25/checkpoint.pth --images a.jpg b.jpg --output fig7.png

For each image, sample 200 views with the pretraining augmentation (pretrain.augment: the RandomResizedCrops
of `cpu_views`, then `DeviceAugment`'s colour jitter, grayscale, blur and flip, with the checkpoint's
image_size, crop_scale_min and blur), compute each view's target vector z (the projector output; the model in
eval mode), and show the three views whose z is closest to the mean target of all views and the three farthest
from it. Closeness is cosine similarity, the measure the loss uses (negative cosine of prediction and target).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # as a script: import tools, pretrain

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from pretrain.augment import IMAGENET_MEAN, IMAGENET_STD, DeviceAugment, cpu_views  # noqa: E402
from pretrain.checkpoint import CheckpointError, load_checkpoint, load_model  # noqa: E402
from tools.plotting import UsageError, load_image, plt, run_main, save_figure  # noqa: E402

SHOW = 3  # views shown on each side


@torch.no_grad()
def rank_views(model, img: torch.Tensor, num_views: int, size: int, scale_min: float, blur: bool,
               generator: torch.Generator, batch: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    """img: uint8 3 x H x W -> (views: float V x 3 x S x S normalised, cosine of each z to the mean z: V)."""
    views = DeviceAugment(blur=blur)(cpu_views(img, num_views, size, (scale_min, 1.0), generator=generator),
                                     generator)  # V x 3 x S x S
    z = torch.cat([model([chunk])[1][0] for chunk in views.split(batch)])  # V x dim
    target = z.mean(0, keepdim=True)  # 1 x dim: the mean target over all views
    return views, F.cosine_similarity(z, target, dim=1)


def to_rgb(x: torch.Tensor):
    """normalised 3 x S x S -> S x S x 3 in [0, 1] for imshow."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (x * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--checkpoint", required=True, help="this project's checkpoint.pth")
    ap.add_argument("--images", nargs="+", required=True)
    ap.add_argument("--num-views", type=int, default=200, help="views sampled per image (the paper: 200)")
    ap.add_argument("--size", type=int, help="view size (default: the checkpoint's image_size)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--output", type=Path, default=Path("fig7_views.png"))
    args = ap.parse_args(argv)
    if args.num_views < 2 * SHOW:
        raise UsageError(f"--num-views must be at least {2 * SHOW}")
    try:
        cfg = load_checkpoint(args.checkpoint).get("config") or {}
        model = load_model(args.checkpoint)
    except (CheckpointError, RuntimeError) as e:
        raise UsageError(str(e).splitlines()[0]) from None
    size = args.size or cfg.get("image_size") or 224
    scale_min, blur = cfg.get("crop_scale_min", 0.2), cfg.get("blur", True)
    g = torch.Generator().manual_seed(args.seed)
    rows = len(args.images)
    fig, axes = plt.subplots(rows, 1 + 2 * SHOW, figsize=(2 * (1 + 2 * SHOW), 2.2 * rows), squeeze=False)
    for i, path in enumerate(args.images):
        # crops come from the whole image as in pretraining; huge photos are shrunk to keep 200 crops quick
        img = load_image(path, 2 * size, crop=False)  # 3 x H x W uint8
        views, cos = rank_views(model, img, args.num_views, size, scale_min, blur, g)
        order = cos.argsort(descending=True)
        axes[i, 0].imshow(img.permute(1, 2, 0).numpy())
        axes[i, 0].set_title(Path(path).name, fontsize=8)
        picks = [("closest", j) for j in order[:SHOW].tolist()]
        picks += [("farthest", j) for j in order[-SHOW:].tolist()]
        for ax, (kind, j) in zip(axes[i, 1:], picks, strict=True):
            ax.imshow(to_rgb(views[j]))
            ax.set_title(f"{kind}\ncos {cos[j]:.3f}", fontsize=8, color="g" if kind == "closest" else "r")
        print(f"{path}: cosine to the mean target over {args.num_views} views: max {cos.max():.3f}, "
              f"min {cos.min():.3f}", file=sys.stderr)
    for ax in axes.flat:
        ax.axis("off")
    save_figure(fig, args.output)
    return 0


if __name__ == "__main__":
    run_main(main)
