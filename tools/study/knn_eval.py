"""kNN top-1 of backbones on CIFAR-10 test: pretrain/knn.py's weighted kNN (k=200, cosine, t=0.1).

    python -m tools.study.knn_eval --bank DIR --test DIR --size 64 --out-dir KNN_DIR BACKBONE.pth [...]

Each BACKBONE.pth is a torchvision-layout ResNet state dict (the converter's input; a classifier `fc.*` is
ignored). The bank and test images (labelled class folders) are decoded once, resized to --size as in
pretraining, and every backbone gets KNN_DIR/<file stem>.json ({"knn_top1": ..., "bank": n, "test": n, ...}),
written atomically; a backbone whose json is there already is skipped, so the command resumes.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from pretrain import knn
from pretrain.model import resnet_backbone


def load_backbone(path: Path, arch: str = "resnet18") -> torch.nn.Module:
    """The backbone of a torchvision-layout state dict, loaded strictly (fc excluded), in eval mode."""
    sd = torch.load(path, map_location="cpu", weights_only=True)
    net, _ = resnet_backbone(arch)
    net.load_state_dict({k: v for k, v in sd.items() if not k.startswith("fc.")}, strict=True)
    return net.eval()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.study.knn_eval", description=__doc__.split("\n\n")[0])
    p.add_argument("backbones", nargs="+", type=Path)
    p.add_argument("--bank", type=Path, required=True, help="labelled folder: the kNN memory bank")
    p.add_argument("--test", type=Path, required=True, help="labelled folder: the queries")
    p.add_argument("--size", type=int, required=True, help="image size (pretraining's image_size)")
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--k", type=int, default=200)
    p.add_argument("--t", type=float, default=0.1)
    args = p.parse_args(argv)
    todo = [b for b in args.backbones if not (args.out_dir / f"{b.stem}.json").exists()]
    missing = [b for b in todo if not b.is_file()]
    if missing:
        print(f"error: backbone {missing[0]} does not exist", file=sys.stderr)
        return 2
    if not todo:
        return 0
    try:
        bank_paths, bank_labels, classes = knn.list_labelled(args.bank)
        test_paths, test_labels, _ = knn.list_labelled(args.test, classes)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    bank_images = knn.load_images(bank_paths, args.size)  # M x 3 x S x S uint8
    test_images = knn.load_images(test_paths, args.size)  # N x 3 x S x S uint8
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for path in todo:
        net = load_backbone(path, args.arch)
        bank = knn.extract_features(net, bank_images, args.device)
        test = knn.extract_features(net, test_images, args.device)
        pred = knn.knn_predict(test, bank, bank_labels.to(args.device), len(classes), args.k, args.t)
        acc = (pred.cpu() == test_labels).float().mean().item()
        result = {"knn_top1": acc, "bank": len(bank_paths), "test": len(test_paths), "k": args.k, "t": args.t,
                  "image_size": args.size, "backbone": str(path)}
        tmp = args.out_dir / f".{path.stem}.json.tmp"
        tmp.write_text(json.dumps(result, indent=1))
        os.replace(tmp, args.out_dir / f"{path.stem}.json")
        print(f"{path.stem}: kNN top-1 {acc:.2%} ({len(test_paths)} test images, bank {len(bank_paths)})",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
