"""Convert a ResNet checkpoint to detectron2 weights (or to a clean torchvision state dict).

    python -m transfer.convert INPUT OUTPUT.pth   # recommended: detectron2 loads it with torch's safe loader
    python -m transfer.convert INPUT OUTPUT.pkl   # MoCo's converter's format (numpy arrays, plain pickle)
    python -m transfer.convert INPUT OUTPUT.pth --format torchvision

The input is recognised by its keys (no flag): this project's checkpoint.pth (``model`` with ``backbone.*``,
``projector.*``, ``predictor.*``) or a bare backbone export, official SimSiam (``module.encoder.*`` or
``encoder.*``), MoCo v1/v2 (``module.encoder_q.*``), MoCo v3 ResNet (``module.base_encoder.*``) and plain
torchvision state dicts. ResNet-18/34/50/101/152 are told apart by their blocks.

The detectron2 output follows moco@7397dfe detection/convert-pretrain-to-detectron2.py:
``{"model": {name: tensor}, "__author__": ..., "matching_heuristics": True}`` in detectron2's ResNet naming.
detectron2 then matches names by suffix, so one file serves FPN (``backbone.bottom_up.res2...``) and C4
(``backbone.res2...`` and ``roi_heads.res5...``). A key that does not match is only a log warning in
detectron2, so this converter is strict instead: every backbone tensor is mapped, every other tensor is a
known head that is dropped (and listed), every tensor has the shape of the ResNet its keys describe, and
anything else is an error before anything is written.

Why ``.pth`` works: detectron2 0.6 ``DetectionCheckpointer._load_file`` unpickles ``.pkl`` with plain
``pickle``; any other name goes through fvcore's ``torch.load`` (weights_only by default since torch 2.6), and
a loaded dict that has a ``"model"`` entry is returned as it is, so ``matching_heuristics`` and ``__author__``
reach ``_load_model`` exactly as from a ``.pkl``. ``__author__`` must not be ``"Caffe2"``: detectron2 would
rename the keys a second time (``c2_conversion``).
"""
from __future__ import annotations

import argparse
import os
import pickle
import re
import sys
import tempfile
import warnings

import torch

AUTHOR = "FastSiam-convert"

# name, backbone prefix, dropped heads {prefix (ends with ".") or exact key: what it is}
FORMATS = (
    ("FastSiam", "backbone.",
     {"backbone.fc.": "classifier", "projector.": "projector", "predictor.": "predictor"}),
    ("SimSiam", "encoder.", {"encoder.fc.": "projector", "predictor.": "predictor"}),
    ("MoCo v1/v2", "encoder_q.",
     {"encoder_q.fc.": "projection head", "encoder_k.": "key encoder", "queue": "queue",
      "queue_ptr": "queue"}),
    ("MoCo v3", "base_encoder.",
     {"base_encoder.fc.": "projector", "momentum_encoder.": "momentum encoder", "predictor.": "predictor"}),
    ("torchvision", "", {"fc.": "classifier"}),
)
# (bottleneck?, blocks per stage) -> depth, as in torchvision's resnet18..resnet152
DEPTHS = {(False, (2, 2, 2, 2)): 18, (False, (3, 4, 6, 3)): 34, (True, (3, 4, 6, 3)): 50,
          (True, (3, 4, 23, 3)): 101, (True, (3, 8, 36, 3)): 152}
_BN = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
_STEM_RE = re.compile(rf"^(conv1\.weight|bn1\.{_BN})$")
_BLOCK_RE = re.compile(
    rf"^layer[1-4]\.\d+\.(conv[1-3]\.weight|bn[1-3]\.{_BN}|downsample\.0\.weight|downsample\.1\.{_BN})$")
_BN_REQUIRED = ("weight", "bias", "running_mean", "running_var")  # num_batches_tracked is optional


class ConvertError(Exception):
    """A bad input; the message is one line meant for the user."""


def _first_line(e: BaseException) -> str:
    """The first sentence of an exception's message, short enough for a one-line error."""
    text = (str(e).strip().splitlines() or [""])[0].split(". ")[0][:160]
    return f"{type(e).__name__}: {text}" if text and text != type(e).__name__ else type(e).__name__


def _short(keys, n: int = 5) -> str:
    keys = sorted(keys)
    more = f" ... ({len(keys)} in all)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def load_checkpoint(path: str) -> dict:
    """torch.load(weights_only=True) with every failure turned into a one-line ConvertError."""
    if os.path.isdir(path):
        raise ConvertError(f"{path} is a directory, not a checkpoint file")
    if not os.path.isfile(path):
        raise ConvertError(f"{path}: no such file")
    if os.path.getsize(path) == 0:
        raise ConvertError(f"{path} is empty (0 bytes)")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols of files it then loads fine
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for non-checkpoints and truncated files
        text = str(e)
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        if found:
            raise ConvertError(f"{path} holds {found.group(1)}, which torch's safe loader (weights_only) "
                               "refuses to unpickle; re-save only its state_dict where you trust the file"
                               ) from None
        detail = re.search(r"WeightsUnpickler error:\s*(.+)", text)  # torch's reason, after a long preamble
        reason = f"{type(e).__name__}: {detail.group(1).strip()[:160]}" if detail else _first_line(e)
        raise ConvertError(f"{path} is not a readable PyTorch checkpoint (truncated or another format?): "
                           f"{reason}") from None
    if not isinstance(obj, dict):
        raise ConvertError(f"{path} holds a {type(obj).__name__}, not a checkpoint dict")
    return obj


def find_state_dict(ckpt: dict, path: str) -> tuple[dict, str]:
    """The model's state dict in a checkpoint, and where it was ("state_dict", "model" or top level)."""
    for where in ("state_dict", "model"):
        if isinstance(ckpt.get(where), dict):
            return ckpt[where], where
    if ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        return ckpt, "top level"
    raise ConvertError(f"{path} holds no state dict (top-level keys: {_short(map(str, ckpt))})")


def detect_format(sd: dict, path: str) -> tuple[str, str, str, dict]:
    """(format name, prefix as written in the file, backbone prefix after "module.", dropped heads)."""
    bad = [str(k) for k, v in sd.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ConvertError(f"{path}: state dict entries that are not tensors: {_short(bad)}")
    ddp = "module." if sd and all(k.startswith("module.") for k in sd) else ""
    keys = {k[len(ddp):] for k in sd}
    found = [f for f in FORMATS if f[1] + "conv1.weight" in keys]
    if not found:
        if "stem.conv1.weight" in keys:
            raise ConvertError(f"{path} is already in detectron2's naming (stem.conv1.weight): use it as is")
        raise ConvertError(f"{path} holds no ResNet: no conv1.weight under any known prefix "
                           f"(backbone., encoder., encoder_q., base_encoder., none); keys: {_short(sd)}")
    if len(found) > 1:
        prefixes = ", ".join(ddp + f[1] for f in found)
        raise ConvertError(f"{path}: ambiguous, ResNets under several prefixes: {prefixes}")
    name, prefix, heads = found[0]
    return name, ddp + prefix, ddp, heads


def resnet_shapes(bottleneck: bool, blocks: tuple[int, ...], width: int = 64, groups: int = 1,
                  stem: int = 7) -> dict[str, tuple[int, ...]]:
    """Every tensor of a torchvision ResNet without fc -> its shape, in the network's order.

    As torchvision's resnet.py builds it: a 64-channel stem conv of `stem` x `stem` on 3 input channels; stage
    s (1-4) has planes = 64 * 2**(s-1); a basic block is two 3x3 convs of `planes`, a bottleneck a 1x1 to
    `width` * 2**(s-1) channels (64 for ResNet-50, 128 for wide ones, grouped for ResNeXt), a 3x3 in `groups`
    groups and a 1x1 to 4 * planes; block 0 of a stage gets a 1x1 projection shortcut where channels or
    stride change. Each BatchNorm's vectors have its conv's output width; num_batches_tracked is a scalar.
    """
    def bn(name: str, n: int) -> dict:
        return {f"{name}.{p}": (n,) for p in _BN_REQUIRED} | {f"{name}.num_batches_tracked": ()}

    shapes = {"conv1.weight": (64, 3, stem, stem)} | bn("bn1", 64)
    channels = 64
    for stage, n in enumerate(blocks, start=1):
        planes = 64 * 2 ** (stage - 1)
        inner = width * 2 ** (stage - 1)
        out = planes * 4 if bottleneck else planes
        for i in range(n):
            b = f"layer{stage}.{i}."
            if bottleneck:
                convs = [(inner, channels, 1), (inner, inner // groups, 3), (out, inner, 1)]
            else:
                convs = [(planes, channels, 3), (planes, planes, 3)]
            for c, (c_out, c_in, k) in enumerate(convs, start=1):
                shapes |= {b + f"conv{c}.weight": (c_out, c_in, k, k)} | bn(b + f"bn{c}", c_out)
            if i == 0 and (stage > 1 or bottleneck):  # channels or stride change: a projection shortcut
                shapes |= {b + "downsample.0.weight": (out, channels, 1, 1)} | bn(b + "downsample.1", out)
            channels = out
    return shapes


def _dims(shape) -> str:
    return "x".join(map(str, shape)) or "scalar"


def check_shapes(shapes: dict, depth: int, path: str) -> None:
    """Every tensor's shape against the ResNet the keys describe; a one-line ConvertError naming the first few
    that differ. `shapes` maps torchvision keys to shapes (tensors' or numpy arrays').

    The keys fix depth and block type; the stem's kernel (7x7, or CIFAR's 3x3), the bottleneck width and the
    groups are read from the stem and the first block, so that wide ResNets and ResNeXt pass and every other
    tensor must agree with them."""
    bottleneck = "layer1.0.conv3.weight" in shapes
    blocks = tuple(len({k.split(".")[1] for k in shapes if k.startswith(f"layer{s}.")}) for s in range(1, 5))
    stem, width, groups = 7, 64, 1
    conv1, first, second = (tuple(shapes.get(k, ())) for k in
                            ("conv1.weight", "layer1.0.conv1.weight", "layer1.0.conv2.weight"))
    if len(conv1) == 4 and conv1[-1] in (3, 7):
        stem = conv1[-1]
    if bottleneck and len(first) == 4 and len(second) == 4 and first[0] > 0 and second[1] > 0:
        width = first[0]
        groups = width // second[1] if width % second[1] == 0 else 1
    expected = resnet_shapes(bottleneck, blocks, width, groups, stem)
    wrong = [f"{k} is {_dims(shapes[k])} (expected {_dims(v)})"
             for k, v in expected.items() if k in shapes and tuple(shapes[k]) != v]
    if wrong:
        kind = "bottleneck" if bottleneck else "basic"
        more = f" ... ({len(wrong)} in all)" if len(wrong) > 3 else ""
        raise ConvertError(f"{path}: {len(wrong)} tensors do not fit a ResNet-{depth} ({kind} blocks "
                           f"{'-'.join(map(str, blocks))}): {'; '.join(wrong[:3])}{more}; nothing written")


def detectron2_name(key: str) -> str:
    """torchvision ResNet key -> detectron2's (conv1 -> stem.conv1, layer1.0.bn2 -> res2.0.conv2.norm)."""
    m = re.match(r"^bn1\.(\w+)$", key)
    if m:
        return f"stem.conv1.norm.{m.group(1)}"
    if key == "conv1.weight":
        return "stem.conv1.weight"
    stage, rest = re.match(r"^layer(\d)\.(.*)$", key).groups()
    rest = re.sub(r"^(\d+)\.bn(\d)\.", r"\1.conv\2.norm.", rest)
    rest = rest.replace(".downsample.0.", ".shortcut.").replace(".downsample.1.", ".shortcut.norm.")
    return f"res{int(stage) + 1}.{rest}"


def split_checkpoint(sd: dict, path: str) -> dict:
    """Sort every tensor into backbone (torchvision keys), dropped heads or unknown; unknown is an error."""
    name, shown_prefix, ddp, heads = detect_format(sd, path)
    prefix = shown_prefix[len(ddp):]
    backbone, dropped, unknown = {}, {}, []
    for key, value in sd.items():
        k = key[len(ddp):]
        head = next((h for h in heads if (k.startswith(h) if h.endswith(".") else k == h)), None)
        if head is not None:
            label = f"{ddp}{head}{'*' if head.endswith('.') else ''} ({heads[head]})"
            dropped[label] = dropped.get(label, 0) + 1
        elif k.startswith(prefix) and (_STEM_RE.match(k[len(prefix):]) or _BLOCK_RE.match(k[len(prefix):])):
            backbone[k[len(prefix):]] = value  # torchvision key
        else:
            unknown.append(key)
    if unknown:
        raise ConvertError(f"{path}: {len(unknown)} keys are neither {name} backbone nor a known head: "
                           f"{_short(unknown)}; nothing written")
    bottleneck = "layer1.0.conv3.weight" in backbone
    blocks = tuple(len({k.split(".")[1] for k in backbone if k.startswith(f"layer{s}.")})
                   for s in range(1, 5))
    depth = DEPTHS.get((bottleneck, blocks))
    if depth is None:
        kind = "bottleneck" if bottleneck else "basic"
        raise ConvertError(f"{path}: unsupported ResNet layout ({kind} blocks {blocks}); "
                           "supported depths are 18, 34, 50, 101, 152")
    everything = resnet_shapes(bottleneck, blocks).keys()
    optional = {k for k in everything if k.endswith(".num_batches_tracked")}  # old files lack them
    expected = everything - optional
    missing, extra = expected - backbone.keys(), backbone.keys() - expected - optional
    if missing or extra:
        problem = f"missing {_short(missing)}" if missing else f"unexpected {_short(extra)}"
        raise ConvertError(f"{path}: incomplete ResNet-{depth} under '{shown_prefix}': {problem}; "
                           "nothing written")
    check_shapes({k: tuple(v.shape) for k, v in backbone.items()}, depth, path)
    return {"format": name, "prefix": shown_prefix, "depth": depth, "blocks": blocks, "backbone": backbone,
            "dropped": dropped}


def atomic_write(path: str, write) -> None:
    """write(file) into a temp file next to `path`, then os.replace: never a half-written output."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file private; give it a normal file's mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def check_output(output_path: str, fmt: str) -> None:
    """Fail early on an output name detectron2 would misread (it picks its loader by the extension)."""
    if fmt not in ("detectron2", "torchvision"):
        raise ConvertError(f"unknown --format {fmt!r}: use detectron2 or torchvision")
    if os.path.isdir(output_path):
        raise ConvertError(f"{output_path} is a directory: give the output file's name")
    allowed = (".pth", ".pkl") if fmt == "detectron2" else (".pth",)
    if os.path.splitext(output_path)[1] not in allowed:
        raise ConvertError(f"{output_path}: output must end with {' or '.join(allowed)} for --format {fmt}")


def convert(input_path: str, output_path: str, fmt: str = "detectron2") -> dict:
    """Convert `input_path`, write `output_path` (.pth or .pkl); returns a summary. Raises ConvertError."""
    check_output(output_path, fmt)
    ext = os.path.splitext(output_path)[1]
    same = os.path.isfile(output_path) and os.path.isfile(input_path)
    if same and os.path.samefile(input_path, output_path):
        raise ConvertError(f"{output_path} is the input file; choose another output name")
    ckpt = load_checkpoint(input_path)
    sd, where = find_state_dict(ckpt, input_path)
    parts = split_checkpoint(sd, input_path)
    backbone = parts["backbone"]
    notes = []  # what the detectron2 config must say for these weights, where it differs from R50
    if fmt == "detectron2" and parts["depth"] in (18, 34):
        notes.append(f"detectron2 needs MODEL.RESNETS.DEPTH {parts['depth']} and RES2_OUT_CHANNELS 64 "
                     "(FPN only: the C4 head is built from bottleneck blocks)")
    elif fmt == "detectron2" and parts["depth"] != 50:
        notes.append(f"detectron2 needs MODEL.RESNETS.DEPTH {parts['depth']}")
    if fmt == "detectron2" and tuple(backbone["layer1.0.conv2.weight"].shape[:2]) != (64, 64):
        notes.append("layer1.0.conv2 is not 64x64 (wide ResNet or ResNeXt?): set detectron2's "
                     "RESNETS.WIDTH_PER_GROUP / NUM_GROUPS to match")
    if fmt == "detectron2" and backbone["conv1.weight"].shape[-1] != 7:
        k = backbone["conv1.weight"].shape[-1]
        raise ConvertError(f"{input_path}: the stem conv1 is {k}x{k} (CIFAR stem?), detectron2's ResNet stem "
                           "is 7x7 and would silently skip it; use --format torchvision")

    tensors = {k: v.detach().cpu().clone() for k, v in backbone.items()}  # clone: saves no shared storage
    if fmt == "torchvision":
        payload, save = tensors, torch.save
    else:
        model = {detectron2_name(k): (v.numpy() if ext == ".pkl" else v) for k, v in tensors.items()}
        payload = {"model": model, "__author__": AUTHOR, "matching_heuristics": True}
        save = pickle.dump if ext == ".pkl" else torch.save
    try:
        atomic_write(output_path, lambda f: save(payload, f))
    except (OSError, RuntimeError) as e:  # torch.save reports a full disk as RuntimeError
        raise ConvertError(f"cannot write {output_path}: {_first_line(e)}") from None
    return {"input": input_path, "output": output_path, "output_format": fmt,
            "input_format": parts["format"], "prefix": parts["prefix"], "state_dict_at": where,
            "depth": parts["depth"], "blocks": parts["blocks"], "tensors_written": len(tensors),
            "tensors_dropped": sum(parts["dropped"].values()), "dropped": parts["dropped"], "notes": notes}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m transfer.convert", description=__doc__.splitlines()[0])
    parser.add_argument("input", help="checkpoint: FastSiam, SimSiam, MoCo v1/v2/v3 or torchvision ResNet")
    parser.add_argument("output", help="OUTPUT.pth (recommended) or OUTPUT.pkl")
    parser.add_argument("--format", default="detectron2", choices=("detectron2", "torchvision"))
    args = parser.parse_args(argv)
    try:
        s = convert(args.input, args.output, args.format)
    except ConvertError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if s["dropped"]:
        heads = ", ".join(f"{k}: {n}" for k, n in s["dropped"].items())
        print(f"dropped heads: {heads}", file=sys.stderr)
    for note in s["notes"]:
        print(f"note: {note}", file=sys.stderr)
    prefix = f", backbone prefix '{s['prefix']}'" if s["prefix"] else ""
    print(f"input:   {s['input_format']} checkpoint ({s['state_dict_at']}{prefix})")
    print(f"depth:   ResNet-{s['depth']} (blocks {'-'.join(map(str, s['blocks']))})")
    print(f"written: {s['tensors_written']} tensors in {s['output_format']} naming -> {s['output']}")
    print(f"dropped: {s['tensors_dropped']} tensors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
