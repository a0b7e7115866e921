"""What one COCO-format annotation file holds, read as the format's specification defines it, before
detectron2 sees it: categories (the model's classes), masks (polygons, RLE with string or list counts, crowd
or not), keypoints, and the problems that would crash training or evaluation later (refused now,
DatasetError) or skew AP without a word (a counted one-line warning each).

COCO's format (cocodataset.org/#format-data): ``images`` {id, file_name, width, height}, ``annotations`` {id,
image_id, category_id, bbox [x, y, w, h], segmentation (polygons [[x1, y1, ...], ...] or RLE {size: [h, w],
counts}), area, iscrowd 0/1, keypoints [x, y, v] * K, num_keypoints}, ``categories`` {id, name, keypoints,
skeleton}. No detectron2 import here: the rules come from the format and from detectron2's loader
(``load_coco_json``: classes are the categories sorted by id; an object whose polygons all have fewer than 3
points is dropped, box included) and mapper (crowd objects are not trained on; polygon masks need
``INPUT.MASK_FORMAT polygon``, RLE ones ``bitmask``).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field

# COCOeval's size split of the ground truth, by its `area` field (pycocotools cocoeval.py, Params.areaRng)
SIZE_SPLIT = ("COCOeval files each ground-truth object under AP_s/AP_m/AP_l by its 'area' (< 32^2, < 96^2, "
              "more)")


class DatasetError(Exception):
    """Bad dataset input; the message is one line meant for the user."""


@dataclass
class Summary:
    """One dataset as the checks see it; `builtin` ones (detectron2's own splits) come from its metadata."""

    name: str
    json_file: str | None
    image_root: str | None
    sha256: str | None
    images: int | None
    categories: list[tuple[int | None, str]]  # (id, name) in class-index order (sorted by id)
    keypoint_names: list[str] = field(default_factory=list)
    builtin: bool = False
    # non-crowd objects by mask kind, and crowd objects without a mask
    polygon: int = 0
    rle: int = 0
    no_mask: int = 0
    crowd_no_mask: int = 0
    objects: int = 0  # non-crowd objects
    no_keypoints: int = 0  # non-crowd objects without a keypoints list
    bad_keypoints: str | None = None  # the first keypoints list whose length is not 3 * K
    completed: list[str] = field(default_factory=list)  # fields filled in for the evaluator (area, ...)
    warnings: list[str] = field(default_factory=list)
    image_list: list[tuple[str, int, int]] = field(default_factory=list, repr=False)  # (path, width, height)

    @property
    def source(self) -> str:
        return self.json_file or self.name

    def record(self) -> dict:
        """Provenance of the data, for OUTPUT_DIR/provenance.json."""
        return {"name": self.name, "builtin": self.builtin, "json_file": self.json_file,
                "image_root": self.image_root, "sha256": self.sha256, "images": self.images,
                "classes": len(self.categories), "completed": self.completed, "warnings": self.warnings}


def read(path: str) -> tuple[dict, str]:
    """Parse a COCO-format annotation file and check its top-level structure; returns (data, sha256)."""
    if not os.path.isfile(path):
        raise DatasetError(f"annotation file {path} does not exist")
    try:
        with open(path, "rb") as f:
            raw = f.read()
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"cannot read {path}: {e}") from None
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(data, dict) or
               not isinstance(data.get(k), list)]
    if missing:
        names = ", ".join(repr(k) for k in missing)
        raise DatasetError(f"{path} is not a COCO annotation file: no list {names}")
    if not data["categories"]:
        raise DatasetError(f"{path} has no categories")
    return data, hashlib.sha256(raw).hexdigest()


def keypoint_flip_map(names: list[str]) -> list[tuple[str, str]]:
    """Pairs of keypoints swapped by a horizontal flip: every "left..."/"right..." pair, as in COCO's map."""
    return [(n, n.replace("left", "right")) for n in names
            if "left" in n and n.replace("left", "right") in names]


class _Counts:
    """Problems counted over a file: one warning line each, with the count and the first example."""

    def __init__(self):
        self.n: dict[str, int] = {}
        self.first: dict[str, str] = {}

    def add(self, kind: str, example: str) -> None:
        self.n[kind] = self.n.get(kind, 0) + 1
        self.first.setdefault(kind, example)


WARNINGS = {  # kind -> what it means for training or AP
    "no_area": f"have no 'area': filled in from the mask (else the box) as COCO computes it; {SIZE_SPLIT}",
    "bad_area": f"have an 'area' that is not the object's (0, or more than its box): {SIZE_SPLIT}, so "
                "AP_s/AP_m/AP_l are skewed; recompute it from the mask",
    "no_iscrowd": "have no 'iscrowd': taken as 0 (an ordinary object)",
    "outside": "have a box reaching outside the image: detectron2 clips it",
    "degenerate": "have a box of zero width or height: detectron2 drops them from training",
    "bad_polygon": "have only polygons of fewer than 3 points: detectron2's loader drops the whole object",
    "orphan": "refer to an image_id not in 'images': ignored",
    "no_num_keypoints": "have keypoints but no 'num_keypoints': filled in (COCOeval ignores objects with 0)",
}


def summarize(name: str, json_file: str, image_root: str, data: dict, sha256: str) -> Summary:
    """Check one parsed file against the format: refuse what would crash later, count what would skew AP."""
    cats = data["categories"]
    for c in cats:
        if not isinstance(c, dict) or not isinstance(c.get("id"), int) or not isinstance(c.get("name"), str):
            raise DatasetError(f"{json_file}: category {c!r} lacks an integer 'id' and a 'name'")
    ids = [c["id"] for c in cats]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DatasetError(f"{json_file}: category id {dup} appears twice in 'categories'")
    categories = sorted((c["id"], c["name"]) for c in cats)
    keypoints = next((list(c["keypoints"]) for c in cats if c.get("keypoints")), [])
    images = {}
    for img in data["images"]:
        if not isinstance(img, dict) or any(k not in img for k in ("id", "file_name", "width", "height")):
            raise DatasetError(f"{json_file}: image {str(img)[:80]} lacks one of id, file_name, width, "
                               "height")
        images[img["id"]] = img
    s = Summary(name, os.path.abspath(json_file), os.path.abspath(image_root), sha256, len(images),
                categories, keypoints)
    s.image_list = [(os.path.join(s.image_root, img["file_name"]), img["width"], img["height"])
                    for img in images.values()]
    counts = _Counts()
    annotated, seen = set(), set()

    def check(a, aid, where: str) -> None:
        """One annotation: raise on what would crash, count what would skew AP, tally its mask kind."""
        if aid in seen:  # detectron2's loader asserts unique ids
            raise DatasetError(f"{json_file}: {where} appears twice; annotation ids must be unique")
        seen.add(aid)
        if isinstance(a, dict) and a.get("ignore", 0):
            raise DatasetError(f"{json_file}: {where} has 'ignore' set, which detectron2 does not support; "
                               "mark such objects iscrowd 1")
        if not isinstance(a, dict) or len(a.get("bbox") or ()) != 4 or "category_id" not in a:
            img = images.get(a.get("image_id")) if isinstance(a, dict) else None
            of = f"of {img['file_name']} " if img else ""
            raise DatasetError(f"{json_file}: {where} {of}lacks a 4-number bbox or a category_id")
        if a["category_id"] not in ids:
            raise DatasetError(f"{json_file}: {where} has category_id {a['category_id']}, which is not in "
                               "'categories'")
        img = images.get(a.get("image_id"))
        if img is None:
            counts.add("orphan", where)
            return
        annotated.add(img["id"])
        crowd = a.get("iscrowd")
        if crowd is None:
            counts.add("no_iscrowd", where)
        segm = a.get("segmentation")
        if isinstance(segm, dict):
            if segm.get("size") != [img["height"], img["width"]] or "counts" not in segm:
                raise DatasetError(f"{json_file}: {where}: its RLE mask has size {segm.get('size')}, but "
                                   f"image {img['file_name']} is {img['height']}x{img['width']} (height x "
                                   "width)")
        elif segm and not (isinstance(segm, list) and all(isinstance(p, list) for p in segm)):
            raise DatasetError(f"{json_file}: {where}: 'segmentation' is neither a list of polygons nor an "
                               "RLE dict")
        if crowd:
            s.crowd_no_mask += not segm
        else:
            s.objects += 1
            if isinstance(segm, dict):
                s.rle += 1
            elif segm:
                if not any(len(p) % 2 == 0 and len(p) >= 6 for p in segm):
                    counts.add("bad_polygon", where)
                s.polygon += 1
            else:
                s.no_mask += 1
            kp = a.get("keypoints")
            if not kp:
                s.no_keypoints += 1
            elif keypoints and len(kp) != 3 * len(keypoints) and s.bad_keypoints is None:
                s.bad_keypoints = f"{where} has {len(kp)} keypoint values, not 3 x {len(keypoints)}"
            if kp and "num_keypoints" not in a:
                counts.add("no_num_keypoints", where)
        x, y, w, h = a["bbox"]
        if w <= 0 or h <= 0:
            counts.add("degenerate", where)
        elif x < -1 or y < -1 or x + w > img["width"] + 1 or y + h > img["height"] + 1:
            counts.add("outside", where)
        area = a.get("area")
        if area is None:
            counts.add("no_area", where)
        elif w > 0 and h > 0 and not 0 < area <= 1.05 * w * h + 1:  # a mask lies inside its box
            counts.add("bad_area", f"{where} (area {area:g}, box {w:g}x{h:g})")

    for a in data["annotations"]:
        aid = a.get("id") if isinstance(a, dict) else None
        where = f"annotation id {aid}"
        try:
            check(a, aid, where)
        except (TypeError, ValueError, AttributeError) as e:  # a field of the wrong type (a string box, ...)
            raise DatasetError(f"{json_file}: {where}: a field has the wrong type "
                               f"({type(e).__name__}: {e})") from None
    for kind, text in WARNINGS.items():
        if kind in counts.n:
            s.warnings.append(f"{counts.n[kind]} of {len(data['annotations'])} annotations {text}; first: "
                              f"{counts.first[kind]}")
    empty = len(images) - len(annotated)
    if empty:
        first = next(img["file_name"] for i, img in images.items() if i not in annotated)
        s.warnings.append(f"{empty} of {len(images)} images have no annotations: detectron2 leaves them out "
                          "of training (DATALOADER.FILTER_EMPTY_ANNOTATIONS); a test set scores them as "
                          f"images without objects; first: {first}")
    s.completed = [f for f, kind in (("area", "no_area"), ("iscrowd", "no_iscrowd"),
                                     ("num_keypoints", "no_num_keypoints")) if kind in counts.n]
    return s


def complete(data: dict) -> dict:
    """The file with the fields COCOeval reads filled in where missing: `area` as COCO computes it (the mask's
    pixel count, else the box's area), `iscrowd` 0, `num_keypoints` the visible count. Nothing else
    changes."""
    from pycocotools import mask as mask_util

    images = {img["id"]: img for img in data["images"]}
    out = dict(data, annotations=[])
    for a in data["annotations"]:
        a = dict(a)
        a.setdefault("iscrowd", 0)
        if "num_keypoints" not in a and a.get("keypoints"):
            a["num_keypoints"] = sum(1 for v in a["keypoints"][2::3] if v > 0)
        img = images.get(a.get("image_id"))
        if "area" not in a:
            segm = a.get("segmentation")
            if img is not None and segm:
                h, w = img["height"], img["width"]
                if isinstance(segm, list):
                    rle = mask_util.merge(mask_util.frPyObjects([p for p in segm if len(p) >= 6], h, w))
                elif isinstance(segm["counts"], list):
                    rle = mask_util.frPyObjects(segm, h, w)
                else:
                    rle = {"size": segm["size"], "counts": segm["counts"].encode()}
                a["area"] = float(mask_util.area(rle))
            else:
                a["area"] = float(a["bbox"][2] * a["bbox"][3])
        out["annotations"].append(a)
    return out
