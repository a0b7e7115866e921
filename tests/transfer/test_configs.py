"""Every YAML under configs/transfer loads, and the protocols say what the paper's protocols say."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml

from tests.transfer.conftest import REPO
from tools.results.paper import load_paper
from tools.results.runs import base_stem
from transfer import compat
from transfer.imagenet_weights import MSRA_INPUT, MSRA_URL, TORCHVISION_INPUT

compat.apply()

from detectron2.config import get_cfg  # noqa: E402

CONFIGS = REPO / "configs" / "transfer"
ALL_YAML = sorted(CONFIGS.rglob("*.yaml"))
STEMS = ("coco_R_50_FPN_1x", "coco_R_50_C4_1x", "keypoint_R_50_FPN_2x", "keypoint_R_50_FPN_1x",
         "cityscapes_R_50_FPN")
FPN_SIZES = (640, 672, 704, 736, 768, 800)

# a trainable ResNet-50 with BN: every protocol (MoCo detection/configs/Base-RCNN-C4-BN.yaml, PyContrast
# pycontrast/detection/configs/R_50_FPN_1x.yaml)
COMMON = {"MODEL.BACKBONE.FREEZE_AT": 0, "MODEL.RESNETS.DEPTH": 50, "MODEL.RESNETS.NORM": "SyncBN",
          "TEST.PRECISE_BN.ENABLED": True}
# each variant's input conventions and weights: the protocol file takes converted torchvision-layout weights;
# msra/ is the paper's ImageNet row (detectron2's MSRA R-50) and _random the Random row, both with
# detectron2's default input as in PyContrast's R_50_FPN_1x.yaml and R_50_FPN_1x_rand.yaml
VARIANTS = {"": (TORCHVISION_INPUT, "CONVERTED_BACKBONE.pth"), "_random": (MSRA_INPUT, ""),
            "msra/": (MSRA_INPUT, MSRA_URL)}
COCO_1X = {"SOLVER.IMS_PER_BATCH": 16, "SOLVER.BASE_LR": 0.02, "SOLVER.STEPS": (60000, 80000),
           "SOLVER.MAX_ITER": 90000, "INPUT.MIN_SIZE_TRAIN": FPN_SIZES}
KEYPOINT = {"MODEL.KEYPOINT_ON": True, "MODEL.MASK_ON": False, "MODEL.ROI_HEADS.NUM_CLASSES": 1,
            "MODEL.FPN.NORM": "SyncBN", "MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA": 0.5,
            "MODEL.RPN.POST_NMS_TOPK_TRAIN": 1500,
            "MODEL.ROI_BOX_HEAD.NUM_FC": 2, "MODEL.ROI_BOX_HEAD.NORM": "",
            "DATASETS.TRAIN": ("keypoints_coco_2017_train",), "DATASETS.TEST": ("keypoints_coco_2017_val",),
            "SOLVER.IMS_PER_BATCH": 16, "SOLVER.BASE_LR": 0.02}
PROTOCOLS = {
    # Table 1: DenseCL/InfoMin R50-FPN: SyncBN in backbone, FPN, 4conv1fc box head and mask head
    "coco_R_50_FPN_1x": {**COCO_1X, "MODEL.MASK_ON": True, "MODEL.BACKBONE.NAME": "build_resnet_fpn_backbone",
                         "MODEL.FPN.NORM": "SyncBN", "MODEL.ROI_HEADS.NAME": "StandardROIHeads",
                         "MODEL.ROI_BOX_HEAD.NAME": "FastRCNNConvFCHead", "MODEL.ROI_BOX_HEAD.NUM_CONV": 4,
                         "MODEL.ROI_BOX_HEAD.NUM_FC": 1, "MODEL.ROI_BOX_HEAD.NORM": "SyncBN",
                         "MODEL.ROI_MASK_HEAD.NORM": "SyncBN", "MODEL.ROI_HEADS.NUM_CLASSES": 80,
                         "DATASETS.TRAIN": ("coco_2017_train",), "DATASETS.TEST": ("coco_2017_val",)},
    # Table 2: MoCo R50-C4: BN, an extra BN after res5 in the box head
    "coco_R_50_C4_1x": {**COCO_1X, "MODEL.MASK_ON": True, "MODEL.BACKBONE.NAME": "build_resnet_backbone",
                        "MODEL.ROI_HEADS.NAME": "Res5ROIHeadsExtraNorm", "MODEL.RPN.PRE_NMS_TOPK_TEST": 6000,
                        "MODEL.RPN.POST_NMS_TOPK_TEST": 1000, "MODEL.ROI_HEADS.NUM_CLASSES": 80,
                        "INPUT.MIN_SIZE_TEST": 800, "INPUT.MAX_SIZE_TRAIN": 1333,
                        "DATASETS.TRAIN": ("coco_2017_train",), "DATASETS.TEST": ("coco_2017_val",)},
    # Table 4: MoCo keypoint R-CNN, 2x (the schedule of the table's baselines) and a 1x variant
    "keypoint_R_50_FPN_2x": {**KEYPOINT, "SOLVER.STEPS": (120000, 160000), "SOLVER.MAX_ITER": 180000},
    "keypoint_R_50_FPN_1x": {**KEYPOINT, "SOLVER.STEPS": (60000, 80000), "SOLVER.MAX_ITER": 90000},
    # Table 3: Cityscapes Mask R-CNN R50-FPN
    "cityscapes_R_50_FPN": {"MODEL.MASK_ON": True, "MODEL.ROI_HEADS.NUM_CLASSES": 8,
                            "MODEL.FPN.NORM": "SyncBN", "MODEL.ROI_BOX_HEAD.NUM_FC": 2,
                            "SOLVER.IMS_PER_BATCH": 8, "SOLVER.BASE_LR": 0.01,
                            "SOLVER.STEPS": (18000,), "SOLVER.MAX_ITER": 24000,
                            "INPUT.MIN_SIZE_TRAIN": (800, 832, 864, 896, 928, 960, 992, 1024),
                            "INPUT.MIN_SIZE_TRAIN_SAMPLING": "choice", "INPUT.MIN_SIZE_TEST": 1024,
                            "INPUT.MAX_SIZE_TRAIN": 2048, "INPUT.MAX_SIZE_TEST": 2048,
                            "DATASETS.TRAIN": ("cityscapes_fine_instance_seg_train",),
                            "DATASETS.TEST": ("cityscapes_fine_instance_seg_val",)},
}
# what an instant config must keep from its protocol: the architecture and the input convention
KEPT = ("MODEL.META_ARCHITECTURE", "MODEL.BACKBONE.NAME", "MODEL.ROI_HEADS.NAME", "MODEL.MASK_ON",
        "MODEL.KEYPOINT_ON", "MODEL.RESNETS.NORM", "MODEL.FPN.NORM",
        "MODEL.ROI_BOX_HEAD.NAME",
        "MODEL.ROI_BOX_HEAD.NUM_CONV", "MODEL.ROI_BOX_HEAD.NUM_FC", "MODEL.ROI_BOX_HEAD.NORM",
        "MODEL.ROI_MASK_HEAD.NORM", "MODEL.ROI_HEADS.NUM_CLASSES", "MODEL.PIXEL_MEAN", "MODEL.PIXEL_STD",
        "INPUT.FORMAT", "MODEL.RESNETS.STRIDE_IN_1X1", "MODEL.BACKBONE.FREEZE_AT", "TEST.PRECISE_BN.ENABLED")


def load(path: Path):
    cfg = get_cfg()
    cfg.merge_from_file(str(path))
    return cfg


def value(cfg, key: str):
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


def chain(path: Path) -> list[Path]:
    """The file and its _BASE_ ancestors, resolved relative to each file as detectron2 does."""
    files = [path]
    while True:
        with open(files[-1]) as f:
            base = (yaml.safe_load(f) or {}).get("_BASE_")
        if not base:
            return files
        files.append((files[-1].parent / base).resolve())


@pytest.mark.parametrize("path", ALL_YAML, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_yaml_loads_within_three_levels(path):
    cfg = load(path)
    assert cfg.MODEL.META_ARCHITECTURE == "GeneralizedRCNN"
    assert len(chain(path)) <= 3, [str(p.relative_to(CONFIGS)) for p in chain(path)]


def test_all_protocols_and_variants_exist():
    names = {str(p.relative_to(CONFIGS)) for p in ALL_YAML}
    for stem in STEMS:
        assert {f"{stem}.yaml", f"{stem}_random.yaml", f"msra/{stem}.yaml",
                f"instant/{stem}_instant.yaml"} <= names


def config_file(stem: str, variant: str) -> Path:
    return CONFIGS / (f"msra/{stem}.yaml" if variant == "msra/" else f"{stem}{variant}.yaml")


@pytest.mark.parametrize("stem", STEMS)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_protocol_values(stem, variant):
    cfg = load(config_file(stem, variant))
    conventions, weights = VARIANTS[variant]
    for key, expected in {**COMMON, **PROTOCOLS[stem], **conventions}.items():
        got = value(cfg, key)
        assert (list(got) if isinstance(got, (list, tuple)) else got) == \
            (list(expected) if isinstance(expected, (list, tuple)) else expected), (key, got)
    # full protocols name a placeholder that train_net refuses; random variants train from scratch; the
    # msra/ twins name detectron2's URL, as the reference configs do
    assert cfg.MODEL.WEIGHTS == weights


def with_input(cfg, conventions: dict, weights: str):
    """A copy of cfg with other input conventions and weights."""
    cfg = cfg.clone()
    cfg.merge_from_list([x for k, v in conventions.items() for x in (k, v)] + ["MODEL.WEIGHTS", weights])
    return cfg


@pytest.mark.parametrize("stem", STEMS)
@pytest.mark.parametrize("variant", ["_random", "msra/"])
def test_variants_change_only_the_input_conventions_and_the_weights(stem, variant):
    """The Random and ImageNet rows train exactly the protocol, with detectron2's default input."""
    protocol, other = load(CONFIGS / f"{stem}.yaml"), load(config_file(stem, variant))
    assert other.dump() == with_input(protocol, *VARIANTS[variant]).dump()
    assert other.dump() != protocol.dump()


def test_msra_conventions_are_detectron2s_defaults():
    """The MSRA R-50 input (BGR, Caffe mean, std 1, stride in the 1x1) is detectron2's default."""
    defaults = get_cfg()
    for key, expected in MSRA_INPUT.items():
        got = value(defaults, key)
        assert (list(got) if isinstance(got, (list, tuple)) else got) == expected, key


@pytest.mark.parametrize("stem", STEMS)
def test_msra_runs_land_in_the_paper_imagenet_row(stem):
    """runs/imagenet/<stem of msra/X.yaml>/... is read by tools.tables as protocol X, the paper's table."""
    protocol, toy = base_stem(config_file(stem, "msra/").stem)
    assert (protocol, toy) == (stem, False)
    tables = [t for t in load_paper()["tables"] if stem in t["protocols"]]
    assert tables and all(any(r["weights"] == "imagenet" for r in t["rows"]) for t in tables)


@pytest.mark.parametrize("stem", STEMS)
def test_instant_config_keeps_the_architecture_and_stays_small(stem):
    protocol, instant = load(CONFIGS / f"{stem}.yaml"), load(CONFIGS / "instant" / f"{stem}_instant.yaml")
    for key in KEPT:
        assert value(instant, key) == value(protocol, key), key
    # ResNet-18 for speed where the head allows it; C4's res5 head is built of ResNet-50 bottleneck blocks
    assert instant.MODEL.RESNETS.DEPTH == (50 if stem == "coco_R_50_C4_1x" else 18)
    assert instant.MODEL.WEIGHTS == "" and instant.SOLVER.MAX_ITER <= 10
    assert max(instant.INPUT.MIN_SIZE_TRAIN) <= 128 and instant.INPUT.MIN_SIZE_TEST <= 128
    # random init stays finite: trainable BN (never FrozenBN), a small lr and clipped gradients
    assert instant.MODEL.RESNETS.NORM != "FrozenBN" and instant.SOLVER.CLIP_GRADIENTS.ENABLED
    assert instant.SOLVER.BASE_LR <= 0.002


@pytest.mark.parametrize("ours,zoo", [
    ("Base-RCNN-FPN.yaml", "Base-RCNN-FPN.yaml"),
    ("Base-RCNN-C4.yaml", "Base-RCNN-C4.yaml"),
    ("Base-Keypoint-RCNN-FPN.yaml", "COCO-Keypoints/Base-Keypoint-RCNN-FPN.yaml"),
])
def test_vendored_bases_equal_detectron2s(ours, zoo):
    from detectron2 import model_zoo

    try:
        zoo_path = model_zoo.get_config_file(zoo)
    except RuntimeError:
        pytest.skip("this detectron2 install ships no model-zoo configs to compare with")
    assert load(CONFIGS / "_base" / ours).dump() == load(Path(zoo_path)).dump()


@pytest.mark.parametrize("path", [p for p in ALL_YAML if "_base" not in p.parts],
                         ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_setting_says_why(path):
    """Each KEY: value line of our own configs carries a one-line reason."""
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if re.match(r"^\s*[A-Z][A-Z0-9_]*:\s*\S", line) and not line.lstrip().startswith("#"):
            assert "#" in line, f"{path.name}:{n}: {line.strip()}"


def test_c4_protocol_head_normalises_after_res5():
    from detectron2.modeling import build_model

    import transfer.roi_heads  # noqa: F401  (registers Res5ROIHeadsExtraNorm)

    cfg = load(CONFIGS / "coco_R_50_C4_1x_random.yaml")
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)
    res5 = model.roi_heads.res5
    assert list(dict(res5.named_children()))[-1] == "norm"  # runs last, after the three res5 blocks
    assert isinstance(res5.norm, torch.nn.SyncBatchNorm) and res5.norm.num_features == 2048
    x = torch.randn(2, 1024, 14, 14)  # N x C x H x W region features from res4
    model.train()
    out = res5(x)  # a single process: SyncBN acts as plain BN over the batch
    assert out.shape == (2, 2048, 7, 7)
    assert out.mean(dim=(0, 2, 3)).abs().max() < 1e-4  # normalised per channel
