"""The compatibility layer: detectron2 imports, stand-ins fail clearly, the fast COCO evaluator is exact."""
import copy

import numpy as np
import pytest

from transfer import compat

compat.apply()


def test_detectron2_imports_and_models_build():
    import detectron2
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    cfg = get_cfg()
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    model = build_model(cfg)
    assert detectron2.__version__
    assert sum(p.numel() for p in model.parameters()) > 1_000_000


@pytest.mark.skipif(compat.has_compiled_ops(), reason="a compiled detectron2 has the real ops")
def test_missing_compiled_op_names_the_build():
    from detectron2 import _C

    with pytest.raises(compat.MissingCompiledOps, match="compiled extension"):
        _ = _C.deform_conv_forward


def _coco_pair(rng, n_images=6):
    """A small ground truth with boxes, polygon masks and keypoints, and noisy detections of it."""
    images, anns, dets = [], [], []
    aid = 1
    for i in range(1, n_images + 1):
        images.append({"id": i, "width": 200, "height": 160, "file_name": f"{i}.jpg"})
        for _ in range(rng.integers(1, 5)):
            x, y = rng.uniform(0, 120), rng.uniform(0, 90)
            w, h = rng.uniform(15, 70), rng.uniform(15, 60)
            poly = [x, y, x + w, y, x + w, y + h, x, y + h]
            kps = []
            for _k in range(17):
                kps += [float(x + rng.uniform(0, w)), float(y + rng.uniform(0, h)), 2]
            anns.append({"id": aid, "image_id": i, "category_id": 1, "bbox": [x, y, w, h], "area": w * h,
                         "iscrowd": 0, "segmentation": [poly], "keypoints": kps, "num_keypoints": 17})
            j = rng.normal(0, 4, size=4)
            d = {"image_id": i, "category_id": 1, "score": float(rng.uniform(0.1, 1)),
                 "bbox": [x + j[0], y + j[1], max(w + j[2], 2), max(h + j[3], 2)],
                 "segmentation": [[v + rng.normal(0, 3) for v in poly]],
                 "keypoints": [v + (rng.normal(0, 3) if k % 3 != 2 else 0) for k, v in enumerate(kps)]}
            dets.append(d)
            aid += 1
    gt = {"images": images, "annotations": anns,
          "categories": [{"id": 1, "name": "person", "keypoints": [str(k) for k in range(17)],
                          "skeleton": []}]}
    return gt, dets


@pytest.mark.parametrize("iou_type", ["bbox", "segm", "keypoints"])
def test_faster_coco_eval_equals_pycocotools(iou_type):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt, dets = _coco_pair(np.random.default_rng(0))

    def stats(evaluator_cls):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(dets))
        e = evaluator_cls(coco_gt, coco_dt, iou_type)
        e.evaluate()
        e.accumulate()
        e.summarize()
        return np.asarray(e.stats)

    ref, fast = stats(COCOeval), stats(compat.fast_cocoeval_class())
    assert ref[0] > 0.05  # the detections are close enough to score: the comparison is not 0 == 0
    np.testing.assert_allclose(fast[: len(ref)], ref, atol=1e-12)


def test_detectron2_evaluator_uses_a_fast_cocoeval():
    """use_fast_impl=True: detectron2's own C++ COCOeval where the compiled ops exist (compared with
    pycocotools in test_evaluators.py), else faster-coco-eval through compat (compared above)."""
    import faster_coco_eval
    from detectron2.evaluation import coco_evaluation, fast_eval_api

    if compat.has_compiled_ops():
        assert coco_evaluation.COCOeval_opt is fast_eval_api.COCOeval_opt
        assert not issubclass(coco_evaluation.COCOeval_opt, faster_coco_eval.COCOeval_faster)
    else:
        assert issubclass(coco_evaluation.COCOeval_opt, faster_coco_eval.COCOeval_faster)


def test_cityscapes_evaluator_scores_a_class_whose_predictions_are_all_ignored_as_ap_0(monkeypatch):
    # cityscapesscripts 2.3.0 crashed here (IndexError on the cumsum of an empty array).
    from cityscapesscripts.evaluation import evalInstanceLevelSemanticLabeling as cs_eval

    monkeypatch.setattr(cs_eval.args, "instLabels", ["car", "person"])  # set by the evaluator's caller
    label = "car"
    gt = {"instID": 24001, "labelID": 24, "pixelCount": 5000, "medDist": 0, "distConf": 1.0,
          "matchedPred": [], "instance": None}
    # a prediction that overlaps nothing and lies entirely on void pixels: ignored, so no FP is counted
    pred = {"imgName": "x.png", "predID": 0, "labelID": 24, "pixelCount": 100, "confidence": 0.9,
            "voidIntersection": 100, "matchedGt": []}
    names = cs_eval.args.instLabels
    matches = {"img": {"groundTruth": {n: ([gt] if n == label else []) for n in names},
                       "prediction": {n: ([pred] if n == label else []) for n in names}}}
    ap = cs_eval.evaluateMatches(matches, cs_eval.args)
    assert np.all(ap[:, 0, :] == 0.0)  # car: ground truth, no valid prediction -> AP 0
    assert np.all(np.isnan(ap[:, 1, :]))  # person: neither -> NaN, as cityscapesscripts defines
