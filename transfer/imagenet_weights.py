"""The ImageNet baselines: detectron2's MSRA ResNet-50 (the paper's "imagenet" rows) and torchvision's
IMAGENET1K_V1 (a second row, "imagenet_torchvision").

    # the paper's rows: MSRA R-50, checked, for configs/transfer/msra/*.yaml (BGR, Caffe mean, std 1)
    python -m transfer.imagenet_weights weights_msra/imagenet.pth                       # downloads it
    python -m transfer.imagenet_weights weights_msra/imagenet.pth --from-file R-50.pkl  # offline
    # torchvision's supervised ResNet-50, hash-checked and converted, for configs/transfer/*.yaml (RGB)
    python -m transfer.imagenet_weights weights/imagenet_torchvision.pth --source torchvision
    python -m transfer.imagenet_weights weights/imagenet_torchvision.pth --source torchvision \\
        --from-file resnet50-0676ba61.pth

Where the paper's ImageNet rows come from: its Random/ImageNet/MoCo rows are the numbers of PyContrast
(Table 1) and of the MoCo paper (Tables 2-4), and their supervised configs load detectron2's
``detectron2://ImageNetPretrained/MSRA/R-50.pkl`` with detectron2's default input: BGR, Caffe pixel mean
[103.530, 116.280, 123.675], PIXEL_STD [1, 1, 1], RESNETS.STRIDE_IN_1X1 True (HobbitLong/PyContrast
pycontrast/detection/configs/R_50_FPN_1x.yaml; facebookresearch/moco detection/configs/coco_R_50_C4_2x.yaml;
DetCo benchmarks/detection/configs keypoint_rcnn_R_50_FPN_2x.yaml and Cityscapes/mask_rcnn_R_50_FPN.yaml).
That file is a Caffe2 pickle: Caffe2 names (``res2_0_branch2a_w``), BatchNorm folded into a scale and a bias
(``_bn_s``, ``_bn_b``: no running statistics), a stem conv bias ``conv1_b`` and the classifier ``fc1000_*``.
detectron2 renames it itself (``__author__ == "Caffe2"``), so it is checked here, not converted: every
backbone tensor present with a ResNet-50 shape, nothing but the known extras, no pickled object but arrays.

torchvision's IMAGENET1K_V1 is another supervised ResNet-50 (RGB, torchvision mean/std, stride in the 3x3
conv). It goes through transfer.convert like FastSiam's checkpoints and runs with the same configs, so it is
the like-for-like baseline for this project's weights, but not the one behind the paper's ImageNet numbers.
"""
from __future__ import annotations

import argparse
import collections
import hashlib
import http.client
import os
import pickle
import re
import shutil
import sys
import tempfile
import urllib.request

import numpy as np
import torch
from tqdm import tqdm

from transfer.convert import ConvertError, atomic_write, check_output, check_shapes, convert, resnet_shapes

URL = "https://download.pytorch.org/models/resnet50-0676ba61.pth"
FILENAME = "resnet50-0676ba61.pth"
# torchvision names its files with the first 8 hex digits of their sha256 (torch.hub's check_hash compares
# only that prefix). The full digest, pinned by several independent projects, starts with it; we check it all.
SHA256 = "0676ba61b6795bbe1773cffd859882e5e297624d384b6993f7c9e683e722fb8a"

MSRA_URL = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"  # what the msra/ configs' MODEL.WEIGHTS say
MSRA_HTTPS = "https://dl.fbaipublicfiles.com/detectron2/ImageNetPretrained/MSRA/R-50.pkl"  # where it resolves
MSRA_FILENAME = "R-50.pkl"
# The input conventions each file was trained with, as detectron2 config keys (tests check the configs against
# these; detectron2's defaults are the MSRA ones).
MSRA_INPUT = {"INPUT.FORMAT": "BGR", "MODEL.PIXEL_MEAN": [103.530, 116.280, 123.675],
              "MODEL.PIXEL_STD": [1.0, 1.0, 1.0], "MODEL.RESNETS.STRIDE_IN_1X1": True}
TORCHVISION_INPUT = {"INPUT.FORMAT": "RGB", "MODEL.PIXEL_MEAN": [123.675, 116.280, 103.530],
                     "MODEL.PIXEL_STD": [58.395, 57.120, 57.375], "MODEL.RESNETS.STRIDE_IN_1X1": False}

R50 = (True, (3, 4, 6, 3))  # bottleneck blocks, blocks per stage
_C2_BLOCK = re.compile(r"^res([2-5])_(\d+)_branch(1|2a|2b|2c)_(w|b|bn_s|bn_b|bn_rm|bn_riv)$")
_C2_STEM = {"conv1_w": "conv1.weight", "res_conv1_bn_s": "bn1.weight", "res_conv1_bn_b": "bn1.bias",
            "res_conv1_bn_rm": "bn1.running_mean", "res_conv1_bn_riv": "bn1.running_var"}
_C2_SUFFIX = {"w": "weight", "bn_s": "weight", "bn_b": "bias", "bn_rm": "running_mean",
              "bn_riv": "running_var"}
# what a pickle of numpy arrays needs to unpickle (Python 2 pickles name numpy.core, numpy 2 numpy._core)
_ARRAY_GLOBALS = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                  ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
                  ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
                  ("collections", "OrderedDict")}


class OfflineError(ConvertError):
    """The weights could not be downloaded; the message says where to put a manual download."""


def _check_source(path: str) -> None:
    if os.path.isdir(path):
        raise ConvertError(f"{path} is a directory, not a weights file")
    if not os.path.isfile(path):
        raise ConvertError(f"{path}: no such file")


def download(url: str, dst: str, check, timeout: float = 30.0) -> None:
    """Fetch url into dst (temp file, check(temp path), os.replace), with a progress bar."""
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    name = os.path.basename(dst)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(dst), prefix="." + name + ".", suffix=".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r, os.fdopen(fd, "wb") as f:
            total = int(r.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=name) as bar:
                for chunk in iter(lambda: r.read(1 << 20), b""):
                    f.write(chunk)
                    bar.update(len(chunk))
        check(tmp)
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _fetch(url: str, source: str, output_path: str, flags: str, check) -> None:
    """Download `url` to `source` unless it is there; offline: one line saying what to do instead."""
    try:
        download(url, source, check)
    except (OSError, http.client.HTTPException) as e:  # no network, DNS failure, timeout, HTTP error
        reason = getattr(e, "reason", None) or e
        raise OfflineError(
            f"cannot download {url} ({reason}); fetch that file where the network allows and put it at "
            f"{source}, or run: python -m transfer.imagenet_weights {output_path} {flags}") from None


# ---------------------------------------------------------------- torchvision IMAGENET1K_V1
def cached_path() -> str:
    """Where torchvision keeps its file: <torch hub dir>/checkpoints/resnet50-0676ba61.pth."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", FILENAME)


def sha256_of(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_hash(path: str, expected: str = SHA256) -> None:
    digest = sha256_of(path)
    if digest != expected:
        raise ConvertError(f"{path}: sha256 {digest[:16]}... is not torchvision's ResNet-50 IMAGENET1K_V1 "
                           f"file ({expected[:16]}...); delete it and download {URL} again")


def torchvision_weights(output_path: str, from_file: str | None = None, fmt: str = "detectron2",
                        *, expected_sha256: str = SHA256) -> dict:
    """Hash-check torchvision's ResNet-50 IMAGENET1K_V1 file and convert it; returns convert()'s summary.

    The file is `from_file` if given, else the copy in torch's hub cache, else downloaded there.
    `expected_sha256` exists for tests only (to convert a fake file); never override it otherwise.
    """
    check_output(output_path, fmt)  # before a 100 MB download
    source = from_file or cached_path()
    if from_file is not None:
        _check_source(from_file)
    elif not os.path.isfile(source):
        _fetch(URL, source, output_path, f"--source torchvision --from-file {FILENAME}",
               lambda tmp: check_hash(tmp, expected_sha256))
    check_hash(source, expected_sha256)
    summary = convert(source, output_path, fmt)
    summary |= {"source": source, "checked": f"sha256 {expected_sha256[:16]}..."}
    return summary


# ---------------------------------------------------------------- MSRA R-50 (Caffe2)
def msra_cached_path() -> str:
    """Where detectron2 (iopath) caches MSRA_URL, so that either download serves the other."""
    cache = os.path.expanduser(os.getenv("FVCORE_CACHE", "~/.torch/iopath_cache"))
    return os.path.join(cache, "detectron2", "ImageNetPretrained", "MSRA", MSRA_FILENAME)


class _ArraysOnly(pickle.Unpickler):
    """Unpickles dicts of numpy arrays and nothing else: a .pkl can run code, this one cannot."""

    def find_class(self, module, name):
        if (module, name) not in _ARRAY_GLOBALS:
            raise pickle.UnpicklingError(f"it pickles {module}.{name}, not only numpy arrays")
        if module.startswith("numpy.core") and hasattr(np, "_core"):  # numpy 2 warns about the old name
            module = "numpy._core" + module[len("numpy.core"):]
        return super().find_class(module, name)


def read_caffe2(path: str) -> dict:
    """{Caffe2 name: numpy array} from an MSRA/Detectron .pkl, read as detectron2 reads it (latin1; a
    ``model`` or ``blobs`` entry; ``_momentum`` blobs dropped), with only numpy objects allowed."""
    _check_source(path)
    try:
        with open(path, "rb") as f:
            data = _ArraysOnly(f, encoding="latin1").load()
    except Exception as e:  # pickle raises many types for other formats and truncated files
        raise ConvertError(f"{path} is not a readable Caffe2 .pkl ({type(e).__name__}: "
                           f"{str(e).splitlines()[0][:160] if str(e) else 'no detail'})") from None
    if not isinstance(data, dict):
        raise ConvertError(f"{path} holds a {type(data).__name__}, not a dict of arrays")
    if "model" in data and "__author__" in data:  # detectron2's own zoo layout
        if data["__author__"] != "Caffe2":
            raise ConvertError(f"{path} is in detectron2's naming (author {data['__author__']!r}), "
                               "not the MSRA Caffe2 file")
        data = data["model"]
    data = data.get("blobs", data)
    blobs = {k: v for k, v in data.items() if not str(k).endswith("_momentum")}
    bad = [str(k) for k, v in blobs.items() if not isinstance(k, str) or not isinstance(v, np.ndarray)]
    if bad:
        raise ConvertError(f"{path}: entries that are not named arrays: {', '.join(sorted(bad)[:5])}")
    return blobs


def torchvision_key(c2_key: str) -> str | None:
    """Caffe2 ResNet name -> torchvision's (res2_0_branch2a_bn_s -> layer1.0.bn1.weight); None if it is none.
    Conv biases (``_b`` of a conv, e.g. conv1_b) give None: detectron2's convs before a norm have no bias."""
    if c2_key in _C2_STEM:
        return _C2_STEM[c2_key]
    m = _C2_BLOCK.match(c2_key)
    if not m or m.group(4) == "b":
        return None
    stage, block, branch, suffix = m.groups()
    bn = suffix.startswith("bn")
    if branch == "1":  # the projection shortcut
        module = "downsample.1" if bn else "downsample.0"
    else:
        module = ("bn" if bn else "conv") + {"2a": "1", "2b": "2", "2c": "3"}[branch]
    return f"layer{int(stage) - 1}.{block}.{module}.{_C2_SUFFIX[suffix]}"


def check_msra(blobs: dict, path: str) -> tuple[dict, dict]:
    """The file is a complete Caffe2 ResNet-50: every backbone tensor with its shape, only known extras.
    Returns {Caffe2 name: array} of the backbone and {what: count} of the extras detectron2 leaves unused."""
    backbone, dropped, unknown = {}, collections.Counter(), []
    for key, value in blobs.items():
        tv, block = torchvision_key(key), _C2_BLOCK.match(key)
        if tv is not None:
            backbone[key] = (tv, value)
        elif key in ("fc1000_w", "fc1000_b"):
            dropped["fc1000_* (classifier)"] += 1
        elif key == "conv1_b" or (block and block.group(4) == "b"):
            dropped["conv biases (detectron2's convs before a norm have none)"] += 1
        else:
            unknown.append(key)
    if unknown:
        raise ConvertError(f"{path}: {len(unknown)} entries are not Caffe2 ResNet names: "
                           f"{', '.join(sorted(unknown)[:5])}; nothing written")
    shapes = {tv: tuple(v.shape) for tv, v in backbone.values()}
    blocks = tuple(len({k.split(".")[1] for k in shapes if k.startswith(f"layer{s}.")}) for s in range(1, 5))
    bottleneck = "layer1.0.conv3.weight" in shapes
    if (bottleneck, blocks) != R50:
        kind = "bottleneck" if bottleneck else "basic"
        raise ConvertError(f"{path} is a ResNet with {kind} blocks {'-'.join(map(str, blocks))}, not the "
                           "MSRA ResNet-50 (bottleneck blocks 3-4-6-3) the msra/ configs are written for")
    # folded BN: scale and bias are required, running statistics are used where a file has them
    required = {k for k in resnet_shapes(*R50) if k.endswith(("weight", "bias"))}
    missing = sorted(required - shapes.keys())
    if missing:
        raise ConvertError(f"{path}: incomplete ResNet-50, missing {', '.join(missing[:5])}"
                           f"{f' ... ({len(missing)} in all)' if len(missing) > 5 else ''}; nothing written")
    check_shapes(shapes, 50, path)
    return {key: value for key, (_, value) in backbone.items()}, dict(dropped)


def msra_weights(output_path: str, from_file: str | None = None) -> dict:
    """Check detectron2's MSRA R-50 and write it where detectron2 loads it from (MODEL.WEIGHTS).

    ``.pkl``: the checked file, byte for byte (detectron2 unpickles it, as from the detectron2:// URL).
    ``.pth``: its backbone tensors under their Caffe2 names with ``__author__ "Caffe2"`` (detectron2 renames
    them, as for the .pkl) read with torch's weights_only loader; extras it would leave unused are left out.
    The file is `from_file` if given, else detectron2's cached copy, else downloaded there.
    """
    check_output(output_path, "detectron2")
    source = from_file or msra_cached_path()
    if from_file is not None:
        _check_source(from_file)
    elif not os.path.isfile(source):
        _fetch(MSRA_HTTPS, source, output_path, f"--from-file {MSRA_FILENAME}",
               lambda tmp: check_msra(read_caffe2(tmp), MSRA_HTTPS))
    backbone, dropped = check_msra(read_caffe2(source), source)
    if os.path.exists(output_path) and os.path.samefile(source, output_path):
        raise ConvertError(f"{output_path} is the input file; choose another output name")
    if output_path.endswith(".pkl"):
        def write(f):
            with open(source, "rb") as src:
                shutil.copyfileobj(src, f)
        written = len(backbone) + sum(dropped.values())
    else:
        model = {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in backbone.items()}
        payload = {"model": model, "__author__": "Caffe2", "matching_heuristics": True}

        def write(f):
            torch.save(payload, f)
        written = len(model)
    try:
        atomic_write(output_path, write)
    except (OSError, RuntimeError) as e:  # torch.save reports a full disk as RuntimeError
        raise ConvertError(f"cannot write {output_path}: {type(e).__name__}: {e}") from None
    return {"source": source, "output": output_path, "depth": 50, "tensors_written": written,
            "dropped": {} if output_path.endswith(".pkl") else dropped,
            "checked": f"Caffe2 ResNet-50, {len(backbone)} backbone tensors"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m transfer.imagenet_weights",
                                     description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", help="OUT.pth (recommended) or OUT.pkl")
    parser.add_argument("--source", default="msra", choices=("msra", "torchvision"),
                        help="msra: detectron2's MSRA R-50, the paper's ImageNet rows (default); "
                             "torchvision: IMAGENET1K_V1, converted like FastSiam's weights")
    parser.add_argument("--from-file", default=None, metavar="PATH",
                        help=f"a manually downloaded copy of {MSRA_HTTPS} (msra) or {URL} (torchvision)")
    parser.add_argument("--format", default="detectron2", choices=("detectron2", "torchvision"),
                        help="torchvision: a plain torchvision state dict (only with --source torchvision)")
    args = parser.parse_args(argv)
    try:
        if args.source == "msra":
            if args.format != "detectron2":
                raise ConvertError("--format torchvision needs --source torchvision (the MSRA file's BN "
                                   "is folded, and it strides in the 1x1 conv: it is no torchvision ResNet)")
            s = msra_weights(args.output, args.from_file)
        else:
            s = torchvision_weights(args.output, args.from_file, args.format)
    except ConvertError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if s["dropped"]:
        print("dropped: " + ", ".join(f"{k}: {n}" for k, n in s["dropped"].items()), file=sys.stderr)
    print(f"source:  {s['source']} ({s['checked']})")
    print(f"written: ResNet-{s['depth']}, {s['tensors_written']} tensors -> {s['output']}")
    if args.source == "msra":
        print("use with configs/transfer/msra/*.yaml (BGR, Caffe pixel mean, std 1, STRIDE_IN_1X1 True)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
