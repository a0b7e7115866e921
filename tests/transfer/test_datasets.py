"""The synthetic data generator, users' COCO json registration, and bad data as one-line DatasetErrors."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from transfer import compat

compat.apply()

from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.data.datasets.builtin_meta import COCO_PERSON_KEYPOINT_FLIP_MAP  # noqa: E402
from detectron2.data.datasets.cityscapes import load_cityscapes_instances  # noqa: E402

from transfer import datasets  # noqa: E402
from transfer.datasets import DatasetError  # noqa: E402


# ---------------------------------------------------------------- tools/data/detection.py
def test_coco_files_are_consistent(detection_data):
    from pycocotools.coco import COCO

    coco = COCO(detection_data["coco"]["instances"])
    assert len(coco.getCatIds()) == 80 and len(coco.getImgIds()) == 10
    for ann in coco.dataset["annotations"]:
        img = coco.imgs[ann["image_id"]]
        with Image.open(os.path.join(detection_data["coco"]["image_dir"], img["file_name"])) as im:
            assert im.size == (img["width"], img["height"])
        mask = coco.annToMask(ann)  # the polygon fills its box
        ys, xs = np.nonzero(mask)
        x, y, w, h = ann["bbox"]
        assert abs(xs.min() - x) <= 1 and abs(xs.max() + 1 - (x + w)) <= 1 and abs(ys.min() - y) <= 1
        assert 0.5 * w * h < mask.sum() <= (w + 1) * (h + 1)

    kps = COCO(detection_data["coco"]["keypoints"])
    assert len(kps.dataset["categories"][0]["keypoints"]) == 17
    for ann in kps.dataset["annotations"]:
        xy = np.asarray(ann["keypoints"]).reshape(17, 3)
        x, y, w, h = ann["bbox"]
        assert ann["num_keypoints"] == 17 and (xy[:, 2] == 2).all()
        assert (xy[:, 0] >= x).all() and (xy[:, 0] <= x + w).all() and (xy[:, 1] >= y).all()


def test_cityscapes_tree_reads_through_detectron2s_loader(detection_data):
    """detectron2's loader (polygons via shapely, a process pool) agrees with the instanceIds images that
    cityscapesscripts evaluates against."""
    cs = detection_data["cityscapes"]
    dicts = load_cityscapes_instances(os.path.join(cs["image_dir"], "val"), os.path.join(cs["gt_dir"], "val"),
                                      from_json=True, to_polygons=True)
    assert len(dicts) == 10 and all("frankfurt" in d["file_name"] for d in dicts)
    for d in dicts:
        ids = np.asarray(Image.open(d["file_name"].replace("leftImg8bit", "gtFine").replace(
            "gtFine.png", "gtFine_instanceIds.png")))
        visible = [i for i in np.unique(ids) if i >= 1000]
        assert len(d["annotations"]) == len(visible) > 0
        assert all(0 <= a["category_id"] < 8 for a in d["annotations"])
        for i in visible:  # every visible instance has an annotation whose box holds its pixels
            ys, xs = np.nonzero(ids == i)
            boxes = [a["bbox"] for a in d["annotations"]]  # XYXY
            assert any(x0 - 1 <= xs.min() and xs.max() <= x1 + 1 and y0 - 1 <= ys.min() and ys.max() <= y1 + 1
                       for x0, y0, x1, y1 in boxes)


# ---------------------------------------------------------------- users' datasets
def test_parse_spec():
    assert datasets.parse_spec("mine=a/b.json:c/d") == ("mine", "a/b.json", "c/d")
    with pytest.raises(DatasetError, match="NAME=ANNOTATIONS.json:IMAGE_DIR"):
        datasets.parse_spec("mine=a/b.txt:c")


def test_register_coco_json_reads_classes_and_keypoints(detection_data):
    c = detection_data["coco"]
    s = datasets.register_coco_json("ds_instances", c["instances"], c["image_dir"])
    assert (len(s.categories), len(s.keypoint_names)) == (80, 0)
    s = datasets.register_coco_json("ds_people", c["keypoints"], c["image_dir"])
    assert (len(s.categories), len(s.keypoint_names)) == (1, 17)
    meta = MetadataCatalog.get("ds_people")
    assert meta.evaluator_type == "coco"  # training flips need the left/right pairs, derived from the names
    assert set(meta.keypoint_flip_map) == set(COCO_PERSON_KEYPOINT_FLIP_MAP)
    with pytest.raises(DatasetError, match="is taken"):
        datasets.register_coco_json("coco_2017_val", c["instances"], c["image_dir"])


@pytest.mark.parametrize("content,message", [
    ('{"images": [', "is not valid JSON: .* at line 1 column 13"),
    ('{"images": [], "annotations": []}', "not a COCO annotation file: no list 'categories'"),
    ("[1, 2]", "not a COCO annotation file"),
])
def test_malformed_json_is_one_line(tmp_path, content, message):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    with pytest.raises(DatasetError, match=message):
        datasets.register_coco_json("ds_bad", str(bad), str(tmp_path))
    with pytest.raises(DatasetError, match="does not exist"):
        datasets.register_coco_json("ds_bad", str(tmp_path / "nope.json"), str(tmp_path))


# ---------------------------------------------------------------- checks at load time
def test_unknown_name_suggests_close_matches():
    with pytest.raises(DatasetError, match="unknown dataset 'coco_2017_vall'.*did you mean coco_2017_val"):
        datasets.check_dataset("coco_2017_vall")


def _copy(detection_data, tmp_path, edit) -> tuple[str, str]:
    with open(detection_data["coco"]["instances"]) as f:
        data = json.load(f)
    edit(data)
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(data))
    return str(path), detection_data["coco"]["image_dir"]


def test_missing_image_is_named_when_loading(detection_data, tmp_path):
    def rename_first(data):
        data["images"][0]["file_name"] = "gone.jpg"

    datasets.register_coco_json("ds_missing", *_copy(detection_data, tmp_path, rename_first))
    datasets.check_dataset("ds_missing")
    with pytest.raises(DatasetError, match=r"1 of 10 annotated images are missing, first: .*/gone.jpg"):
        DatasetCatalog.get("ds_missing")


def _drop_bbox(data):
    del data["annotations"][3]["bbox"]


def _duplicate_id(data):
    data["annotations"][1]["id"] = data["annotations"][0]["id"]


def _unknown_category(data):
    data["annotations"][2]["category_id"] = 999


@pytest.mark.parametrize("edit,message", [(_drop_bbox, "annotation id 4 of .*jpg lacks a 4-number bbox"),
                                          (_duplicate_id, "annotation id 1 appears twice"),
                                          (_unknown_category, "annotation id 3 has category_id 999")])
def test_malformed_annotation_is_named_when_inspected(detection_data, tmp_path, edit, message):
    json_file, image_dir = _copy(detection_data, tmp_path, edit)
    with pytest.raises(DatasetError, match=f"{json_file}: {message}"):
        datasets.register_coco_json(f"ds{edit.__name__}", json_file, image_dir)


def test_what_detectron2s_loader_rejects_is_named_when_loading(detection_data, tmp_path):
    """A file that passes inspection but that detectron2's loader refuses still fails in one line."""
    json_file, image_dir = _copy(detection_data, tmp_path, lambda d: None)
    datasets.register_coco_json("ds_loader_fails", json_file, image_dir)
    datasets.check_dataset("ds_loader_fails")
    os.remove(json_file)  # gone between inspection and loading
    with pytest.raises(DatasetError, match=f"'ds_loader_fails': malformed annotations in {json_file}"):
        DatasetCatalog.get("ds_loader_fails")


class _Decode:
    """A minimal mapper: decode the image as detectron2's DatasetMapper does."""

    def __call__(self, d):
        from detectron2.data import detection_utils

        return torch.as_tensor(detection_utils.read_image(d["file_name"], format="RGB").copy())


def test_corrupt_image_is_named_even_from_a_loader_worker(detection_data, tmp_path):
    good = os.path.join(detection_data["coco"]["image_dir"], "000000000001.jpg")
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(open(good, "rb").read()[:200])  # a truncated JPEG
    mapper = datasets.CheckedMapper(_Decode())
    assert mapper({"file_name": good}).shape[-1] == 3
    loader = torch.utils.data.DataLoader(_Mapped([{"file_name": str(corrupt)}], mapper), batch_size=None,
                                         num_workers=1)
    with pytest.raises(DatasetError) as raised:
        list(loader)
    assert "Traceback" in str(raised.value)  # torch re-raised it with the worker's traceback in the message
    assert datasets.one_line(raised.value).startswith(f"cannot read image {corrupt}: OSError")


class _Mapped(torch.utils.data.Dataset):
    def __init__(self, items, mapper):
        self.items, self.mapper = items, mapper

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.mapper(self.items[i])
