"""Oracle tests: the ground truth fed back as score-1.0 predictions scores AP 100 through each evaluator
that train_net builds (COCO bbox + segm, COCO keypoints, Cityscapes instances): the wiring is proven, not
assumed."""
from __future__ import annotations

import glob
import os

import numpy as np
import pytest
import torch
from PIL import Image

from transfer import compat

compat.apply()

from cityscapesscripts.helpers.labels import id2label, labels  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.structures import Boxes, BoxMode, Instances, polygons_to_bitmask  # noqa: E402

from transfer import datasets  # noqa: E402
from transfer.train_net import build_evaluator  # noqa: E402

# detectron2's 8 Cityscapes classes, in its order
CITYSCAPES_THINGS = [lb.name for lb in labels if lb.hasInstances and not lb.ignoreInEval]


def coco_oracle(d: dict, drop_every_other: bool = False) -> Instances:
    """A detectron2 dataset dict's annotations as predictions with score 1."""
    anns = d["annotations"][::2] if drop_every_other else d["annotations"]
    h, w = d["height"], d["width"]
    inst = Instances((h, w))
    boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in anns]
    inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4))
    inst.scores = torch.ones(len(anns))
    inst.pred_classes = torch.tensor([a["category_id"] for a in anns], dtype=torch.int64)
    # N x H x W, rasterised by pycocotools as the evaluator rasterises the ground-truth polygons
    inst.pred_masks = torch.from_numpy(np.stack([polygons_to_bitmask(
        [np.asarray(p) for p in a["segmentation"]], h, w) for a in anns]).reshape(-1, h, w))
    if "keypoints" in anns[0]:
        # N x 17 x (x, y, v): detectron2's loader added 0.5 to x, y; its evaluator takes it off again
        inst.pred_keypoints = torch.tensor([a["keypoints"] for a in anns]).reshape(-1, 17, 3)
    return inst


def evaluate(cfg, name: str, inputs: list[dict], outputs: list[dict], out_dir) -> dict:
    evaluator = build_evaluator(cfg, name, str(out_dir))
    evaluator.reset()
    evaluator.process(inputs, outputs)
    return evaluator.evaluate()


def coco_cfg(mask: bool, keypoints: bool):
    cfg = get_cfg()
    cfg.MODEL.MASK_ON, cfg.MODEL.KEYPOINT_ON = mask, keypoints
    return cfg


@pytest.fixture(scope="module")
def coco_instances(detection_data):
    c = detection_data["coco"]
    datasets.register_coco_json("oracle_instances", c["instances"], c["image_dir"])
    return DatasetCatalog.get("oracle_instances")  # also fills the category-id mapping the evaluator needs


def test_coco_bbox_and_segm_oracle_scores_100(coco_instances, tmp_path):
    inputs = [{"image_id": d["image_id"], "file_name": d["file_name"]} for d in coco_instances]
    outputs = [{"instances": coco_oracle(d)} for d in coco_instances]
    results = evaluate(coco_cfg(True, False), "oracle_instances", inputs, outputs, tmp_path)
    assert set(results) == {"bbox", "segm"}
    for task in ("bbox", "segm"):
        assert results[task]["AP"] == pytest.approx(100) and results[task]["AP75"] == pytest.approx(100)
        assert results[task]["AP-person"] == pytest.approx(100)


def test_coco_evaluator_sees_missing_detections(coco_instances, tmp_path):
    """The control: the same wiring with every other ground-truth object left out scores well below 100."""
    inputs = [{"image_id": d["image_id"], "file_name": d["file_name"]} for d in coco_instances]
    outputs = [{"instances": coco_oracle(d, drop_every_other=True)} for d in coco_instances]
    results = evaluate(coco_cfg(True, False), "oracle_instances", inputs, outputs, tmp_path)
    assert 20 < results["bbox"]["AP"] < 90 and 20 < results["segm"]["AP"] < 90


def test_coco_keypoints_oracle_scores_100(detection_data, tmp_path):
    c = detection_data["coco"]
    datasets.register_coco_json("oracle_keypoints", c["keypoints"], c["image_dir"])
    dicts = DatasetCatalog.get("oracle_keypoints")
    assert MetadataCatalog.get("oracle_keypoints").evaluator_type == "coco"
    inputs = [{"image_id": d["image_id"], "file_name": d["file_name"]} for d in dicts]
    outputs = [{"instances": coco_oracle(d)} for d in dicts]
    results = evaluate(coco_cfg(False, True), "oracle_keypoints", inputs, outputs, tmp_path)
    assert set(results) == {"bbox", "keypoints"}
    assert results["keypoints"]["AP"] == pytest.approx(100)
    assert results["keypoints"]["AP75"] == pytest.approx(100)


def test_cityscapes_oracle_scores_100(detection_data, tmp_path, monkeypatch):
    cs = detection_data["cityscapes"]
    image_dir, gt_dir = os.path.join(cs["image_dir"], "val"), os.path.join(cs["gt_dir"], "val")
    MetadataCatalog.get("oracle_cityscapes").set(image_dir=image_dir, gt_dir=gt_dir,
                                                  thing_classes=CITYSCAPES_THINGS,
                                                  evaluator_type="cityscapes_instance")
    monkeypatch.chdir(tmp_path)  # cityscapesscripts would drop files into the working directory
    inputs, outputs = [], []
    for gt_file in sorted(glob.glob(os.path.join(gt_dir, "*", "*_gtFine_instanceIds.png"))):
        ids = np.asarray(Image.open(gt_file))  # H x W: class id * 1000 + instance for "thing" pixels
        instance_ids = [i for i in np.unique(ids) if i >= 1000]
        inst = Instances(ids.shape)
        names = [id2label[i // 1000].name for i in instance_ids]
        inst.pred_classes = torch.tensor([CITYSCAPES_THINGS.index(n) for n in names])
        inst.scores = torch.ones(len(instance_ids))
        inst.pred_masks = torch.from_numpy(np.stack([ids == i for i in instance_ids]))  # N x H x W
        city = os.path.basename(os.path.dirname(gt_file))
        image = os.path.basename(gt_file).replace("_gtFine_instanceIds.png", "_leftImg8bit.png")
        inputs.append({"file_name": os.path.join(image_dir, city, image), "image_id": image})
        outputs.append({"instances": inst})
    assert len(inputs) == 10 and sum(len(o["instances"]) for o in outputs) >= 20
    results = evaluate(get_cfg(), "oracle_cityscapes", inputs, outputs, tmp_path)
    assert results["segm"]["AP"] == pytest.approx(100) and results["segm"]["AP50"] == pytest.approx(100)
    assert os.listdir(tmp_path) == []  # nothing left in the working directory (no matches.json)


# ---------------------------------------------------------------- detectron2's compiled COCOeval
def noisy(d: dict, rng: np.random.Generator) -> Instances:
    """The oracle of one image made imperfect: jittered boxes and keypoints, masks shifted by a few pixels,
    every third object missed, random scores and one false positive."""
    inst = coco_oracle(d)
    keep = torch.tensor([i % 3 != 2 for i in range(len(inst))])
    inst = inst[keep]
    n = len(inst)
    boxes = inst.pred_boxes.tensor + torch.from_numpy(rng.normal(0, 3, size=(n, 4)))
    fp = torch.tensor([[5.0, 5.0, 40.0, 30.0]], dtype=boxes.dtype)
    out = Instances(inst.image_size)
    out.pred_boxes = Boxes(torch.cat([boxes, fp]))
    out.scores = torch.from_numpy(rng.uniform(0.05, 1, size=n + 1)).float()
    out.pred_classes = torch.cat([inst.pred_classes, inst.pred_classes[:1]])
    shift = (int(rng.integers(-3, 4)), int(rng.integers(-3, 4)))
    masks = torch.roll(inst.pred_masks, shifts=shift, dims=(1, 2))
    fp_mask = torch.zeros((1, *masks.shape[1:]), dtype=masks.dtype)
    fp_mask[:, 5:30, 5:40] = 1
    out.pred_masks = torch.cat([masks, fp_mask])
    if inst.has("pred_keypoints"):
        kps = inst.pred_keypoints.clone()
        kps[:, :, :2] += torch.from_numpy(rng.normal(0, 2, size=(n, 17, 2))).float()
        out.pred_keypoints = torch.cat([kps, kps[:1]])
    return out


def coco_results(name: str, dicts: list[dict], outputs: list[dict], tasks, fast: bool, out_dir) -> dict:
    from detectron2.evaluation import COCOEvaluator

    evaluator = COCOEvaluator(name, tasks=tasks, distributed=False, output_dir=str(out_dir),
                              use_fast_impl=fast)
    evaluator.reset()
    evaluator.process([{"image_id": d["image_id"], "file_name": d["file_name"]} for d in dicts], outputs)
    return evaluator.evaluate()


@pytest.mark.skipif(not compat.has_compiled_ops(),
                    reason="needs detectron2's compiled ops (make test-compiled)")
@pytest.mark.parametrize("data", ["instances", "keypoints"])
@pytest.mark.parametrize("predictions", ["oracle", "noisy"])
def test_compiled_cocoeval_equals_pycocotools(detection_data, tmp_path, data, predictions):
    """With compiled ops, COCOEvaluator(use_fast_impl=True) runs detectron2's own C++ COCOeval (not the
    faster-coco-eval stand-in of tier 3), and every metric equals pycocotools' (use_fast_impl=False)."""
    from detectron2.evaluation import coco_evaluation, fast_eval_api

    assert coco_evaluation.COCOeval_opt is fast_eval_api.COCOeval_opt  # compat kept detectron2's own
    c = detection_data["coco"]
    name = f"compiled_eval_{data}"
    if name not in DatasetCatalog.list():
        datasets.register_coco_json(name, c[data], c["image_dir"])
    dicts = DatasetCatalog.get(name)
    rng = np.random.default_rng(0)
    outputs = [{"instances": coco_oracle(d) if predictions == "oracle" else noisy(d, rng)} for d in dicts]
    tasks = ("bbox", "segm") if data == "instances" else ("bbox", "keypoints")
    fast = coco_results(name, dicts, outputs, tasks, True, tmp_path / "fast")
    ref = coco_results(name, dicts, outputs, tasks, False, tmp_path / "ref")
    assert set(fast) == set(ref) == set(tasks)
    for task in tasks:
        assert ref[task]["AP"] > (99 if predictions == "oracle" else 10)  # a real score, not 0 == 0
        if predictions == "noisy":
            assert ref[task]["AP"] < 95
        assert set(fast[task]) == set(ref[task])
        for metric, value in ref[task].items():
            assert fast[task][metric] == pytest.approx(value, abs=1e-9, nan_ok=True), (task, metric)
