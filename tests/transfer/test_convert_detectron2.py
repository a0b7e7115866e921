"""Converted weights in detectron2: same features as torchvision, every key consumed by FPN and C4 models."""
import os

import pytest
import torch
import torchvision

from transfer import compat

compat.apply()

from detectron2 import model_zoo  # noqa: E402
from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.layers import ShapeSpec  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.modeling.backbone.resnet import build_resnet_backbone  # noqa: E402

from tests.transfer.library_checkpoints import CASES  # noqa: E402
from tests.transfer.test_convert import random_resnet_sd, shape_only_sd, wrap  # noqa: E402
from transfer import convert as cv  # noqa: E402
from transfer import weights  # noqa: E402

# the transfer configs' settings for torchvision-layout weights (RGB, torchvision mean/std in 0-255 units,
# stride in the 3x3 conv) and the protocols' backbone (nothing frozen, SyncBN)
TRANSFER = ["INPUT.FORMAT", "RGB", "MODEL.PIXEL_MEAN", [123.675, 116.28, 103.53],
            "MODEL.PIXEL_STD", [58.395, 57.12, 57.375], "MODEL.RESNETS.STRIDE_IN_1X1", False,
            "MODEL.BACKBONE.FREEZE_AT", 0, "MODEL.RESNETS.NORM", "SyncBN"]


def resnet_cfg(depth: int, norm: str = "FrozenBN", freeze_at: int = 2):
    cfg = get_cfg()
    cfg.MODEL.BACKBONE.FREEZE_AT = freeze_at
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64 if depth < 50 else 256
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
    cfg.MODEL.RESNETS.NORM = norm
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    return cfg


def torchvision_features(net: torchvision.models.ResNet, x: torch.Tensor) -> dict:
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    out = {}
    for i, layer in enumerate([net.layer1, net.layer2, net.layer3, net.layer4]):
        x = layer(x)
        out[f"res{i + 2}"] = x
    return out


@pytest.mark.parametrize("arch,depth,ext", [("resnet50", 50, ".pth"), ("resnet50", 50, ".pkl"),
                                            ("resnet18", 18, ".pth")])
def test_detectron2_backbone_matches_torchvision_features(tmp_path, arch, depth, ext):
    sd = random_resnet_sd(arch, seed=depth)  # every tensor random, so a swapped BN or conv would show
    torch.save(wrap("simsiam", sd)[0], tmp_path / "in.pth")
    cv.convert(str(tmp_path / "in.pth"), str(tmp_path / ("out" + ext)))

    backbone = build_resnet_backbone(resnet_cfg(depth), ShapeSpec(channels=3)).eval()
    DetectionCheckpointer(backbone).load(str(tmp_path / ("out" + ext)))
    net = getattr(torchvision.models, arch)()
    net.load_state_dict(sd)
    net.eval()

    assert_same_features(backbone, net)


def assert_same_features(backbone, net: torchvision.models.ResNet) -> None:
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, ref = backbone(x), torchvision_features(net, x)
    for name in ["res2", "res3", "res4", "res5"]:
        assert ours[name].shape == ref[name].shape
        assert ref[name].std() > 0.05  # a real, varied signal: a misplaced tensor shows well above 1e-4
        assert (ours[name] - ref[name]).abs().max() < 1e-4, name


@pytest.fixture(scope="module")
def r18():
    return random_resnet_sd("resnet18", seed=18)


@pytest.mark.parametrize("name", list(CASES))
def test_library_checkpoints_give_torchvision_features_in_detectron2(tmp_path, r18, name):
    """lightly, solo-learn, mmselfsup/mmpretrain, VISSL, DINO, SwAV, Barlow Twins, byol-pytorch and PixPro
    checkpoints (built as those libraries build them), converted and loaded by detectron2's own checkpointer
    into its ResNet: the same features as torchvision's ResNet with the original weights."""
    CASES[name](r18).save(tmp_path / "in.ckpt")
    cv.convert(str(tmp_path / "in.ckpt"), str(tmp_path / "out.pth"))
    backbone = build_resnet_backbone(resnet_cfg(18), ShapeSpec(channels=3)).eval()
    DetectionCheckpointer(backbone).load(str(tmp_path / "out.pth"))
    net = torchvision.models.resnet18()
    net.load_state_dict(r18)
    assert_same_features(backbone, net.eval())
    for f in ("in.ckpt", "out.pth"):  # ~50 MB each: not kept for pytest's retention of tmp dirs
        (tmp_path / f).unlink()


@pytest.mark.parametrize("arch,depth", [("resnet18", 18), ("resnet34", 34), ("resnet50", 50),
                                        ("resnet101", 101), ("resnet152", 152)])
def test_keys_and_shapes_equal_detectron2_resnet(tmp_path, arch, depth):
    """Exactly detectron2's backbone state dict, for every depth (plain BN and nothing frozen, so every
    BatchNorm keeps its num_batches_tracked, as with the protocols' SyncBN)."""
    sd = shape_only_sd(arch)
    torch.save(sd, tmp_path / "in.pth")
    cv.convert(str(tmp_path / "in.pth"), str(tmp_path / "out.pth"))
    ours = torch.load(tmp_path / "out.pth", weights_only=True)["model"]
    with torch.device("meta"):  # no memory, no init time; only names and shapes are compared
        backbone = build_resnet_backbone(resnet_cfg(depth, norm="BN", freeze_at=0), ShapeSpec(channels=3))
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in
                                                            backbone.state_dict().items()}


@pytest.fixture(scope="module")
def r50_weights(module_tmp):
    tmp = module_tmp("r50")
    sd = random_resnet_sd("resnet50", seed=1)
    torch.save(wrap("moco_v2", sd)[0], tmp / "moco.pth.tar")
    cv.convert(str(tmp / "moco.pth.tar"), str(tmp / "r50.pth"))
    return sd, str(tmp / "r50.pth")


@pytest.mark.parametrize("zoo_config,resnet_prefixes", [
    ("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml", ("backbone.bottom_up.",)),
    ("COCO-InstanceSegmentation/mask_rcnn_R_50_C4_1x.yaml", ("backbone.", "roi_heads.res5.")),
])
def test_checkpointer_loads_every_backbone_key(r50_weights, zoo_config, resnet_prefixes):
    """Mask R-CNN FPN and C4 (SyncBN, as the protocols): no missing backbone key, no unused checkpoint key,
    and detectron2's own public loader puts every tensor where transfer.weights (train_net's loader) puts
    it."""
    sd, path = r50_weights
    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file(zoo_config))
    cfg.merge_from_list(TRANSFER + ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", path])
    model = build_model(cfg)
    ckpt, matched, found = weights.check({k: v.shape for k, v in model.state_dict().items()}, path)
    assert ckpt["matching_heuristics"] is True and ckpt["__author__"] == cv.AUTHOR  # as the converter wrote
    assert found["backbone_not_initialised"] == found["unused"] == found["incorrect_shapes"] == []

    resnet_keys = [k for k in model.state_dict() if k.startswith(resnet_prefixes) and "fpn" not in k]
    assert len(resnet_keys) == len(sd) - 2  # every torchvision tensor but fc has a place in the model
    assert set(resnet_keys) == set(matched["state"])
    DetectionCheckpointer(model).load(path)  # detectron2's loader (.pth: torch.load, weights_only)
    params = model.state_dict()
    assert all(torch.equal(params[k], matched["state"][k]) for k in resnet_keys)
    res5 = "backbone.bottom_up.res5" if "FPN" in zoo_config else "roi_heads.res5"
    assert torch.equal(params[f"{res5}.2.conv3.norm.running_var"], sd["layer4.2.bn3.running_var"])
    stem = "backbone.bottom_up.stem" if "FPN" in zoo_config else "backbone.stem"
    assert torch.equal(params[f"{stem}.conv1.weight"], sd["conv1.weight"])


def test_pth_loads_without_plain_pickle(r50_weights, monkeypatch):
    """The .pth output goes through torch.load's weights_only path, never detectron2's pickle.load."""
    _, path = r50_weights
    import detectron2.checkpoint.detection_checkpoint as dc

    def refuse(*args, **kwargs):
        raise AssertionError("plain pickle used")

    monkeypatch.setattr(dc.pickle, "load", refuse)
    backbone = build_resnet_backbone(resnet_cfg(50), ShapeSpec(channels=3))
    DetectionCheckpointer(backbone).load(path)
    assert os.path.splitext(path)[1] == ".pth"
