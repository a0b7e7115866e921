"""MODEL.WEIGHTS for detectron2: read the file, match it to the model, refuse what does not fit, load, report.

detectron2's ``DetectionCheckpointer.load`` loads whatever matches and only logs the rest, so a raw
pretraining checkpoint, a torchvision-format file or ResNet-50 weights on a ResNet-18 config would train
from random init under the weights' name (issue 14.1). Its reader and matcher are private methods
(``_load_file``, ``_load_model``) whose calling convention changed after v0.6 (at c69939aa ``_load_file``
asserts it runs inside ``load``), so this module takes the same steps with public functions only, the same
on every detectron2 version:

- read: ``.pkl`` with ``pickle`` as detectron2 reads it (a detectron2-format dict with ``__author__``, or
  Caffe2 blobs: ``_momentum`` entries dropped, ``matching_heuristics`` on, ``__author__ = "Caffe2"``); any
  other file with ``torch.load(weights_only=True)``; a dict without ``"model"`` is itself the model.
- match: under ``matching_heuristics``, detectron2's public
  ``c2_model_loading.align_and_update_state_dicts`` (suffix matching, Caffe2 renaming when
  ``__author__ == "Caffe2"``), as ``DetectionCheckpointer`` does; otherwise exact names after removing a
  DDP ``module.`` prefix, as fvcore's ``Checkpointer`` does.
- check: every backbone tensor of the model (stem and res2-res5 blocks, wherever they live: FPN's
  ``backbone.bottom_up``, C4's ``backbone`` and ``roi_heads.res5``) receives a tensor, and every tensor in
  the file is used with its shape. Exempt: BatchNorm ``num_batches_tracked``; BN running statistics when the
  file has none at all (affine-only BN, as MSRA's Caffe2 ImageNet weights ``R-50.pkl``, whose folded BN is
  its scale and bias); in a Caffe2 file, the ImageNet classifier ``fc1000_*`` and the stem conv's bias
  ``conv1_b``, for which detectron2's ResNet has no place (its own loader drops them too, so the MSRA baseline
  rows of MoCo/PyContrast/DetCo ran without them); ``num_batches_tracked`` in the file where the model has
  none (FrozenBN): a counter, no weight. New layers (FPN, RPN, ROI
  heads, C4's extra res5 norm) are expected to be uninitialised.
- load: ``model.load_state_dict(matched, strict=False)`` with only tensors of the model's shapes.
"""
from __future__ import annotations

import collections
import logging
import os
import pickle
import re

import numpy as np
import torch
from detectron2.checkpoint.c2_model_loading import align_and_update_state_dicts, convert_c2_detectron_names
from detectron2.utils.file_io import PathManager

from transfer import convert

logger = logging.getLogger("transfer")
PARTIAL_FLAG = "--allow-partial-weights"
# a ResNet tensor of the model: the stem, or a block of res2-res5 (not C4's "roi_heads.res5.norm")
_BACKBONE_RE = re.compile(r"(^|\.)(stem|res[2-5]\.\d+)\.")
_BLOCK_RE = re.compile(r"(?:^|\.)res([2-5])\.(\d+)\.(conv[1-3]|shortcut)\.")
_CAFFE2_IGNORED_RE = re.compile(r"^(fc1000_[wb]|conv1_b)$")


class WeightsError(Exception):
    """MODEL.WEIGHTS cannot be used as asked; the message is one line meant for the user."""


def _short(keys, n: int = 3) -> str:
    keys = list(keys)
    return ", ".join(map(str, keys[:n])) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


# ---------------------------------------------------------------- read
def read(path: str) -> dict:
    """``{"model": {name: tensor}, "__author__", "matching_heuristics", "raw", "non_tensors"}`` from a file.

    ``raw`` is what the file holds (for the diagnosis); ``non_tensors`` lists entries of the model dict that
    are no tensor (they cannot be loaded and count as unused)."""
    try:
        local = PathManager.get_local_path(path)  # downloads and caches detectron2:// and https:// weights
    except Exception as e:  # no network, a proxy, an HTTP error: urllib and iopath raise many types
        reason = (str(e).strip().splitlines() or [""])[0][:160]
        raise WeightsError(f"MODEL.WEIGHTS {path} cannot be fetched ({type(e).__name__}: {reason}); offline, "
                           "fetch the file elsewhere and pass its local path (MSRA's R-50: python -m "
                           "transfer.imagenet_weights weights_msra/imagenet.pth --from-file R-50.pkl)") from None
    if path.endswith(".pkl"):
        try:
            with open(local, "rb") as f:
                raw = pickle.load(f, encoding="latin1")  # detectron2's own reader for .pkl does the same
        except Exception as e:  # pickle raises many types for truncated or foreign files
            reason = (str(e).strip().splitlines() or [""])[0][:160]
            raise WeightsError(f"MODEL.WEIGHTS {path} is not a readable pickle: {type(e).__name__}: "
                               f"{reason}") from None
        if not isinstance(raw, dict):
            raise WeightsError(f"MODEL.WEIGHTS {path} holds a {type(raw).__name__}, not a weights dict")
        if "model" in raw and "__author__" in raw:
            ckpt = dict(raw)
        else:  # Caffe2 / Detectron1 model zoo, e.g. ImageNetPretrained/MSRA/R-50.pkl
            blobs = raw.get("blobs", raw)  # detection models have "blobs", ImageNet models do not
            ckpt = {"model": {k: v for k, v in blobs.items() if not k.endswith("_momentum")},
                    "__author__": "Caffe2", "matching_heuristics": True}
    else:
        try:
            raw = convert.load_checkpoint(local)  # torch.load(weights_only=True), one-line errors
        except convert.ConvertError as e:
            raise WeightsError(f"MODEL.WEIGHTS: {e}") from None
        ckpt = dict(raw) if "model" in raw else {"model": raw}
    model = ckpt["model"]
    if not isinstance(model, dict):
        model = {}
    tensors, non_tensors = {}, []
    for k, v in model.items():
        if isinstance(v, np.ndarray):
            v = torch.as_tensor(v)
        if isinstance(k, str) and isinstance(v, torch.Tensor):
            tensors[k] = v
        else:
            non_tensors.append(str(k))
    return {"model": tensors, "__author__": ckpt.get("__author__"),
            "matching_heuristics": bool(ckpt.get("matching_heuristics", False)), "raw": raw,
            "non_tensors": non_tensors}


# ---------------------------------------------------------------- match
def match(model_shapes: dict, ckpt: dict) -> dict:
    """How the checkpoint's tensors land in a model with these ``{key: shape}``.

    Returns ``state`` (model key -> tensor of the model's shape: what will be loaded), ``unused`` (names
    in the file that match no model key), ``incorrect_shapes`` (``[file name, file shape, model key, model
    shape]``)."""
    tensors = ckpt["model"]
    caffe2 = ckpt["__author__"] == "Caffe2"
    if ckpt["matching_heuristics"]:
        renamed_to_original = ({k: k for k in tensors} if not caffe2
                               else convert_c2_detectron_names(dict(tensors))[1])
        shapes_as_tensors = {k: torch.empty(s, device="meta") for k, s in model_shapes.items()}
        try:
            result = align_and_update_state_dicts(shapes_as_tensors, dict(tensors), c2_conversion=caffe2)
        except ValueError as e:  # one checkpoint key matching several model keys
            raise WeightsError(f"MODEL.WEIGHTS: detectron2's name matching failed: {e}") from None
        # result: matched tensors under model keys, then every unmatched tensor under its (renamed) name
        state = {k: v for k, v in result.items() if k in model_shapes and v.shape == model_shapes[k]}
        leftovers = {k: v for k, v in result.items() if k not in state}
    else:
        prefix = "module." if tensors and all(k.startswith("module.") for k in tensors) else ""
        renamed_to_original = {k[len(prefix):]: k for k in tensors}
        renamed = {k[len(prefix):]: v for k, v in tensors.items()}
        state = {k: v for k, v in renamed.items() if k in model_shapes and v.shape == model_shapes[k]}
        leftovers = {k: v for k, v in renamed.items() if k not in state}
    unused, incorrect = [], []
    for k, v in leftovers.items():
        fits = [m for m in model_shapes if m == k or m.endswith("." + k)]
        name = renamed_to_original.get(k, k)
        if fits:
            m = max(fits, key=len)
            incorrect.append([name, list(v.shape), m, list(model_shapes[m])])
        else:
            unused.append(name)
    return {"state": state, "unused": sorted(unused),
            "incorrect_shapes": sorted(incorrect)}


def backbone_keys(model_keys) -> list[str]:
    return [k for k in model_keys if _BACKBONE_RE.search(k)]


def problems(model_shapes: dict, ckpt: dict, matched: dict) -> dict:
    """What makes the file unfit: backbone tensors left uninitialised, file tensors unused or wrong-shaped."""
    file_keys = list(ckpt["model"])
    has_bn_stats = any(re.search(r"(running_mean|running_var|_bn_rm|_bn_riv)$", k) for k in file_keys)
    exempt = ("num_batches_tracked",) + (() if has_bn_stats else ("running_mean", "running_var"))
    required = [k for k in backbone_keys(model_shapes) if not k.endswith(exempt)]
    caffe2 = ckpt["__author__"] == "Caffe2"
    ignored = [k for k in matched["unused"]
               if (caffe2 and _CAFFE2_IGNORED_RE.match(k)) or k.endswith("num_batches_tracked")]
    return {"backbone_tensors": len(required),
            "backbone_not_initialised": [k for k in required if k not in matched["state"]],  # model order
            "unused": [k for k in matched["unused"] if k not in ignored] + ckpt["non_tensors"],
            "ignored": ignored,
            "incorrect_shapes": matched["incorrect_shapes"],
            "bn_statistics_in_file": has_bn_stats}


def _blocks(keys) -> tuple[bool, tuple[int, ...]] | None:
    """(bottleneck?, blocks per stage) of the ResNet whose detectron2-named tensors these are."""
    stages, bottleneck = collections.defaultdict(set), False
    for k in keys:
        found = _BLOCK_RE.search(k)
        if found:
            stages[int(found.group(1))].add(int(found.group(2)))
            bottleneck |= found.group(3) == "conv3"
    if sorted(stages) != [2, 3, 4, 5]:
        return None
    return bottleneck, tuple(len(stages[s]) for s in (2, 3, 4, 5))


def _resnet_name(blocks) -> str:
    depth = convert.DEPTHS.get(blocks)
    return f"ResNet-{depth}" if depth else f"a ResNet with blocks {'-'.join(map(str, blocks[1]))}"


def diagnose(path: str, ckpt: dict, model_shapes: dict) -> str:
    """What the file looks like, and what to do about it."""
    try:  # the converter recognises raw checkpoints and torchvision state dicts by their keys
        sd, _ = convert.find_state_dict(ckpt["raw"], path)
        name = convert.detect_format(sd, path)[0]
    except (convert.ConvertError, AttributeError, TypeError):
        name = None
    if name == "torchvision":
        return (f"it holds torchvision-format keys (conv1.weight, layer1.0...), not detectron2's: run "
                f"python -m transfer.convert {path} OUT.pth and use OUT.pth")
    if name:
        return (f"it is a {name} pretraining checkpoint, not converted weights: run "
                f"python -m transfer.convert {path} OUT.pth first and use OUT.pth")
    file_keys = list(ckpt["model"])
    if ckpt["__author__"] == "Caffe2":
        file_keys = list(convert_c2_detectron_names(dict(ckpt["model"]))[0])
    ours, theirs = _blocks(model_shapes), _blocks(file_keys)
    if ours and theirs and ours != theirs:
        return (f"it holds a {_resnet_name(theirs)} and the config builds a {_resnet_name(ours)}: set "
                "MODEL.RESNETS.DEPTH (and RES2_OUT_CHANNELS: 64 below ResNet-50, 256 from it) to the file's")
    if theirs is None and not ckpt["matching_heuristics"]:
        return "its names are not detectron2 ResNet names; was it written by python -m transfer.convert?"
    return "check that the file and the config describe the same backbone"


def check(model_shapes: dict, path: str, allow_partial: bool = False) -> tuple[dict, dict, dict]:
    """Read and match the file; raise WeightsError unless it fits (or ``allow_partial``).

    Returns (checkpoint, match, problems)."""
    ckpt = read(path)
    matched = match(model_shapes, ckpt)
    found = problems(model_shapes, ckpt, matched)
    missing, unused, wrong = (found["backbone_not_initialised"], found["unused"], found["incorrect_shapes"])
    if (missing or unused or wrong) and not allow_partial:
        parts = []
        if missing:
            parts.append(f"{len(missing)} of {found['backbone_tensors']} backbone tensors would stay "
                         f"uninitialised ({_short(missing)})")
        if unused:
            parts.append(f"{len(unused)} of {len(ckpt['model']) + len(ckpt['non_tensors'])} tensors in the "
                         f"file match no model tensor ({_short(unused)})")
        if wrong:
            parts.append(f"{len(wrong)} have the wrong shape (" + _short(
                f"{f} {tuple(a)} vs model {m} {tuple(b)}" for f, a, m, b in wrong) + ")")
        diagnosis = diagnose(path, ckpt, model_shapes)
        raise WeightsError(f"MODEL.WEIGHTS {path} does not fit the model: {'; '.join(parts)}. "
                           f"{diagnosis[0].upper()}{diagnosis[1:]}. {PARTIAL_FLAG} loads what fits anyway")
    return ckpt, matched, found


# ---------------------------------------------------------------- load
def load(model: torch.nn.Module, path: str, output_dir: str | None, allow_partial: bool = False,
         write_report=None) -> dict:
    """Check, load into ``model`` (no optimizer state) and return the report (written to
    OUTPUT_DIR/weights_report.json by ``write_report(path, report)`` when given)."""
    model_shapes = {k: v.shape for k, v in model.state_dict().items()}
    ckpt, matched, found = check(model_shapes, path, allow_partial)
    result = model.load_state_dict(matched["state"], strict=False)
    assert not result.unexpected_keys  # only model keys of the model's shapes are in matched["state"]
    loaded = sorted(matched["state"])
    not_initialised = sorted(set(model_shapes) - set(loaded))
    groups = collections.Counter(".".join(k.split(".")[:2]) for k in not_initialised)
    n_file = len(ckpt["model"]) + len(ckpt["non_tensors"])
    logger.info(f"Loaded {len(loaded)} of {n_file} checkpoint tensors from {path} "
                f"({len(found['unused'])} unused); {len(not_initialised)} model tensors not initialised from "
                "it: " + (", ".join(f"{g}.* ({n})" for g, n in sorted(groups.items())) or "none"))
    partial = bool(found["backbone_not_initialised"] or found["unused"] or found["incorrect_shapes"])
    if partial:
        logger.warning(f"{PARTIAL_FLAG}: MODEL.WEIGHTS {path} loaded partially (see weights_report.json)")
    report = {"weights": path, "format": ckpt["__author__"] or "plain state dict",
              "matching_heuristics": ckpt["matching_heuristics"], "checkpoint_tensors": n_file,
              "loaded": len(loaded), "allow_partial_weights": allow_partial, "partial": partial,
              "backbone_tensors": found["backbone_tensors"],
              "backbone_not_initialised": found["backbone_not_initialised"],
              "bn_statistics_in_file": found["bn_statistics_in_file"],
              "unused_checkpoint_keys": found["unused"], "ignored_checkpoint_keys": found["ignored"],
              "not_initialised": not_initialised, "incorrect_shapes": found["incorrect_shapes"]}
    if write_report is not None and output_dir:
        os.makedirs(output_dir, exist_ok=True)
        write_report(os.path.join(output_dir, "weights_report.json"), report)
    return report
