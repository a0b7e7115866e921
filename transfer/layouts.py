"""How each pretraining library saves a ResNet, and how to tell the layouts apart by their keys.

A layout names where the backbone's tensors start, how its module names map to torchvision's, and which
other tensors are the library's heads (dropped by name, and listed). Each was read from the library's code
(repository and path below); the keys are written here, not imported, so no library needs to be installed.

this project: pretrain/model.py, pretrain/checkpoint.py: ``model`` = backbone.*, projector.*, predictor.*.
SimSiam, MoCo v1/v2, MoCo v3: facebookresearch/simsiam main_simsiam.py, moco and moco-v3 moco/builder.py.
lightly: lightly-ai/lightly examples/pytorch/fastsiam.py builds backbone = nn.Sequential(*children[:-1]):
    keys 0 (conv1), 1 (bn1), 4-7 (layer1-4); 2 relu, 3 maxpool, 8 avgpool hold nothing; beside it
    projection_head, prediction_head. benchmarks/imagenet/resnet50/{simclr,byol,dino,swav,mocov2}.py keep a
    torchvision resnet50 with fc = Identity as ``backbone`` in a LightningModule, with online_classifier
    (utils/benchmarking/online_linear_classifier.py: classification_head) and per method teacher_, student_
    or query_ copies, prototypes, queues. lightly evaluates ``backbone``: the teacher for DINO, the key
    encoder for MoCoV2.
solo-learn: vturrisi/solo-learn solo/methods/base.py: BaseMethod has backbone (fc = Identity) and the online
    ``classifier``, BaseMomentumMethod momentum_backbone and momentum_classifier; the methods add projector,
    predictor, momentum_projector, head, prototypes, queue. Lightning saves it (solo/utils/checkpointer.py).
mmselfsup/mmpretrain: open-mmlab/mmpretrain mmpretrain/models/backbones/resnet.py names the ResNet as
    torchvision does (conv1, bn1 from build_norm_layer's postfix 1, layer1..4, downsample.0/.1); the
    self-supervisors keep backbone, neck, head, momentum_encoder (CosineEMA of Sequential(backbone, neck)),
    base_encoder, queue; mmengine/runner/runner.py saves ``state_dict`` beside ``meta``. OpenSelfSup (and
    mmselfsup 0.x), e.g. WXinlong/DenseCL openselfsup/models/densecl.py, keeps the same backbone beside
    encoder_q (backbone + neck again), encoder_k, queue, queue2; mmcv saves it with ``meta``.
VISSL: facebookresearch/vissl vissl/models/trunks/resnext.py puts torchvision's modules into
    ``_feature_blocks`` (conv1, bn1, layer1..4); vissl/models/base_ssl_model.py get_classy_state nests them as
    classy_state_dict.base_model.model.{trunk, heads}.
DINO: facebookresearch/dino main_dino.py saves teacher and student state dicts of
    DDP(MultiCropWrapper): module.backbone.*, module.head.*; DINO evaluates the teacher.
SwAV: facebookresearch/swav src/resnet50.py: torchvision names plus projection_head and prototypes, saved
    from DDP (module.*); hubconf.py loads swav_800ep_pretrain.pth.tar so.
Barlow Twins: facebookresearch/barlowtwins main.py: checkpoint.pth ``model`` = module.backbone.*,
    module.projector.*, module.bn.* (an affine-free BatchNorm1d); its resnet50.pth is torchvision's layout.
byol-pytorch: lucidrains/byol-pytorch byol_pytorch/byol_pytorch.py: net.* (the ResNet as given, fc unused),
    online_encoder.net.* (the same module again) and its projector, online_predictor, target_encoder.
PixPro: zdaxie/PixPro contrast/models/PixPro.py: ``model`` = module.encoder.* (torchvision names,
    contrast/resnet.py), encoder_k, projector(_k), projector_instance(_k), predictor, value_transform.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

_BN = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
_STEM_RE = re.compile(rf"^(conv1\.weight|bn1\.{_BN})$")
_BLOCK_RE = re.compile(
    rf"^layer[1-4]\.\d+\.(conv[1-3]\.weight|bn[1-3]\.{_BN}|downsample\.0\.weight|downsample\.1\.{_BN})$")
# nn.Sequential(*resnet.children()[:-1]) numbers torchvision's children; only these hold tensors
_CHILDREN = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}
# DistributedDataParallel's and torch.compile's prefixes: stripped when every key has one
WRAPPERS = ("module.", "_orig_mod.")
LIGHTNING = "@pytorch-lightning_version"  # a mark: this top-level entry of the checkpoint


@dataclass(frozen=True)
class Layout:
    source: str                 # --source name
    name: str                   # short name (summary "format")
    label: str                  # what the converter prints
    prefix: str                 # where the backbone's keys start, after WRAPPERS
    heads: dict = field(default_factory=dict)  # prefix ending in "." or exact key -> what it is
    marks: tuple = ()           # key prefixes (or "@entry" of the checkpoint), any of which must be present
    sequential: bool = False    # backbone is nn.Sequential of the ResNet's children

    def torchvision_key(self, key: str) -> str | None:
        """The torchvision name of a backbone key of this layout, or None."""
        if not key.startswith(self.prefix):
            return None
        rest = key[len(self.prefix):]
        if self.sequential:
            first, _, tail = rest.partition(".")
            if first not in _CHILDREN:
                return None
            rest = f"{_CHILDREN[first]}.{tail}"
        return rest if _STEM_RE.match(rest) or _BLOCK_RE.match(rest) else None

    def head_of(self, key: str) -> str | None:
        return next((h for h in self.heads if (key.startswith(h) if h.endswith(".") else key == h)), None)


def _lightly_heads() -> dict:
    heads = {"projection_head.": "projection head", "prediction_head.": "prediction head",
             "online_classifier.": "online linear classifier", "criterion.": "loss buffers",
             "prototypes.": "SwAV prototypes", "queues.": "SwAV queues",
             "momentum_backbone.": "momentum backbone",
             "momentum_projection_head.": "momentum projection head"}
    for copy, why in [("teacher", "teacher"), ("student", "student (lightly's DINO evaluates the teacher)"),
                      ("query", "query encoder (lightly's MoCoV2 evaluates the key encoder)")]:
        heads[f"{copy}_backbone."] = f"{why} backbone"
        heads[f"{copy}_projection_head."] = f"{why} projection head"
    return heads


_SOLO_HEADS = {
    "classifier.": "online linear classifier", "momentum_classifier.": "momentum classifier",
    "momentum_backbone.": "momentum backbone", "projector.": "projector",
    "momentum_projector.": "momentum projector", "predictor.": "predictor", "head.": "DINO head",
    "momentum_head.": "momentum DINO head", "prototypes.": "prototypes",
    "dino_loss_func.": "DINO loss center",
    "queue": "queue", "queue_ptr": "queue", "queue_y": "queue", "queue_index": "queue",
    "local_memory_index": "DeepCluster memory bank", "local_memory_embeddings": "DeepCluster memory bank"}
_MM_HEADS = {
    "neck.": "neck (projector)", "head.": "head (predictor, loss)", "momentum_encoder.": "momentum encoder",
    "target_net.": "target network", "online_net.": "online network (backbone + neck again)",
    "base_encoder.": "backbone + neck again", "encoder_q.": "query encoder (backbone + neck again)",
    "encoder_k.": "key encoder", "data_preprocessor.": "input normalisation", "queue": "queue",
    "queue_ptr": "queue", "queue2": "dense queue", "queue2_ptr": "dense queue"}
_SEQ_FC = "classifier (children index 9)"

# Layouts that fit the same keys are told apart by their marks and, last, by this order: the first that
# explains every key wins, so layouts with marks come first and the mark-free ones (told apart by their
# prefix alone) last.
LAYOUTS = (
    Layout("vissl", "VISSL", "VISSL trunk", "trunk._feature_blocks.", {"heads.": "VISSL heads"}),
    Layout("vissl", "VISSL", "VISSL trunk", "_feature_blocks."),
    Layout("lightly", "lightly", "lightly (nn.Sequential backbone)", "backbone.",
           _lightly_heads() | {"backbone.9.": _SEQ_FC}, sequential=True),
    Layout("lightly", "lightly", "lightly (nn.Sequential backbone)", "", {"9.": _SEQ_FC}, sequential=True),
    Layout("dino", "DINO", "DINO checkpoint (teacher)", "backbone.", {"head.": "DINO head"}, ("@teacher",)),
    Layout("solo-learn", "solo-learn", "solo-learn Lightning checkpoint", "backbone.", _SOLO_HEADS,
           ("classifier.", LIGHTNING)),
    Layout("lightly", "lightly", "lightly (torchvision backbone)", "backbone.", _lightly_heads(),
           ("projection_head.", "prediction_head.", "online_classifier.")),
    Layout("barlow-twins", "Barlow Twins", "Barlow Twins checkpoint", "backbone.",
           {"projector.": "projector", "bn.": "affine-free BatchNorm of the embeddings"},
           ("bn.running_mean",)),
    Layout("byol-pytorch", "byol-pytorch", "byol-pytorch (lucidrains) checkpoint", "net.",
           {"net.fc.": "classifier (unused)", "online_encoder.": "online encoder (the net again, projector)",
            "online_predictor.": "predictor", "target_encoder.": "target encoder"}, ("online_encoder.",)),
    Layout("pixpro", "PixPro", "PixPro checkpoint", "encoder.",
           {"encoder_k.": "momentum encoder", "projector.": "projector", "projector_k.": "momentum projector",
            "projector_instance.": "instance projector",
            "projector_instance_k.": "momentum instance projector", "predictor.": "predictor",
            "value_transform.": "value transform"}, ("encoder_k.",)),
    Layout("mmselfsup", "mmselfsup/mmpretrain", "mmselfsup/mmpretrain", "backbone.", _MM_HEADS,
           ("neck.", "head.", "momentum_encoder.", "target_net.", "encoder_q.", "@meta")),
    Layout("swav", "SwAV", "SwAV checkpoint", "",
           {"projection_head.": "projection head", "prototypes.": "prototypes"},
           ("projection_head.", "prototypes.")),
    Layout("fastsiam", "FastSiam", "FastSiam checkpoint", "backbone.",
           {"backbone.fc.": "classifier", "projector.": "projector", "predictor.": "predictor"}),
    Layout("simsiam", "SimSiam", "SimSiam checkpoint", "encoder.",
           {"encoder.fc.": "projector", "predictor.": "predictor"}),
    Layout("moco", "MoCo v1/v2", "MoCo v1/v2 checkpoint", "encoder_q.",
           {"encoder_q.fc.": "projection head", "encoder_k.": "key encoder", "queue": "queue",
            "queue_ptr": "queue"}),
    Layout("moco-v3", "MoCo v3", "MoCo v3 checkpoint", "base_encoder.",
           {"base_encoder.fc.": "projector", "momentum_encoder.": "momentum encoder",
            "predictor.": "predictor"}),
    Layout("torchvision", "torchvision", "torchvision state dict", "", {"fc.": "classifier"}),
)
SOURCES = tuple(dict.fromkeys(layout.source for layout in LAYOUTS))


def unwrap(keys) -> str:
    """The wrapper prefixes every key carries ("module.", "module._orig_mod.", or "")."""
    keys, found = list(keys), ""
    while keys:
        w = next((w for w in WRAPPERS if all(k.startswith(found + w) for k in keys)), None)
        if w is None:
            break
        found += w
    return found


@dataclass
class Fit:
    layout: Layout
    backbone: dict   # key in the file -> torchvision key
    heads: dict      # key in the file -> head prefix
    unknown: list
    marked: bool


def fit(layout: Layout, keys: list[str], context=()) -> Fit:
    """Sort the (unwrapped) keys into this layout's backbone, heads and unknown."""
    backbone, heads, unknown = {}, {}, []
    for k in keys:
        head = layout.head_of(k)
        tv = None if head else layout.torchvision_key(k)
        if head:
            heads[k] = head
        elif tv:
            backbone[k] = tv
        else:
            unknown.append(k)
    marked = not layout.marks or any(
        (m[1:] in context) if m.startswith("@") else any(k.startswith(m) for k in keys) for m in layout.marks)
    return Fit(layout, backbone, heads, unknown, marked)


def detect(keys: list[str], context=(), source: str | None = None) -> list[Fit]:
    """The layouts whose stem is in `keys` (unwrapped) and whose marks are present, best first: fewest keys
    left unexplained, then LAYOUTS order. `source` keeps only that library's layouts (marks or not);
    `context` holds the checkpoint's top-level entry names (for marks like "@meta")."""
    layouts = [la for la in LAYOUTS if source is None or la.source == source]
    fits = [f for f in (fit(la, keys, context) for la in layouts) if "conv1.weight" in f.backbone.values()]
    if source is None:
        fits = [f for f in fits if f.marked]
    return sorted(fits, key=lambda f: len(f.unknown))  # stable: LAYOUTS order breaks ties


def locate(ckpt: dict) -> tuple[dict, str] | None:
    """The weights inside a checkpoint dict, flattened to dotted keys, and where they were; None if no entry
    holds them (the caller then tries the top level)."""
    vissl = ckpt.get("classy_state_dict")
    if isinstance(vissl, dict) and isinstance(vissl.get("base_model"), dict):
        model = vissl["base_model"].get("model")
        if isinstance(model, dict):  # {"trunk": {...}, "heads": {...}} -> "trunk.<key>", "heads.<key>"
            return _flatten(model), "classy_state_dict.base_model.model"
    if isinstance(ckpt.get("teacher"), dict) and isinstance(ckpt.get("student"), dict):
        return ckpt["teacher"], "teacher"  # DINO evaluates the teacher (eval_*.py --checkpoint_key)
    # Lightning, mmengine/mmcv, SimSiam, MoCo: state_dict; this project, Barlow Twins, PixPro: model;
    # model_state_dict: the PyTorch saving tutorial's name
    for where in ("state_dict", "model", "model_state_dict"):
        if isinstance(ckpt.get(where), dict):
            return ckpt[where], where
    return None


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= _flatten(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out
