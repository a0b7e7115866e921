"""Small COCO-format files as real exports write them, for the own-data tests: every mask encoding the format
allows (polygons with several parts, RLE with string counts as LVIS and CVAT write them, RLE with list counts
as COCO's crowd objects have them), non-contiguous category ids, keypoints with visibility 0/1/2, images
without annotations, grayscale and palette PNGs, and an EXIF-rotated JPEG.

Each image holds bright rectangles on a dark, noisy background; every object's box, mask and area describe
its rectangle exactly in the displayed frame, so a detector can learn them in a few iterations.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

CATEGORIES = [{"id": 3, "name": "box"}, {"id": 7, "name": "bar"}, {"id": 12, "name": "dot"}]  # not 1..N


def rle_list_counts(mask: np.ndarray) -> list[int]:
    """COCO's uncompressed RLE: run lengths over the column-major pixels, starting with a run of zeros."""
    flat = mask.flatten(order="F").astype(np.uint8)
    counts, value, run = [], 0, 0
    for v in flat:
        if v != value:
            counts.append(run)
            value, run = v, 0
        run += 1
    counts.append(run)
    return counts


def rle_string(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_util

    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode()}


def _rect_polygon(x, y, w, h) -> list[float]:
    return [x, y, x + w, y, x + w, y + h, x, y + h]


def _image(rng, w, h, boxes) -> np.ndarray:
    im = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
    for x, y, bw, bh, cat in boxes:
        im[y:y + bh, x:x + bw] = [(200, 60, 60), (60, 200, 60), (60, 60, 200)][cat]
    return im


def write(folder: Path, n_images: int = 6, seed: int = 0, masks: str = "mixed",
          keypoints: list[str] | None = None, empty_image: bool = True, png_modes: bool = True,
          exif: str | None = "displayed",
          drop: tuple[str, ...] = (), categories: list[dict] | None = None) -> tuple[str, str]:
    """Write images/ and ann.json under `folder`; returns (json path, image dir).

    masks: "mixed" (multi-part polygon, RLE string, RLE list counts, a crowd RLE), "polygon", "none" (box
    only: "segmentation": [] or absent). exif: None, "displayed" (one JPEG stored rotated with orientation 6,
    the json holding its displayed size, correct) or "stored" (the json holding the stored size, wrong).
    drop: fields left out of every annotation ("area", "iscrowd")."""
    rng = np.random.default_rng(seed)
    images_dir = folder / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    cats = categories or CATEGORIES
    images, anns = [], []
    for i in range(n_images):
        w, h = (64, 96) if (exif and i == 0) else (96, 80)  # image 0: portrait, shown after EXIF rotation
        boxes = [] if (empty_image and i == n_images - 1) else \
            [(8, 10, 30, 24, 0), (46, 40, 40, 14, 1), (20, 50, 12, 12, 2)] if w == 96 else \
            [(6, 8, 30, 24, 0), (10, 50, 40, 14, 1), (40, 70, 12, 12, 2)]
        pixels = _image(rng, w, h, boxes)
        name = f"img{i:03d}.jpg"
        if exif and i == 0:
            stored = Image.fromarray(pixels).transpose(Image.Transpose.ROTATE_90)  # orientation 6 undoes it
            ex = Image.Exif()
            ex[0x0112] = 6
            stored.save(images_dir / name, quality=95, exif=ex)
            if exif == "stored":
                w, h = stored.size
        elif png_modes and i in (1, 2):
            name = f"img{i:03d}.png"
            im = Image.fromarray(pixels)
            (im.convert("L") if i == 1 else im.convert("P", palette=Image.Palette.ADAPTIVE)).save(
                images_dir / name)
        else:
            Image.fromarray(pixels).save(images_dir / name, quality=95)
        images.append({"id": 100 + i, "file_name": name, "width": w, "height": h})
        for j, (x, y, bw, bh, cat) in enumerate(boxes):
            ann = {"id": len(anns) + 1, "image_id": 100 + i, "category_id": cats[cat % len(cats)]["id"],
                   "bbox": [x, y, bw, bh], "area": float(bw * bh), "iscrowd": 0}
            mask = np.zeros((h, w), np.uint8)
            mask[y:y + bh, x:x + bw] = 1
            kind = masks if masks != "mixed" else ("polygon", "parts", "rle_string", "rle_list")[(i + j) % 4]
            if kind == "polygon":
                ann["segmentation"] = [_rect_polygon(x, y, bw, bh)]
            elif kind == "parts":  # the rectangle as two polygons, left and right half
                half = bw // 2
                ann["segmentation"] = [_rect_polygon(x, y, half, bh),
                                       _rect_polygon(x + half, y, bw - half, bh)]
            elif kind == "rle_string":
                ann["segmentation"] = rle_string(mask)
            elif kind == "rle_list":
                ann["segmentation"] = {"size": [h, w], "counts": rle_list_counts(mask)}
            elif j % 2:  # box only: both ways exports write it
                ann["segmentation"] = []
            if keypoints:  # object 0 has none visible (num_keypoints 0); the others visibility 0, 1, 2, ...
                inside = [(x + 1 + k * (bw - 2) // len(keypoints), y + 2) for k in range(len(keypoints))]
                vis = [(px, py, k % 3) if k % 3 else (0, 0, 0) for k, (px, py) in enumerate(inside)] if j \
                    else [(0, 0, 0)] * len(keypoints)
                ann["keypoints"] = [v for p in vis for v in p]
                ann["num_keypoints"] = sum(1 for p in vis if p[2] > 0)
            for key in drop:
                ann.pop(key, None)
            anns.append(ann)
        if masks == "mixed" and i == 1:  # a crowd region, as COCO writes them: RLE with list counts
            crowd = np.zeros((h, w), np.uint8)
            crowd[2:8, 60:90] = 1
            anns.append({"id": len(anns) + 1, "image_id": 100 + i, "category_id": cats[0]["id"],
                         "bbox": [60, 2, 30, 6], "area": 180.0, "iscrowd": 1,
                         "segmentation": {"size": [h, w], "counts": rle_list_counts(crowd)}})
    cat_list = [dict(c) for c in cats]
    if keypoints:
        for c in cat_list:
            c["keypoints"], c["skeleton"] = list(keypoints), []
    path = folder / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cat_list}))
    return str(path), str(images_dir)
