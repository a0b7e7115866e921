"""Res5ROIHeadsExtraNorm: the C4 box head of the MoCo detection protocol (paper Table 2).

MoCo (He et al., CVPR 2020; moco detection/train_net.py) fine-tunes R50-C4 with BN everywhere and adds one BN
after the res5 stage that the C4 head runs on each region, so that res5's output reaches the box and mask
predictors normalised.
Importing this module registers the head under ``MODEL.ROI_HEADS.NAME: "Res5ROIHeadsExtraNorm"``.
"""
from transfer import compat

compat.apply()  # before the first detectron2 import

from detectron2.layers import get_norm  # noqa: E402
from detectron2.modeling import ROI_HEADS_REGISTRY  # noqa: E402
from detectron2.modeling.roi_heads import Res5ROIHeads  # noqa: E402


@ROI_HEADS_REGISTRY.register()
class Res5ROIHeadsExtraNorm(Res5ROIHeads):
    """Res5ROIHeads + ``res5.norm``: a freshly initialised ``MODEL.RESNETS.NORM`` layer after res5."""

    def __init__(self, cfg, input_shape):
        super().__init__(cfg, input_shape)  # detectron2's public constructor builds res5 from cfg
        # N x C x 7 x 7 region features -> the same, normalised; C = RES2_OUT_CHANNELS * 8 (2048 for R50)
        self.res5.add_module("norm", get_norm(cfg.MODEL.RESNETS.NORM, self.res5[-1].out_channels))
