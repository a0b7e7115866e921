"""Write small synthetic detection datasets in the real on-disk formats, for tests and the demo.

    python -m tools.data.detection OUT_DIR [--images 10] [--seed 0]
    DETECTRON2_DATASETS=OUT_DIR python -m transfer.train_net \\
        --config-file configs/transfer/instant/coco_R_50_FPN_1x_instant.yaml

OUT_DIR gets the layout detectron2's builtin datasets expect under $DETECTRON2_DATASETS, for the splits that
the instant configs use (coco_2017_val_100, keypoints_coco_2017_val_100, cityscapes_fine_instance_seg_*):

    coco/val2017/<id>.jpg
    coco/annotations/instances_val2017_100.json          all 80 COCO categories; boxes + polygon masks
    coco/annotations/person_keypoints_val2017_100.json   the persons of the same images, 17 keypoints each
    cityscapes/leftImg8bit/{train,val}/<city>/<city>_000000_<frame>_leftImg8bit.png
    cityscapes/gtFine/{train,val}/<city>/<city>_000000_<frame>_gtFine_<kind>
        (<kind>: polygons.json, instanceIds.png, labelIds.png)

The Cityscapes label images are drawn from the polygon JSON by cityscapesscripts' own json2labelImg and
createInstanceImage (the drawing half of json2instanceImg), under real city names (aachen: train, frankfurt:
val), so detectron2's loader and cityscapesscripts' evaluator read them as they read the real dataset. The
images are flat-coloured shapes on noise: enough to train a few iterations and to prove evaluators, no more.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
from PIL import Image, ImageDraw

# COCO's 17 person keypoints (the order of person_keypoints_*.json) and where they sit in a unit box
KEYPOINT_NAMES = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
                  "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
                  "left_knee", "right_knee", "left_ankle", "right_ankle")
POSE = ((.5, .08), (.56, .05), (.44, .05), (.62, .08), (.38, .08), (.7, .25), (.3, .25), (.8, .42),
        (.2, .42), (.85, .58), (.15, .58), (.62, .58), (.38, .58), (.65, .78), (.35, .78), (.66, .96),
        (.34, .96))
SKELETON = [[16, 14], [14, 12], [17, 15], [15, 13], [12, 13], [6, 12], [7, 13], [6, 7], [6, 8], [7, 9],
            [8, 10], [9, 11], [2, 3], [1, 2], [1, 3], [2, 4], [3, 5], [4, 6], [5, 7]]
COCO_IDS = {"person": 1, "car": 3, "dog": 18}  # the categories that get instances (all 80 are listed)
COLORS = {"person": (230, 40, 40), "car": (40, 60, 230), "dog": (240, 200, 40)}
# a polygon in a unit box per category: an octagon (person), a low rectangle (car), a hexagon (dog)
SHAPES = {"person": ((.3, 0), (.7, 0), (1, .3), (1, .7), (.7, 1), (.3, 1), (0, .7), (0, .3)),
          "car": ((0, .2), (1, .2), (1, 1), (0, 1)),
          "dog": ((.25, 0), (.75, 0), (1, .5), (.75, 1), (.25, 1), (0, .5))}
CITYSCAPES_THINGS = ("person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle")
CITIES = {"train": "aachen", "val": "frankfurt"}


def coco_categories() -> list[dict]:
    """COCO's 80 thing categories with their real ids: detectron2's builtin metadata must match the json."""
    from transfer import compat

    compat.apply()
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

    return [{"id": c["id"], "name": c["name"], "supercategory": "thing"} for c in COCO_CATEGORIES
            if c["isthing"]]


def background(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    noise = rng.integers(60, 120, size=(h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    return Image.fromarray(noise).resize((w, h), Image.BILINEAR)


def polygon_area(poly: list[float]) -> float:
    xs, ys = np.asarray(poly[0::2]), np.asarray(poly[1::2])
    return float(0.5 * abs(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1))))


def make_coco(out_dir: str, num_images: int, rng: np.random.Generator) -> dict:
    image_dir = os.path.join(out_dir, "coco", "val2017")
    ann_dir = os.path.join(out_dir, "coco", "annotations")
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(ann_dir, exist_ok=True)
    images, instances, persons = [], [], []
    for image_id in range(1, num_images + 1):
        w, h = int(rng.integers(144, 201)), int(rng.integers(112, 161))
        img = background(rng, w, h)
        draw = ImageDraw.Draw(img)
        extra = [str(rng.choice(list(COCO_IDS))) for _ in range(int(rng.integers(0, 3)))]
        for cat in ["person"] + extra:
            bw, bh = float(rng.uniform(0.3, 0.55) * w), float(rng.uniform(0.35, 0.6) * h)
            x, y = float(rng.uniform(0, w - bw)), float(rng.uniform(0, h - bh))
            poly = [round(v, 2) for px, py in SHAPES[cat] for v in (x + px * bw, y + py * bh)]
            draw.polygon(poly, fill=COLORS[cat])
            xs, ys = poly[0::2], poly[1::2]
            ann = {"id": len(instances) + 1, "image_id": image_id, "category_id": COCO_IDS[cat],
                   "segmentation": [poly], "bbox": [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)],
                   "area": polygon_area(poly), "iscrowd": 0}
            instances.append(ann)
            if cat == "person":
                keypoints = []
                for px, py in POSE:
                    kx, ky = x + px * bw, y + py * bh
                    draw.ellipse([kx - 1.5, ky - 1.5, kx + 1.5, ky + 1.5], fill=(255, 255, 255))
                    keypoints += [round(kx, 2), round(ky, 2), 2]  # v = 2: labelled and visible
                persons.append({**ann, "id": len(persons) + 1, "keypoints": keypoints, "num_keypoints": 17})
        file_name = f"{image_id:012d}.jpg"
        img.save(os.path.join(image_dir, file_name), quality=95)
        images.append({"id": image_id, "file_name": file_name, "width": w, "height": h})
    person = {"id": 1, "name": "person", "supercategory": "person", "keypoints": list(KEYPOINT_NAMES),
              "skeleton": SKELETON}
    files = {"instances": os.path.join(ann_dir, "instances_val2017_100.json"),
             "keypoints": os.path.join(ann_dir, "person_keypoints_val2017_100.json")}
    write_json(files["instances"],
               {"images": images, "annotations": instances, "categories": coco_categories()})
    write_json(files["keypoints"], {"images": images, "annotations": persons, "categories": [person]})
    return {**files, "image_dir": image_dir}


def make_cityscapes(out_dir: str, num_images: int, rng: np.random.Generator) -> dict:
    from cityscapesscripts.helpers.annotation import Annotation
    from cityscapesscripts.helpers.labels import name2label
    from cityscapesscripts.preparation.json2instanceImg import createInstanceImage
    from cityscapesscripts.preparation.json2labelImg import json2labelImg

    root = os.path.join(out_dir, "cityscapes")
    w, h = 256, 128
    for split, city in CITIES.items():
        img_dir = os.path.join(root, "leftImg8bit", split, city)
        gt_dir = os.path.join(root, "gtFine", split, city)
        os.makedirs(img_dir, exist_ok=True)
        os.makedirs(gt_dir, exist_ok=True)
        for i in range(num_images):
            stem = f"{city}_000000_{19 + i:06d}"
            # stuff first (drawn under the objects), then 2-4 objects of the 8 instance classes
            objects = [{"label": "sky", "polygon": [[0, 0], [w - 1, 0], [w - 1, 40], [0, 40]]},
                       {"label": "road", "polygon": [[0, 80], [w - 1, 80], [w - 1, h - 1], [0, h - 1]]}]
            for _ in range(int(rng.integers(2, 5))):
                bw, bh = int(rng.integers(24, 64)), int(rng.integers(20, 56))
                x, y = int(rng.integers(0, w - bw)), int(rng.integers(20, h - bh))
                box = [[x, y], [x + bw, y], [x + bw, y + bh], [x, y + bh]]
                objects.append({"label": str(rng.choice(CITYSCAPES_THINGS)), "polygon": box})
            polygons = os.path.join(gt_dir, f"{stem}_gtFine_polygons.json")
            write_json(polygons, {"imgHeight": h, "imgWidth": w, "objects": objects})
            json2labelImg(polygons, os.path.join(gt_dir, f"{stem}_gtFine_labelIds.png"), "ids")
            # json2instanceImg saves a 32-bit ("I") image, which Pillow 13 refuses to write as PNG; the real
            # instanceIds.png are 16-bit, so draw with its createInstanceImage and save as "I;16"
            annotation = Annotation()
            annotation.fromJsonFile(polygons)
            instance_ids = createInstanceImage(annotation, "ids").convert("I;16")
            instance_ids.save(os.path.join(gt_dir, f"{stem}_gtFine_instanceIds.png"))
            img = background(rng, w, h)
            draw = ImageDraw.Draw(img)
            for obj in objects:
                draw.polygon([tuple(p) for p in obj["polygon"]], fill=name2label[obj["label"]].color)
            img.save(os.path.join(img_dir, f"{stem}_leftImg8bit.png"))
    return {"image_dir": os.path.join(root, "leftImg8bit"), "gt_dir": os.path.join(root, "gtFine")}


def write_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, path)


def make_all(out_dir: str, num_images: int = 10, seed: int = 0) -> dict:
    """Write every dataset under out_dir; returns their paths ({"coco": {...}, "cityscapes": {...}})."""
    rng = np.random.default_rng(seed)
    coco = make_coco(out_dir, num_images, rng)
    return {"coco": coco, "cityscapes": make_cityscapes(out_dir, num_images, rng)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.data.detection",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("out_dir", help="becomes a DETECTRON2_DATASETS root")
    parser.add_argument("--images", type=int, default=10, help="images per split (default 10)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.images < 1:
        print("error: --images must be at least 1", file=sys.stderr)
        return 2
    paths = make_all(args.out_dir, args.images, args.seed)
    print(f"COCO:       {paths['coco']['instances']}\n            {paths['coco']['keypoints']}")
    print(f"Cityscapes: {paths['cityscapes']['image_dir']}, {paths['cityscapes']['gt_dir']}")
    print(f"use it with: DETECTRON2_DATASETS={args.out_dir} python -m transfer.train_net --config-file ...")
    return 0


if __name__ == "__main__":
    sys.exit(main())
