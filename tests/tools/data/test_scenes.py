"""tools/data/scenes.py: disjoint sources, masks = pasted regions, deterministic checksum."""
import json

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from tests.tools.data.fake_cifar import fake_cifar
from tools.data import scenes

SMALL = dict(train=12, val=6, canvas=64, min_size=16, max_size=32, max_objects=3)


def test_scenes_use_disjoint_sources_and_masks_are_the_pasted_images(tmp_path):
    c10 = fake_cifar(tmp_path / "c10")
    m = scenes.build(tmp_path / "scenes", c10 / "test", **SMALL)
    coco = {s: json.loads((tmp_path / "scenes" / f"{s}.json").read_text()) for s in ("train", "val")}
    sources = {s: {a["source"] for a in coco[s]["annotations"]} for s in coco}
    assert sources["train"] and sources["val"] and not sources["train"] & sources["val"]
    assert m["counts"]["train"]["images"] == 12 and m["counts"]["val"]["images"] == 6
    for split in ("train", "val"):
        images = {i["id"]: i for i in coco[split]["images"]}
        for a in coco[split]["annotations"]:
            info = images[a["image_id"]]
            scene = np.asarray(Image.open(tmp_path / "scenes" / split / info["file_name"]))
            x, y, w, h = a["bbox"]
            assert w == h and 16 <= w <= 32 and a["area"] == w * h
            # the mask, rasterised by pycocotools as detectron2's evaluator does, is exactly the pasted square
            rle = mask_utils.frPyObjects(a["segmentation"], info["height"], info["width"])
            mask = mask_utils.decode(mask_utils.merge(rle)).astype(bool)
            square = np.zeros_like(mask)
            square[y:y + h, x:x + w] = True
            assert (mask == square).all()
            # ... and holds the source image of its category, resized
            src = Image.open(c10 / "test" / a["source"]).convert("RGB").resize((w, h), Image.BICUBIC)
            assert (scene[y:y + h, x:x + w] == np.asarray(src)).all()
            assert scenes.CLASSES[a["category_id"] - 1] == a["source"].split("/")[0]


def test_scene_checksum_is_deterministic_and_depends_on_the_seed(tmp_path):
    c10 = fake_cifar(tmp_path / "c10")
    a = scenes.build(tmp_path / "a", c10 / "test", **SMALL)
    b = scenes.build(tmp_path / "b", c10 / "test", **SMALL)
    c = scenes.build(tmp_path / "c", c10 / "test", **SMALL, seed=1)
    assert a["sha256"] == b["sha256"] != c["sha256"]
    # a rerun with the same settings keeps the set; other settings in the same folder are refused
    assert scenes.build(tmp_path / "a", c10 / "test", **SMALL) == a
    with pytest.raises(scenes.SceneError, match="other settings"):
        scenes.build(tmp_path / "a", c10 / "test", **{**SMALL, "train": 5})
    assert scenes.main([str(tmp_path / "d"), "--cifar-test", str(tmp_path / "nope")]) == 2
    assert not (tmp_path / "d").exists()
