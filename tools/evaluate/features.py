"""Frozen-backbone features of a labelled folder, extracted once and cached in OUT/features/{split}.pt.

Transform, the standard evaluation one for every split (ImageNet: Resize(256) + CenterCrop(224)): decode
(pretrain/data.py: libjpeg-turbo for JPEGs, PIL otherwise, RGB), resize the shorter side to `resize`
(default image_size * 256/224, antialiased bilinear on uint8), centre-crop image_size, normalise with the
ImageNet mean/std. The feature is the backbone's global-average-pooled output (N x 2048 for ResNet-50).

Cache: {split}.pt = {"key", "features" (N x D, --cache-dtype), "labels", "meta"}. The key is a sha256 over
the checkpoint file's sha256, the transform, the autocast dtype, the cache dtype and the image list (paths
relative to the folder, with their labels), so a rerun with anything else extracts again and a rerun with the
same inputs reads the file instead (it is written atomically: a killed run leaves the previous file or none).
Images are decoded by DataLoader workers, `batch_size` at a time, and only the features are kept.
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torch import Tensor, nn
from tqdm import tqdm

from pretrain import data
from pretrain.augment import IMAGENET_MEAN, IMAGENET_STD
from pretrain.checkpoint import CheckpointError, atomic_write
from pretrain.precision import Precision
from tools.evaluate import EvalError
from tools.evaluate.folders import Split

MAX_PIXELS = 89_478_485  # PIL's decompression-bomb limit, as pretraining's default max_image_pixels
DTYPES = {"float32": torch.float32, "float16": torch.float16}


def transform_spec(image_size: int, resize: int | None = None) -> dict:
    """The evaluation transform as data: part of the cache key and of results.json."""
    return {"resize_shorter_side": resize or round(image_size * 256 / 224), "center_crop": image_size,
            "interpolation": "bilinear, antialias, uint8", "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD)}


class EvalImages(torch.utils.data.Dataset):
    """Item i -> (uint8 3 x S x S, "" or why the file is unreadable). A bad file is reported, not raised, so
    the main process can stop with one line naming it instead of a worker traceback."""

    def __init__(self, paths: list[Path], spec: dict):
        # numpy bytes, not a list of str: workers do not copy pages by touching refcounts (pretrain/data.py)
        self.paths = np.array([str(p).encode() for p in paths])
        self.resize, self.crop = spec["resize_shorter_side"], spec["center_crop"]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Tensor, str]:
        path = self.paths[i].decode()
        try:
            img = data.decode(data.read_bytes(path), MAX_PIXELS)  # 3 x H x W uint8
        except data.BadImage as e:
            return torch.zeros(3, self.crop, self.crop, dtype=torch.uint8), f"{path}: {e}"
        img = TF.resize(img, [self.resize], antialias=True)  # one int: the shorter side
        return TF.center_crop(img, [self.crop]), ""


@torch.no_grad()
def extract(net: nn.Module, split: Split, spec: dict, feature_dim: int, device: torch.device,
            precision: Precision, dtype: torch.dtype, batch_size: int, workers: int) -> Tensor:
    """Features N x D (`dtype`, CPU) of every image of `split`, in order, with the network in eval mode."""
    loader = torch.utils.data.DataLoader(EvalImages(split.paths, spec), batch_size=batch_size,
                                         num_workers=workers, pin_memory=device.type == "cuda",
                                         prefetch_factor=4 if workers > 0 else None)
    net = net.to(device, memory_format=precision.memory_format).eval()
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1) * 255
    out = torch.empty(len(split.paths), feature_dim, dtype=dtype)  # preallocated: no 2x peak from a cat
    # a live bar on a terminal; in a redirected log one line a minute instead of piled-up \r redraws
    tty = sys.stderr.isatty()
    bar = tqdm(total=len(out), desc=f"{split.name} features", unit="img", disable=not tty, dynamic_ncols=True)
    start = last = time.perf_counter()
    done = 0
    for images, reasons in loader:
        bad = [r for r in reasons if r]
        if bad:
            raise EvalError(f"unreadable image {bad[0]}; remove or replace it (features were not cached)")
        x = images.to(device, non_blocking=True).float().sub_(mean).div_(std)  # B x 3 x S x S
        with precision.autocast():
            f = net(x.contiguous(memory_format=precision.memory_format))  # B x D
        out[done:done + len(f)] = f.float().cpu()
        done += len(f)
        bar.update(len(f))
        if not tty and time.perf_counter() - last > 60:
            last = time.perf_counter()
            print(f"{split.name} features: {done:,}/{len(out):,} images, "
                  f"{done / (last - start):.0f} img/s", file=sys.stderr, flush=True)
    bar.close()
    return out


def cache_key(checkpoint_sha256: str, spec: dict, split: Split, precision: Precision, dtype: str) -> str:
    h = hashlib.sha256(json.dumps({"checkpoint": checkpoint_sha256, "transform": spec,
                                   "autocast": precision.name, "dtype": dtype}, sort_keys=True).encode())
    for rel, label in zip(split.relative(), split.labels.tolist(), strict=True):
        h.update(f"{label}\t{rel}\n".encode())
    return h.hexdigest()


def _read(path: Path, key: str) -> dict | None:
    """The cache file if it holds this key; None (extract again) if it is missing, stale or unreadable."""
    if not path.is_file():
        return None
    try:  # mmap: an ImageNet-size file is paged in as kNN and the probe read it, not copied up front
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file is just a cache miss
        print(f"note: {path} is unreadable ({type(e).__name__}); extracting again", file=sys.stderr)
        return None
    if not isinstance(obj, dict) or obj.get("key") != key:
        print(f"note: {path} holds features of another checkpoint, transform or image list; extracting again",
              file=sys.stderr)
        return None
    return obj


def cached_features(out_dir: Path, net: nn.Module, split: Split, spec: dict, info: dict, device: torch.device,
                    precision: Precision, dtype: str, batch_size: int, workers: int) -> tuple[Tensor, dict]:
    """(features N x D, {"path", "cached", "seconds", "key"}): read from the cache or extracted into it."""
    path = out_dir / "features" / f"{split.name}.pt"
    key = cache_key(info["sha256"], spec, split, precision, dtype)
    start = time.perf_counter()
    obj = _read(path, key)
    cached = obj is not None
    if obj is None:
        feats = extract(net, split, spec, info["feature_dim"], device, precision, DTYPES[dtype], batch_size,
                        workers)
        obj = {"key": key, "features": feats, "labels": split.labels,
               "meta": {"checkpoint_sha256": info["sha256"], "root": str(split.root), "transform": spec,
                        "autocast": precision.name}}
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            atomic_write(path, lambda f: torch.save(obj, f))
        except CheckpointError as e:
            raise EvalError(str(e)) from None
    seconds = round(time.perf_counter() - start, 3)
    stats = {"path": str(path), "cached": cached, "seconds": seconds, "key": key}
    return obj["features"], stats
