"""kNN and linear-probe top-1/top-5 of a ResNet checkpoint on labelled train/val folders.

    python -m tools.evaluate CHECKPOINT --train DIR --val DIR [--out DIR]
    python -m tools.evaluate runs/pretrain/checkpoint.pth --train data/cifar10/train \\
        --val data/cifar10/test --image-size 32 --resize 32 --out runs/eval/cifar   # 32 px, no crop
    python -m tools.evaluate moco_v2_800ep_pretrain.pth.tar --train /imagenet/train --val /imagenet/val \\
        --device cuda --workers 16 --batch-size 512 --cache-dtype float16 --out runs/eval/moco_v2

CHECKPOINT is anything transfer.convert reads (this project's checkpoint.pth or backbone export, SimSiam,
MoCo v1/v2/v3, torchvision). Stages: read the checkpoint and folders (any problem: one line, exit status 2,
before any compute) -> features of train and val, cached in OUT/features/{train,val}.pt -> weighted kNN
(pretrain/knn.py: k=200, cosine, t=0.1, bank = train) -> linear probe on the frozen cached features
(tools/evaluate/linear.py). Prints top-1/top-5 and writes OUT/results.json; a rerun reuses the features.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import Tensor

from pretrain import knn
from pretrain.checkpoint import CheckpointError, atomic_write
from pretrain.config import ConfigError
from pretrain.precision import cpu_name, resolve
from tools.evaluate import EvalError
from tools.evaluate.backbone import load_backbone
from tools.evaluate.features import DTYPES, cached_features, transform_spec
from tools.evaluate.folders import labelled_splits
from tools.evaluate.linear import ProbeConfig, probe_scores, train_probe


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.evaluate", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("checkpoint", help="FastSiam, SimSiam, MoCo or torchvision ResNet checkpoint")
    p.add_argument("--train", required=True, help="labelled folder TRAIN/<class>/<image>: kNN bank, probe")
    p.add_argument("--val", required=True, help="labelled folder with the same class folders: the scored set")
    p.add_argument("--out", default=None, help="output folder (default: runs/eval/<checkpoint file stem>)")
    # ============ features ============
    p.add_argument("--image-size", type=int, default=224, help="centre crop; ImageNet 224, CIFAR 32")
    p.add_argument("--resize", type=int, default=None,
                   help="shorter side before the crop; default image-size*256/224 (256 for 224)")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass of the extraction")
    p.add_argument("--workers", type=int, default=min(8, _cpus()),
                   help="DataLoader decode processes; ImageNet on one GPU wants 8-16")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="auto: cuda if there")
    p.add_argument("--amp", default="auto", choices=("auto", "off", "bf16", "fp16"),
                   help="autocast of the extraction, pretraining's rule: auto = bf16 on CUDA (fp16 without "
                        "bf16) and on CPUs with native bf16, else off")
    p.add_argument("--cache-dtype", default="float32", choices=tuple(DTYPES),
                   help="float16 halves the cache (ImageNet train at 2048-d: 10.5 GB -> 5.2 GB)")
    # ============ kNN ============
    p.add_argument("--no-knn", action="store_true")
    p.add_argument("--knn-k", type=int, default=200)
    p.add_argument("--knn-t", type=float, default=0.1, help="temperature of the exp(similarity / t) weights")
    # ============ linear probe ============
    p.add_argument("--no-linear", action="store_true")
    p.add_argument("--linear-epochs", type=int, default=ProbeConfig.epochs)
    p.add_argument("--linear-lr", type=float, default=ProbeConfig.base_lr,
                   help="base lr per 256 images: lr = linear-lr * linear-batch-size / 256 (on standardised "
                        "features; with --no-standardize MoCo's protocol uses 30 at batch 256)")
    p.add_argument("--linear-batch-size", type=int, default=ProbeConfig.batch_size)
    p.add_argument("--linear-optimizer", default=ProbeConfig.optimizer, choices=("sgd", "lars"))
    p.add_argument("--linear-momentum", type=float, default=ProbeConfig.momentum)
    p.add_argument("--linear-wd", type=float, default=ProbeConfig.weight_decay, help="weight decay")
    p.add_argument("--no-standardize", action="store_true",
                   help="train on the raw pooled features instead of train-standardised ones")
    p.add_argument("--seed", type=int, default=0, help="probe init and batch order")
    return p


def check_args(args: argparse.Namespace) -> None:
    if args.no_knn and args.no_linear:
        raise EvalError("--no-knn and --no-linear together leave nothing to evaluate")
    for name in ("image_size", "batch_size", "knn_k", "linear_epochs", "linear_batch_size"):
        if getattr(args, name) <= 0:
            raise EvalError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.workers < 0:
        raise EvalError(f"--workers must be 0 or more, got {args.workers}")
    if args.knn_t <= 0.0125:  # pretrain/knn.py: exp(1/t) overflows float32 below about t = 0.012
        raise EvalError(f"--knn-t must be above 0.0125, got {args.knn_t}")
    if args.linear_lr <= 0:
        raise EvalError(f"--linear-lr must be positive, got {args.linear_lr}")
    if args.resize is not None and args.resize < args.image_size:
        raise EvalError(f"--resize {args.resize} is smaller than --image-size {args.image_size}")


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise EvalError("--device cuda, but torch sees no CUDA device (use --device cpu or auto)")
    return torch.device("cuda" if name == "cuda" or name == "auto" and torch.cuda.is_available() else "cpu")


def topk_accuracy(scores: Tensor, labels: Tensor) -> dict:
    """{"top1", "top5"} in [0, 1] of N x C class scores; with C <= 5 classes top-5 is 1 by definition."""
    top = scores.topk(min(5, scores.shape[1]), dim=1).indices.cpu()  # N x 5
    hit = top == labels.view(-1, 1)
    return {"top1": hit[:, :1].any(1).float().mean().item(), "top5": hit.any(1).float().mean().item()}


def hardware(device: torch.device) -> dict:
    return {"device": str(device), "cpu": cpu_name(), "cpu_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "torch": torch.__version__, "python": platform.python_version()}


def git_sha() -> str:
    try:
        r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                           text=True, timeout=10)
        return r.stdout.strip() if r.returncode == 0 else ""
    except (OSError, subprocess.TimeoutExpired):
        return ""


def evaluate(args: argparse.Namespace) -> dict:
    """Everything of one run; returns the results.json dict. Raises EvalError for bad inputs."""
    t0 = time.perf_counter()
    seconds = {}
    # ============ inputs: every check before any compute ============
    check_args(args)
    device = pick_device(args.device)
    try:
        precision = resolve(args.amp, device)
    except ConfigError as e:
        raise EvalError(f"--amp: {e}") from None
    train, val = labelled_splits(args.train, args.val)
    net, info = load_backbone(args.checkpoint)
    out = Path(args.out) if args.out else Path("runs/eval") / Path(args.checkpoint).stem
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EvalError(f"--out {out}: cannot create it ({e.strerror})") from None
    seconds["inputs"] = time.perf_counter() - t0
    print(f"checkpoint: {info['format']} ResNet-{info['depth']} ({info['feature_dim']}-d features), "
          f"sha256 {info['sha256'][:12]}")
    print(f"data: {len(train.classes)} classes, train {len(train.paths):,} images, val {len(val.paths):,}; "
          f"device {device}, autocast {precision.name}", flush=True)

    # ============ features (cached) ============
    spec = transform_spec(args.image_size, args.resize)
    feats, feature_stats = {}, {}
    for split in (train, val):
        t = time.perf_counter()
        feats[split.name], feature_stats[split.name] = cached_features(
            out, net, split, spec, info, device, precision, args.cache_dtype, args.batch_size, args.workers)
        seconds[f"features_{split.name}"] = time.perf_counter() - t
        how = "read from cache" if feature_stats[split.name]["cached"] else "extracted"
        print(f"features {split.name}: {how} in {seconds[f'features_{split.name}']:.1f} s "
              f"-> {feature_stats[split.name]['path']}", flush=True)
    del net

    # ============ kNN ============
    knn_result = None
    if not args.no_knn:
        t = time.perf_counter()
        scores = knn.knn_scores(feats["val"].to(device), feats["train"].to(device), train.labels.to(device),
                                len(train.classes), args.knn_k, args.knn_t)  # N x C
        knn_result = {"k": args.knn_k, "t": args.knn_t, "similarity": "cosine",
                      "k_used": min(args.knn_k, len(train.paths)), **topk_accuracy(scores, val.labels)}
        seconds["knn"] = time.perf_counter() - t
        print(f"kNN (k={args.knn_k}, t={args.knn_t}):  top-1 {knn_result['top1']:.2%}  "
              f"top-5 {knn_result['top5']:.2%}", flush=True)

    # ============ linear probe ============
    linear_result = None
    if not args.no_linear:
        t = time.perf_counter()
        cfg = ProbeConfig(epochs=args.linear_epochs, batch_size=args.linear_batch_size,
                          base_lr=args.linear_lr, optimizer=args.linear_optimizer,
                          momentum=args.linear_momentum, weight_decay=args.linear_wd,
                          standardize=not args.no_standardize, seed=args.seed)
        probe, losses = train_probe(feats["train"], train.labels, len(train.classes), cfg, device)
        train_acc = topk_accuracy(probe_scores(probe, feats["train"]), train.labels)
        linear_result = {**cfg.to_dict(), "variant": "cached features, centre crop, no augmentation",
                         **topk_accuracy(probe_scores(probe, feats["val"]), val.labels),
                         "train_top1": train_acc["top1"], "loss_per_epoch": [round(x, 5) for x in losses]}
        seconds["linear"] = time.perf_counter() - t
        print(f"linear ({cfg.epochs} epochs, {cfg.optimizer} lr {cfg.lr:g}, batch {cfg.batch_size}):  "
              f"top-1 {linear_result['top1']:.2%}  top-5 {linear_result['top5']:.2%}", flush=True)

    seconds["total"] = time.perf_counter() - t0
    return {
        "checkpoint": info,
        "data": {"train": train.summary(), "val": val.summary(), "num_classes": len(train.classes),
                 "classes": train.classes},
        "transform": spec,
        "features": {"dim": info["feature_dim"], "cache_dtype": args.cache_dtype, "autocast": precision.name,
                     "autocast_reason": precision.reason, **feature_stats},
        "knn": knn_result,
        "linear": linear_result,
        "hardware": hardware(device),
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
        "args": vars(args) | {"out": str(out)},
        "git": git_sha(),
        "out": str(out),
    }


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        results = evaluate(args)
        path = Path(results["out"]) / "results.json"
        atomic_write(path, lambda f: f.write((json.dumps(results, indent=1) + "\n").encode()))
    except (EvalError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
