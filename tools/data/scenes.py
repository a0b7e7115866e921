"""Instance-segmentation scenes from CIFAR-10 **test** images, in COCO format: the study's detection task.

    python -m tools.data.scenes OUT --cifar-test data/cifar10/test [--train 1000 --val 250 --seed 0]

Each scene is a square canvas (default 128 px) on a smooth random-colour background with 1 to 4 objects.
An object is one CIFAR-10 test image, resized (bicubic) to a square of 32 to 64 px and pasted where it does
not overlap the objects already placed; its category is the image's CIFAR-10 class, its mask the pasted
square (its box is the mask's bounding box). Train and val scenes draw their source images from disjoint
halves of every class of the test set, and no source image is used twice within a split while unused ones
remain, so val measures recognition of images never seen in fine-tuning; the backbones never see any test
image in pretraining (they pretrain on CIFAR-10 train).

Written to OUT: train/*.png, val/*.png, train.json, val.json (COCO instances: boxes and polygon masks,
categories 1..10 in CIFAR-10's class order) and manifest.json (settings, counts, sha256). The sha256 is
over the annotation files and the raw pixels of every scene, so it does not depend on the PNG encoder;
the same settings and source images give the same checksum. Everything is built in OUT.partial and renamed,
so OUT is complete or absent; a rerun with the same settings finds it and does nothing.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
DEFAULTS = dict(train=1000, val=250, canvas=128, min_size=32, max_size=64, max_objects=4, seed=0)


class SceneError(Exception):
    """Bad input (missing CIFAR-10 test tree, impossible sizes): one line, exit status 2."""


def list_sources(cifar_test: Path) -> list[list[Path]]:
    """The test images of each class, in CIFAR-10's class order; a class folder must exist and be non-empty."""
    if not cifar_test.is_dir():
        raise SceneError(f"{cifar_test} not found: run `python -m tools.data.cifar10` first")
    per_class = []
    for name in CLASSES:
        files = sorted((cifar_test / name).glob("*.png"))
        if not files:
            raise SceneError(f"{cifar_test / name} has no PNG images (not a tools.data.cifar10 tree?)")
        per_class.append(files)
    return per_class


def split_sources(per_class: list[list[Path]], seed: int) -> dict[str, list[tuple[Path, int]]]:
    """Disjoint train/val source pools: a seeded half of every class each, as (path, class index)."""
    rng = np.random.default_rng([seed, 1])
    pools: dict[str, list[tuple[Path, int]]] = {"train": [], "val": []}
    for c, files in enumerate(per_class):
        order = rng.permutation(len(files))
        half = len(files) // 2
        pools["train"] += [(files[i], c) for i in order[:half]]
        pools["val"] += [(files[i], c) for i in order[half:]]
    return pools


def background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth colour field (4x4 random colours, bilinear upsampling) plus mild noise: uint8 size x size x 3."""
    coarse = Image.fromarray(rng.integers(40, 216, (4, 4, 3), dtype=np.uint8))
    field = np.asarray(coarse.resize((size, size), Image.BILINEAR), dtype=np.float32)
    field += rng.normal(0, 6, field.shape)
    return field.clip(0, 255).astype(np.uint8)


def place(rng: np.random.Generator, boxes: list[tuple[int, int, int, int]], side: int, canvas: int,
          tries: int = 50) -> tuple[int, int] | None:
    """A top-left corner for a side x side square that overlaps no box (x, y, w, h), or None."""
    for _ in range(tries):
        x, y = (int(v) for v in rng.integers(0, canvas - side + 1, 2))
        if all(x + side <= bx or bx + bw <= x or y + side <= by or by + bh <= y for bx, by, bw, bh in boxes):
            return x, y
    return None


def make_split(pool: list[tuple[Path, int]], count: int, settings: dict, rng: np.random.Generator,
               image_dir: Path, digest) -> dict:
    """`count` scenes into image_dir; returns the COCO dict. Feeds every scene's pixels into `digest`."""
    canvas, lo, hi = settings["canvas"], settings["min_size"], settings["max_size"]
    order, used = rng.permutation(len(pool)), 0
    images, annotations = [], []
    for i in range(count):
        img = background(rng, canvas)
        boxes: list[tuple[int, int, int, int]] = []
        for _ in range(int(rng.integers(1, settings["max_objects"] + 1))):
            side = int(rng.integers(lo, hi + 1))
            corner = place(rng, boxes, side, canvas)
            if corner is None:  # no room left on this canvas: fewer objects
                break
            path, label = pool[order[used % len(order)]]
            used += 1
            with Image.open(path) as src:
                patch = np.asarray(src.convert("RGB").resize((side, side), Image.BICUBIC))
            x, y = corner
            img[y:y + side, x:x + side] = patch
            boxes.append((x, y, side, side))
            annotations.append({
                "id": len(annotations) + 1, "image_id": i + 1, "category_id": label + 1, "iscrowd": 0,
                "bbox": [x, y, side, side], "area": side * side,
                # the pasted square as a polygon, corners in pixel-edge coordinates
                "segmentation": [[x, y, x + side, y, x + side, y + side, x, y + side]],
                "source": f"{path.parent.name}/{path.name}",  # for the disjointness check; loaders ignore it
            })
        name = f"{i:05d}.png"
        Image.fromarray(img).save(image_dir / name)
        digest.update(img.tobytes())
        images.append({"id": i + 1, "file_name": name, "height": canvas, "width": canvas})
    categories = [{"id": c + 1, "name": n, "supercategory": "cifar10"} for c, n in enumerate(CLASSES)]
    return {"images": images, "annotations": annotations, "categories": categories,
            "info": {"description": "CIFAR-10 test images composed into scenes (tools/data/scenes.py)",
                     "source_images_used": min(used, len(pool)), "source_pool": len(pool)}}


def build(out: Path, cifar_test: Path, **settings) -> dict:
    """Write the scene set to `out` (skipped if a complete one with the same settings is there); returns
    the manifest."""
    settings = {**DEFAULTS, **settings}
    if not 8 <= settings["min_size"] <= settings["max_size"] <= settings["canvas"]:
        raise SceneError(f"object sizes {settings['min_size']}..{settings['max_size']} px must satisfy "
                         f"8 <= min <= max <= canvas ({settings['canvas']})")
    if settings["train"] < 1 or settings["val"] < 1 or settings["max_objects"] < 1:
        raise SceneError("--train, --val and --max-objects must be at least 1")
    manifest_path = out / "manifest.json"
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("settings") == settings:
            return manifest
        raise SceneError(f"{out} holds scenes made with other settings; remove it or choose another OUT")
    pools = split_sources(list_sources(cifar_test), settings["seed"])
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    digest = hashlib.sha256()
    counts = {}
    for split in ("train", "val"):
        (partial / split).mkdir(parents=True)
        rng = np.random.default_rng([settings["seed"], 2 if split == "train" else 3])
        coco = make_split(pools[split], settings[split], settings, rng, partial / split, digest)
        text = json.dumps(coco, sort_keys=True)
        digest.update(text.encode())
        (partial / f"{split}.json").write_text(text)
        counts[split] = {"images": len(coco["images"]), "objects": len(coco["annotations"]),
                         "source_images_used": coco["info"]["source_images_used"]}
    manifest = {"settings": settings, "counts": counts, "sha256": digest.hexdigest(),
                "source": str(cifar_test), "classes": list(CLASSES)}
    (partial / "manifest.json").write_text(json.dumps(manifest, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(partial, out)
    return manifest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.data.scenes", description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--cifar-test", type=Path, default=Path("data/cifar10/test"))
    for key, value in DEFAULTS.items():
        p.add_argument(f"--{key.replace('_', '-')}", type=int, default=value)
    args = vars(p.parse_args(argv))
    out, cifar_test = args.pop("out"), args.pop("cifar_test")
    try:
        m = build(out, cifar_test, **args)
    except SceneError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{out}: {m['counts']}; sha256 {m['sha256']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
