"""transfer/train_net.py end to end on CPU: every protocol through its instant config, bad input, scaling."""
from __future__ import annotations

import json
import math
import os
import shutil

import pytest
import yaml

from tests.transfer.conftest import REPO
from tests.transfer.exits import fails_cleanly
from transfer import compat

compat.apply()

INSTANT = REPO / "configs" / "transfer" / "instant"
COCO_METRICS = {"AP", "AP50", "AP75", "APs", "APm", "APl"}


def _ok(proc) -> None:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def _results(out_dir) -> dict:
    with open(os.path.join(out_dir, "results.json")) as f:
        return json.load(f)


def _config(out_dir) -> dict:
    with open(os.path.join(out_dir, "config.yaml")) as f:
        return yaml.safe_load(f)


def _assert_metrics(results: dict, task: str, metrics: set) -> None:
    assert metrics <= set(results[task]), (task, results[task].keys())
    for m in metrics:  # an untrained model scores ~0, but every metric is a number (or null: no GT that size)
        v = results[task][m]
        if v is None:
            assert m in ("APs", "APl"), (task, m)  # synthetic objects are all COCO-"medium"
        else:
            assert 0 <= v <= 100, (task, m, v)


# ---------------------------------------------------------------- the four protocols
@pytest.fixture(scope="module")
def fpn_run(train_net, converted_weights, module_tmp):
    """Table 1 protocol with converted ResNet-18 weights, at 1 image per GPU (--ims-per-gpu 1; the config
    says batch 2)."""
    out = module_tmp("fpn")
    proc = train_net("--config-file", INSTANT / "coco_R_50_FPN_1x_instant.yaml", "--ims-per-gpu", "1",
                     "MODEL.WEIGHTS", converted_weights["resnet18"], "OUTPUT_DIR", out)
    _ok(proc)
    return out, proc


def test_fpn_protocol_trains_and_writes_results(fpn_run):
    out, _ = fpn_run
    results = _results(out)
    assert set(results) == {"bbox", "segm"}
    _assert_metrics(results, "bbox", COCO_METRICS)
    _assert_metrics(results, "segm", COCO_METRICS)
    assert os.path.isfile(out / "model_final.pth") and os.path.isfile(out / "metrics.json")


def test_fpn_consumes_every_converted_tensor(fpn_run):
    out, proc = fpn_run
    with open(out / "weights_report.json") as f:
        report = json.load(f)
    assert report["loaded"] == report["checkpoint_tensors"] == 120  # every ResNet-18 tensor found its place
    assert not any(k.startswith("backbone.bottom_up.") for k in report["not_initialised"])
    assert "backbone.fpn_lateral2.weight" in report["not_initialised"]  # the new layers are listed
    assert f"Loaded {report['loaded']} of {report['checkpoint_tensors']} checkpoint tensors" in proc.stdout


def test_ims_per_gpu_rescales_the_schedule(fpn_run):
    out, _ = fpn_run
    with open(out / "scaling.json") as f:
        record = json.load(f)
    assert record["factor"] == 0.5
    assert record["changed"]["SOLVER.MAX_ITER"] == [5, 10]
    assert record["changed"]["SOLVER.STEPS"] == [[4], [8]]
    cfg = _config(out)["SOLVER"]  # what ran is what scaling.json says
    assert (cfg["IMS_PER_BATCH"], cfg["MAX_ITER"], cfg["WARMUP_ITERS"]) == (1, 10, 4)
    assert math.isclose(cfg["BASE_LR"], 0.001)
    with open(out / "metrics.json") as f:
        iterations = [json.loads(line)["iteration"] for line in f if '"total_loss"' in line]
    assert max(iterations) == 9  # ten training iterations


def test_eval_only_reproduces_the_final_evaluation(fpn_run, train_net, tmp_path):
    out, _ = fpn_run
    proc = train_net("--eval-only", "--config-file", INSTANT / "coco_R_50_FPN_1x_instant.yaml",
                     "MODEL.WEIGHTS", out / "model_final.pth", "OUTPUT_DIR", tmp_path)
    _ok(proc)
    again, first = _results(tmp_path), _results(out)
    for task in ("bbox", "segm"):
        assert again[task]["AP"] == pytest.approx(first[task]["AP"], abs=1e-6)


def test_c4_protocol_with_pkl_weights(train_net, converted_weights, tmp_path):
    proc = train_net("--config-file", INSTANT / "coco_R_50_C4_1x_instant.yaml",
                     "MODEL.WEIGHTS", converted_weights["resnet50"], "OUTPUT_DIR", tmp_path)
    _ok(proc)
    assert "warning: MODEL.WEIGHTS" in proc.stderr and "plain pickle" in proc.stderr
    results = _results(tmp_path)
    assert set(results) == {"bbox", "segm"}
    _assert_metrics(results, "bbox", COCO_METRICS)
    _assert_metrics(results, "segm", COCO_METRICS)
    with open(tmp_path / "weights_report.json") as f:
        report = json.load(f)
    # res5 lives in the C4 box head; the extra BN after it is the protocol's new layer
    assert report["loaded"] == report["checkpoint_tensors"] == 318  # all of ResNet-50
    assert "roi_heads.res5.0.conv1.weight" not in report["not_initialised"]
    assert "roi_heads.res5.norm.weight" in report["not_initialised"]


def test_keypoint_protocol_random_init(train_net, tmp_path):
    # a periodic checkpoint every 2 of the 5 iterations: by default each goes once the run has finished
    proc = train_net("--config-file", INSTANT / "keypoint_R_50_FPN_2x_instant.yaml", "OUTPUT_DIR", tmp_path,
                     "SOLVER.CHECKPOINT_PERIOD", "2")
    _ok(proc)
    results = _results(tmp_path)
    assert set(results) == {"bbox", "keypoints"}
    _assert_metrics(results, "bbox", COCO_METRICS)
    _assert_metrics(results, "keypoints", {"AP", "AP50", "AP75", "APm", "APl"})
    assert sorted(p.name for p in tmp_path.glob("model_*.pth")) == ["model_final.pth"]
    assert (tmp_path / "last_checkpoint").read_text().strip() == "model_final.pth"


def test_cityscapes_protocol_through_cityscapesscripts(train_net, tmp_path):
    # --keep-checkpoints 0: every periodic checkpoint stays, as in detectron2's own trainer
    proc = train_net("--config-file", INSTANT / "cityscapes_R_50_FPN_instant.yaml", "--keep-checkpoints", "0",
                     "OUTPUT_DIR", tmp_path, "SOLVER.CHECKPOINT_PERIOD", "2")
    _ok(proc)
    assert sorted(p.name for p in tmp_path.glob("model_*.pth")) == [
        "model_0000001.pth", "model_0000003.pth", "model_final.pth"]
    results = _results(tmp_path)
    assert set(results) == {"segm"} and set(results["segm"]) == {"AP", "AP50"}
    assert 0 <= results["segm"]["AP"] <= results["segm"]["AP50"] <= 100
    assert not os.path.exists(REPO / "matches.json")  # cityscapesscripts' debug dump stays out of the cwd


def test_own_keypoint_data_from_the_command_line(train_net, detection_data, tmp_path):
    """Users' COCO json + image folder, on the keypoint 1x protocol: keypoint flips come from the names."""
    spec = f"{detection_data['coco']['keypoints']}:{detection_data['coco']['image_dir']}"
    proc = train_net("--config-file", INSTANT / "keypoint_R_50_FPN_1x_instant.yaml", "--dataset-train",
                     f"my_people={spec}", "--dataset-test", f"my_people_val={spec}", "OUTPUT_DIR", tmp_path)
    _ok(proc)
    cfg = _config(tmp_path)
    assert cfg["DATASETS"]["TRAIN"] == ["my_people"] and cfg["DATASETS"]["TEST"] == ["my_people_val"]
    assert cfg["SOLVER"]["STEPS"] == [4]  # the instant schedule over the 1x base
    _assert_metrics(_results(tmp_path), "keypoints", {"AP", "AP50", "AP75"})


# ---------------------------------------------------------------- bad input: one line, exit 2, no traceback


def test_protocol_config_without_weights_refuses_to_start(train_net, tmp_path):
    protocol = REPO / "configs" / "transfer" / "coco_R_50_FPN_1x.yaml"
    proc = train_net("--config-file", protocol, "OUTPUT_DIR", tmp_path)
    fails_cleanly(proc, "MODEL.WEIGHTS 'CONVERTED_BACKBONE.pth' is not a file", "transfer.convert")
    assert not os.listdir(tmp_path)  # nothing written


def test_unknown_dataset_name(train_net, tmp_path):
    proc = train_net("--config-file", INSTANT / "coco_R_50_FPN_1x_instant.yaml",
                     "DATASETS.TEST", "('coco_2017_vall',)", "OUTPUT_DIR", tmp_path)
    fails_cleanly(proc, "unknown dataset 'coco_2017_vall'", "did you mean coco_2017_val")


def test_builtin_dataset_files_missing(train_net, tmp_path):
    proc = train_net("--config-file", INSTANT / "coco_R_50_FPN_1x_instant.yaml", "OUTPUT_DIR", tmp_path,
                     "DATASETS.TRAIN", "('coco_2017_train',)")
    fails_cleanly(proc, "'coco_2017_train'", "instances_train2017.json does not exist",
                   "DETECTRON2_DATASETS")


def test_malformed_annotation_json(train_net, detection_data, tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text('{"images": [], "annotations": [')
    spec = f"mine={bad}:{detection_data['coco']['image_dir']}"
    proc = train_net("--config-file", INSTANT / "coco_R_50_FPN_1x_instant.yaml", "--dataset-train", spec,
                     "OUTPUT_DIR", tmp_path)
    fails_cleanly(proc, str(bad), "is not valid JSON")


def test_unknown_config_key(train_net, tmp_path):
    proc = train_net("--config-file", INSTANT / "coco_R_50_FPN_1x_instant.yaml", "OUTPUT_DIR", tmp_path,
                     "SOLVER.NO_SUCH_KEY", "1")
    fails_cleanly(proc, "SOLVER.NO_SUCH_KEY")


def test_option_after_overrides_is_explained(train_net, tmp_path):
    proc = train_net("--config-file", INSTANT / "coco_R_50_FPN_1x_instant.yaml", "OUTPUT_DIR", tmp_path,
                     "--ims-per-gpu", "1")
    fails_cleanly(proc, "--ims-per-gpu", "options go before the KEY VALUE overrides")


def _with_one_image_replaced(detection_data, tmp_path, content: bytes | None) -> tuple[str, str]:
    """A copy of the synthetic instances (json + images) whose first image is corrupt (content) or missing."""
    images = tmp_path / "images"
    shutil.copytree(detection_data["coco"]["image_dir"], images)
    with open(detection_data["coco"]["instances"]) as f:
        data = json.load(f)
    first = images / data["images"][0]["file_name"]
    if content is None:
        first.unlink()
    else:
        first.write_bytes(content)
    return f"{detection_data['coco']['instances']}:{images}", str(first)


def test_missing_image_is_reported_by_path(train_net, detection_data, tmp_path):
    spec, missing = _with_one_image_replaced(detection_data, tmp_path, None)
    proc = train_net("--config-file", INSTANT / "coco_R_50_FPN_1x_instant.yaml",
                     "--dataset-test", f"mine_val={spec}", "OUTPUT_DIR", tmp_path / "out")
    fails_cleanly(proc, "1 of 10 annotated images are missing", missing)


def test_corrupt_image_is_reported_by_path(train_net, detection_data, tmp_path):
    """Decoding happens in a DataLoader worker during training; the error still comes out as one line."""
    spec, corrupt = _with_one_image_replaced(detection_data, tmp_path, b"\xff\xd8\xff\xe0 not really a jpeg")
    proc = train_net("--config-file", INSTANT / "coco_R_50_FPN_1x_instant.yaml",
                     "--dataset-train", f"mine={spec}", "OUTPUT_DIR", tmp_path / "out",
                     "SOLVER.IMS_PER_BATCH", "10")  # all 10 images in iteration 0
    fails_cleanly(proc, f"cannot read image {corrupt}")


# ---------------------------------------------------------------- the linear scaling rule
def test_scale_schedule_halves_batch_and_lr_and_doubles_iterations():
    from detectron2.config import get_cfg

    from transfer.scaling import scale_schedule

    cfg = get_cfg()
    cfg.merge_from_file(str(REPO / "configs" / "transfer" / "cityscapes_R_50_FPN.yaml"))
    record = scale_schedule(cfg, ims_per_gpu=2, world_size=1)  # batch 8 -> 2: k = 1/4
    assert record["factor"] == 0.25
    assert (cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.MAX_ITER, cfg.SOLVER.STEPS) == (2, 96000, (72000,))
    assert math.isclose(cfg.SOLVER.BASE_LR, 0.0025)
    assert cfg.SOLVER.WARMUP_ITERS == 4000 and cfg.SOLVER.CHECKPOINT_PERIOD == 20000
    assert cfg.TEST.PRECISE_BN.NUM_ITER == 800
    assert cfg.TEST.EVAL_PERIOD == 0  # "never" stays never
    assert set(record["changed"]) == {"SOLVER.IMS_PER_BATCH", "SOLVER.BASE_LR", "SOLVER.MAX_ITER",
                                      "SOLVER.STEPS", "SOLVER.WARMUP_ITERS", "SOLVER.CHECKPOINT_PERIOD",
                                      "TEST.PRECISE_BN.NUM_ITER"}


def test_scale_schedule_is_a_no_op_at_the_config_batch():
    from detectron2.config import get_cfg

    from transfer.scaling import scale_schedule

    cfg = get_cfg()
    before = cfg.dump()
    record = scale_schedule(cfg, ims_per_gpu=2, world_size=8)  # 16 = the default batch
    assert record["changed"] == {} and record["factor"] == 1 and cfg.dump() == before


def test_own_data_sets_num_classes_from_the_json(detection_data, tmp_path):
    """--dataset-train takes NUM_CLASSES (and NUM_KEYPOINTS) from the training json."""
    from detectron2.config import get_cfg

    from transfer.train_net import inspect_user_datasets

    with open(detection_data["coco"]["instances"]) as f:
        data = json.load(f)
    used = sorted({a["category_id"] for a in data["annotations"]})
    data["categories"] = [c for c in data["categories"] if c["id"] in used]  # 3 classes, COCO ids kept
    small = tmp_path / "three.json"
    small.write_text(json.dumps(data))
    cfg = get_cfg()
    inspect_user_datasets(cfg, [f"three_classes={small}:{detection_data['coco']['image_dir']}"], [])
    assert cfg.DATASETS.TRAIN == ("three_classes",) and cfg.MODEL.ROI_HEADS.NUM_CLASSES == 3
