"""MODEL.WEIGHTS that do not fit the model are refused (issue 14.1); those that fit load exactly; Caffe2 files
(MSRA's ImageNet R-50.pkl naming) are matched as detectron2 matches them. Through public detectron2 API only,
so the same tests hold on detectron2 v0.6 and c69939aa."""
from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import torch

from tests.transfer.conftest import REPO
from tests.transfer.test_convert import random_resnet_sd, wrap
from transfer import compat

compat.apply()

from detectron2.config import get_cfg  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

from transfer import convert as cv  # noqa: E402
from transfer import weights  # noqa: E402
from transfer.train_net import model_shapes  # noqa: E402

CONFIGS = REPO / "configs" / "transfer"
FPN18 = CONFIGS / "instant" / "coco_R_50_FPN_1x_instant.yaml"  # ResNet-18 FPN
C4_50 = CONFIGS / "instant" / "coco_R_50_C4_1x_instant.yaml"  # ResNet-50, res5 in the ROI head
FPN50 = CONFIGS / "coco_R_50_FPN_1x.yaml"


def cfg_of(path, device="cpu"):
    cfg = get_cfg()
    cfg.merge_from_file(str(path))
    cfg.MODEL.DEVICE = device
    return cfg


@pytest.fixture(scope="module")
def files(module_tmp) -> dict:
    """Every kind of file a user might pass as MODEL.WEIGHTS."""
    tmp = module_tmp("weights_files")
    sd18, sd50 = random_resnet_sd("resnet18", seed=3), random_resnet_sd("resnet50", seed=4)
    out = {"sd18": sd18, "sd50": sd50}
    torch.save(wrap("fastsiam", sd18)[0], tmp / "checkpoint.pth")  # a raw pretraining checkpoint
    out["raw"] = str(tmp / "checkpoint.pth")
    for name, sd in (("r18", sd18), ("r50", sd50)):
        torch.save(sd, tmp / f"tv_{name}.pth")
        out[name] = str(tmp / f"{name}_d2.pth")
        cv.convert(str(tmp / f"tv_{name}.pth"), out[name])
    out["tv"] = str(tmp / "tv18_no_fc.pth")
    cv.convert(str(tmp / "tv_r18.pth"), out["tv"], fmt="torchvision")
    d2 = torch.load(out["r18"], weights_only=True)
    d2["model"]["res2.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)  # 3x3 in the model
    out["wrong_shape"] = str(tmp / "wrong_shape.pth")
    torch.save(d2, out["wrong_shape"])
    d2 = torch.load(out["r18"], weights_only=True)
    d2["model"]["projector.0.weight"] = torch.zeros(4, 4)
    out["extra"] = str(tmp / "extra.pth")
    torch.save(d2, out["extra"])
    d2 = torch.load(out["r18"], weights_only=True)
    del d2["model"]["res4.1.conv2.weight"]
    out["missing"] = str(tmp / "missing.pth")
    torch.save(d2, out["missing"])
    out["caffe2"] = str(tmp / "R-50-caffe2.pkl")
    with open(out["caffe2"], "wb") as f:
        pickle.dump(caffe2_names(sd50), f)
    return out


def caffe2_names(sd: dict) -> dict:
    """A torchvision ResNet in the naming of Detectron's Caffe2 ImageNet models such as MSRA's R-50.pkl
    (``conv1_w``, ``conv1_b``, ``res_conv1_bn_s``, ``res2_0_branch2a_w``, ``res2_0_branch1_bn_b``,
    ``fc1000_w``; BN folded into scale and bias, no running statistics; names as detectron2's
    c2_model_loading.convert_basic_c2_names reads them), as numpy arrays, with a ``_momentum`` blob that
    detectron2's reader drops."""
    out = {}
    for k, v in sd.items():
        parts = k.split(".")
        if k.endswith(("running_mean", "running_var", "num_batches_tracked")):
            continue
        suffix = {"weight": "_w", "bias": "_b"}[parts[-1]]
        if parts[0] == "conv1":
            name = "conv1"
        elif parts[0] == "bn1":
            name, suffix = "res_conv1_bn", {"_w": "_s", "_b": "_b"}[suffix]
        elif parts[0] == "fc":
            name = "fc1000"
        else:
            stage, block, layer = int(parts[0][-1]) + 1, parts[1], parts[2]
            branch = {"conv1": "branch2a", "conv2": "branch2b", "conv3": "branch2c", "bn1": "branch2a_bn",
                      "bn2": "branch2b_bn", "bn3": "branch2c_bn", "downsample": "branch1"}[layer]
            if layer == "downsample" and parts[3] == "1":
                branch = "branch1_bn"
            name = f"res{stage}_{block}_{branch}"
            if branch.endswith("_bn"):
                suffix = {"_w": "_s", "_b": "_b"}[suffix]
        out[name + suffix] = v.numpy().copy()
    out["conv1_b"] = np.zeros(64, dtype=np.float32)  # MSRA's stem conv has a bias; detectron2's has none
    out["conv1_w_momentum"] = out["conv1_w"] * 0
    return out


def refused(cfg_path, path, *fragments):
    with pytest.raises(weights.WeightsError) as e:
        weights.check(model_shapes(cfg_of(cfg_path)), path)
    message = str(e.value)
    assert "\n" not in message and "--allow-partial-weights" in message
    for fragment in fragments:
        assert fragment in message, message
    return message


# ---------------------------------------------------------------- refused
def test_raw_pretraining_checkpoint_is_refused(files):
    refused(FPN18, files["raw"],
            "100 of 100 backbone tensors would stay uninitialised (backbone.bottom_up.stem.conv1.weight",
            "It is a FastSiam pretraining checkpoint",
            f"python -m transfer.convert {files['raw']} OUT.pth first")


def test_torchvision_format_is_refused(files):
    refused(FPN18, files["tv"], "torchvision-format keys", "python -m transfer.convert")


def test_depth_mismatch_is_refused(files):
    msg = refused(FPN18, files["r50"], "holds a ResNet-50 and the config builds a ResNet-18",
                  "MODEL.RESNETS.DEPTH")
    assert "wrong shape" in msg  # the stem fits, the blocks do not


def test_wrong_shaped_tensor_is_refused(files):
    refused(FPN18, files["wrong_shape"], "1 have the wrong shape",
            "res2.0.conv1.weight (64, 64, 1, 1) vs model backbone.bottom_up.res2.0.conv1.weight "
            "(64, 64, 3, 3)",
            "1 of 100 backbone tensors would stay uninitialised")


def test_unused_tensor_is_refused(files):
    msg = refused(FPN18, files["extra"],
                  "1 of 121 tensors in the file match no model tensor (projector.0.weight)")
    assert "uninitialised" not in msg


def test_missing_backbone_tensor_is_refused(files):
    refused(FPN18, files["missing"], "backbone.bottom_up.res4.1.conv2.weight")


# ---------------------------------------------------------------- accepted, and loaded exactly
def test_converted_weights_fit_fpn_and_c4(files):
    for cfg_path, path in ((FPN18, files["r18"]), (C4_50, files["r50"]), (FPN50, files["r50"])):
        _, matched, found = weights.check(model_shapes(cfg_of(cfg_path)), path)
        assert found["backbone_not_initialised"] == [] and found["unused"] == []
        assert found["incorrect_shapes"] == [] and len(matched["state"]) == len(torch.load(
            path, weights_only=True)["model"])


def test_frozen_bn_model_ignores_the_files_bn_counters(files):
    """FrozenBN (detectron2's default norm) has no num_batches_tracked: the file's counters are no weights."""
    cfg = cfg_of(FPN18)
    cfg.MODEL.RESNETS.NORM = "FrozenBN"
    _, _, found = weights.check(model_shapes(cfg), files["r18"])
    assert found["unused"] == [] and len(found["ignored"]) == 20  # one per BatchNorm of ResNet-18
    assert found["backbone_not_initialised"] == []


def test_partial_loading_is_allowed_by_the_flag_and_recorded(files, tmp_path):
    model = build_model(cfg_of(FPN18))
    report = weights.load(model, files["wrong_shape"], str(tmp_path), allow_partial=True,
                          write_report=lambda p, r: open(p, "w").write(json.dumps(r)))
    with open(tmp_path / "weights_report.json") as f:
        assert json.load(f) == report
    assert report["allow_partial_weights"] and report["partial"]
    assert report["backbone_not_initialised"] == ["backbone.bottom_up.res2.0.conv1.weight"]
    assert report["loaded"] == 119 and report["checkpoint_tensors"] == 120
    params = model.state_dict()
    assert torch.equal(params["backbone.bottom_up.res5.1.conv2.weight"],
                       files["sd18"]["layer4.1.conv2.weight"])


def test_caffe2_imagenet_pkl_covers_the_backbone(files):
    """MSRA-style Caffe2 names: renamed by detectron2's own c2 conversion; BN running statistics (absent
    from such files), the ImageNet classifier fc1000 and the stem conv bias are not held against it."""
    for cfg_path in (FPN50, C4_50):
        _, matched, found = weights.check(model_shapes(cfg_of(cfg_path)), files["caffe2"])
        assert found["backbone_not_initialised"] == [] and found["unused"] == []
        assert found["ignored"] == ["conv1_b", "fc1000_b", "fc1000_w"]
        assert not found["bn_statistics_in_file"]
    model = build_model(cfg_of(C4_50))
    report = weights.load(model, files["caffe2"], None)
    assert report["format"] == "Caffe2" and not report["partial"]
    sd, params = files["sd50"], model.state_dict()
    assert torch.equal(params["backbone.stem.conv1.weight"], sd["conv1.weight"])
    assert torch.equal(params["backbone.stem.conv1.norm.weight"], sd["bn1.weight"])
    assert torch.equal(params["roi_heads.res5.2.conv3.norm.bias"], sd["layer4.2.bn3.bias"])
    assert torch.equal(params["backbone.res4.0.shortcut.weight"], sd["layer3.0.downsample.0.weight"])


def test_caffe2_pkl_without_a_stage_is_refused(files, tmp_path):
    with open(files["caffe2"], "rb") as f:
        blobs = pickle.load(f)
    path = tmp_path / "no_res5.pkl"
    with open(path, "wb") as f:
        pickle.dump({k: v for k, v in blobs.items() if not k.startswith("res5_")}, f)
    refused(C4_50, str(path), "backbone tensors would stay uninitialised", "roi_heads.res5.0")


# ---------------------------------------------------------------- through the command line
def test_train_net_refuses_a_raw_checkpoint_before_writing_anything(train_net, files, tmp_path):
    proc = train_net("--config-file", FPN18, "MODEL.WEIGHTS", files["raw"], "OUTPUT_DIR", tmp_path / "out")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: MODEL.WEIGHTS") and "pretraining checkpoint" in line
    assert not os.path.exists(tmp_path / "out")  # nothing trained, nothing written


def test_train_net_eval_only_with_allow_partial_weights(train_net, files, tmp_path):
    proc = train_net("--eval-only", "--allow-partial-weights", "--config-file", FPN18,
                     "MODEL.WEIGHTS", files["missing"], "OUTPUT_DIR", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(tmp_path / "weights_report.json") as f:
        report = json.load(f)
    assert report["allow_partial_weights"] and report["partial"]
    assert report["backbone_not_initialised"] == ["backbone.bottom_up.res4.1.conv2.weight"]
    assert os.path.isfile(tmp_path / "results.json")


def test_weights_that_cannot_be_fetched_fail_in_one_line(monkeypatch):
    """Offline, the msra/ configs' detectron2:// URL cannot be downloaded: one line naming the offline route,
    not urllib's traceback."""
    import urllib.error

    def offline(path, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(weights.PathManager, "get_local_path", offline)
    with pytest.raises(weights.WeightsError) as e:
        weights.read("detectron2://ImageNetPretrained/MSRA/R-50.pkl")
    msg = str(e.value)
    assert "cannot be fetched (URLError" in msg and "--from-file R-50.pkl" in msg and "\n" not in msg
