"""Convert a ResNet checkpoint to detectron2 weights (or to a clean torchvision state dict).

    python -m transfer.convert INPUT OUTPUT.pth   # recommended: detectron2 loads it with torch's safe loader
    python -m transfer.convert INPUT OUTPUT.pkl   # MoCo's converter's format (numpy arrays, plain pickle)
    python -m transfer.convert INPUT OUTPUT.pth --format torchvision
    python -m transfer.convert INPUT OUTPUT.pth --source solo-learn   # a layout forced, not recognised

The input is recognised by its keys (no flag), in the layouts of transfer/layouts.py: this project's
checkpoint.pth or a backbone export, SimSiam, MoCo v1/v2/v3, lightly (nn.Sequential or torchvision backbone,
benchmark Lightning checkpoints), solo-learn, mmselfsup/mmpretrain (and OpenSelfSup: DenseCL), VISSL,
DINO, SwAV, Barlow Twins, byol-pytorch, PixPro and plain torchvision state dicts. ResNet-18/34/50/101/152 are
told apart by their blocks. Lightning, mmengine and research checkpoints pickle a few library objects beside
the weights; transfer/safe_load.py loads those as inert records, so nothing in the file runs.

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

import torch

from transfer import layouts, safe_load

AUTHOR = "FastSiam-convert"

# (bottleneck?, blocks per stage) -> depth, as in torchvision's resnet18..resnet152
DEPTHS = {(False, (2, 2, 2, 2)): 18, (False, (3, 4, 6, 3)): 34, (True, (3, 4, 6, 3)): 50,
          (True, (3, 4, 23, 3)): 101, (True, (3, 8, 36, 3)): 152}
_BN_REQUIRED = ("weight", "bias", "running_mean", "running_var")  # num_batches_tracked is optional


class ConvertError(Exception):
    """A bad input; the message is one line meant for the user."""


def _short(keys, n: int = 5) -> str:
    keys = sorted(keys)
    more = f" ... ({len(keys)} in all)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def _load(path: str) -> tuple[dict, list[str]]:
    """(checkpoint dict, names of the metadata objects loaded as stand-ins); one-line ConvertErrors."""
    if os.path.isdir(path):
        raise ConvertError(f"{path} is a directory, not a checkpoint file")
    if not os.path.isfile(path):
        raise ConvertError(f"{path}: no such file")
    if os.path.getsize(path) == 0:
        raise ConvertError(f"{path} is empty (0 bytes)")
    try:
        obj, stand_ins = safe_load.load(path)  # torch.load(weights_only=True), nothing in the file runs
    except safe_load.LoadError as e:
        raise ConvertError(str(e)) from None
    if not isinstance(obj, dict):
        raise ConvertError(f"{path} holds a {type(obj).__name__}, not a checkpoint dict")
    return obj, stand_ins


def load_checkpoint(path: str) -> dict:
    """torch.load(weights_only=True), with the metadata objects of Lightning, mmengine and research repos as
    inert stand-ins (transfer/safe_load.py); every failure is a one-line ConvertError."""
    return _load(path)[0]


def find_state_dict(ckpt: dict, path: str) -> tuple[dict, str]:
    """The model's weights in a checkpoint and where they were ("state_dict", "model", "teacher",
    "classy_state_dict.base_model.model", "top level", ...); nested dicts (VISSL's trunk and heads) come back
    as one level of dotted keys."""
    found = layouts.locate(ckpt)
    if found:
        return found
    if ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        return ckpt, "top level"
    raise ConvertError(f"{path} holds no state dict (top-level keys: {_short(map(str, ckpt))})")


def detect_format(sd: dict, path: str, *, source: str | None = None, context=()) -> tuple:
    """(format name, backbone prefix as written in the file, wrapper prefix, layouts.Fit) of the best layout.

    `context`: the checkpoint's top-level entry names (Lightning's, mmengine's "meta", DINO's "teacher"),
    which tell apart layouts that share key names; `source` forces one library's layouts (--source)."""
    bad = [str(k) for k, v in sd.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ConvertError(f"{path}: state dict entries that are not tensors: {_short(bad)}")
    wrapper = layouts.unwrap(sd)
    keys = [k[len(wrapper):] for k in sd]
    fits = layouts.detect(keys, set(context), source)
    if not fits:
        if source:
            shown = sorted({la.prefix + ("0." if la.sequential else "") for la in layouts.LAYOUTS
                            if la.source == source})
            raise ConvertError(f"{path}: no ResNet in the layout of --source {source} (conv1.weight under "
                               f"{', '.join(repr(p) for p in shown)}); keys: {_short(sd)}")
        if "stem.conv1.weight" in keys:
            raise ConvertError(f"{path} is already in detectron2's naming (stem.conv1.weight): use it as is")
        raise ConvertError(f"{path} holds no ResNet: no conv1.weight under any known prefix "
                           f"({', '.join(sorted({la.prefix or 'none' for la in layouts.LAYOUTS}))}, "
                           f"or nn.Sequential children 0., 4.-7.); keys: {_short(sd)}")
    best = fits[0]
    prefixes = {f.layout.prefix for f in fits}
    if best.unknown and len(prefixes) > 1 and not source:
        shown = ", ".join(sorted(wrapper + p for p in prefixes))
        raise ConvertError(f"{path}: ambiguous, ResNets under several prefixes: {shown}")
    return best.layout.name, wrapper + best.layout.prefix, wrapper, best


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


def split_checkpoint(sd: dict, path: str, *, source: str | None = None, context=()) -> dict:
    """Sort every tensor into backbone (torchvision keys), dropped heads or unknown; unknown is an error.

    Returns "format", "label", "source", "prefix", "depth", "blocks", "backbone" and "dropped" (head ->
    count); `source` and `context` as for detect_format."""
    name, shown_prefix, wrapper, best = detect_format(sd, path, source=source, context=context)
    layout = best.layout
    if best.unknown:
        raise ConvertError(f"{path}: {len(best.unknown)} keys are neither {name} backbone nor a known head "
                           f"(read as {layout.label}; --source picks another layout): "
                           f"{_short(wrapper + k for k in best.unknown)}; nothing written")
    backbone = {tv: sd[wrapper + k] for k, tv in best.backbone.items()}
    dropped = {}
    for head in best.heads.values():
        label = f"{wrapper}{head}{'*' if head.endswith('.') else ''} ({layout.heads[head]})"
        dropped[label] = dropped.get(label, 0) + 1
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
    return {"format": name, "label": layout.label, "source": layout.source, "prefix": shown_prefix,
            "depth": depth, "blocks": blocks, "backbone": backbone, "dropped": dropped}


def read_backbone(path: str, source: str | None = None) -> dict:
    """load_checkpoint + find_state_dict + split_checkpoint: split_checkpoint's dict plus "state_dict_at",
    "container" (e.g. "Lightning 2.4.0 checkpoint") and "stand_ins" (metadata names not rebuilt)."""
    ckpt, stand_ins = _load(path)
    sd, where = find_state_dict(ckpt, path)
    parts = split_checkpoint(sd, path, source=source, context=set(map(str, ckpt)))
    return parts | {"state_dict_at": where, "container": _container(ckpt), "stand_ins": stand_ins}


def _container(ckpt: dict) -> str:
    """The training framework that wrote the file, from its top-level entries ("" if none is known)."""
    meta = ckpt.get("meta") if isinstance(ckpt.get("meta"), dict) else {}
    for version, what in [(ckpt.get("pytorch-lightning_version"), "Lightning"),
                          (meta.get("mmengine_version"), "mmengine"), (meta.get("mmcv_version"), "mmcv")]:
        if isinstance(version, str):
            return f"{what} {version} checkpoint"
    return "VISSL checkpoint" if "classy_state_dict" in ckpt else ""


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
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        # Ctrl-C inside torch.save's writer surfaces as its RuntimeError ("unexpected pos ...") with the
        # interrupt only as __context__: raise the interrupt, so no caller reports it as a write failure.
        if isinstance(e.__context__, (KeyboardInterrupt, SystemExit)):
            raise e.__context__ from None
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


def convert(input_path: str, output_path: str, fmt: str = "detectron2", source: str | None = None) -> dict:
    """Convert `input_path`, write `output_path` (.pth or .pkl); returns a summary. Raises ConvertError.
    `source` forces one library's layout (layouts.SOURCES) instead of recognising it."""
    check_output(output_path, fmt)
    ext = os.path.splitext(output_path)[1]
    same = os.path.isfile(output_path) and os.path.isfile(input_path)
    if same and os.path.samefile(input_path, output_path):
        raise ConvertError(f"{output_path} is the input file; choose another output name")
    if source is not None and source not in layouts.SOURCES:
        raise ConvertError(f"unknown --source {source!r}: use one of {', '.join(layouts.SOURCES)}")
    parts = read_backbone(input_path, source)
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
        raise ConvertError(f"cannot write {output_path}: {safe_load.first_line(e)}") from None
    return {"input": input_path, "output": output_path, "output_format": fmt,
            "input_format": parts["format"], "label": parts["label"], "source": parts["source"],
            "container": parts["container"], "stand_ins": parts["stand_ins"], "prefix": parts["prefix"],
            "state_dict_at": parts["state_dict_at"],
            "depth": parts["depth"], "blocks": parts["blocks"], "tensors_written": len(tensors),
            "tensors_dropped": sum(parts["dropped"].values()), "dropped": parts["dropped"], "notes": notes}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m transfer.convert", description=__doc__.splitlines()[0])
    parser.add_argument("input", help="a ResNet checkpoint (see the README's table of supported sources)")
    parser.add_argument("output", help="OUTPUT.pth (recommended) or OUTPUT.pkl")
    parser.add_argument("--format", default="detectron2", choices=("detectron2", "torchvision"))
    parser.add_argument("--source", choices=layouts.SOURCES,
                        help="read the file in this library's layout instead of recognising it by its keys")
    args = parser.parse_args(argv)
    try:
        s = convert(args.input, args.output, args.format, args.source)
    except ConvertError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if s["dropped"]:
        heads = ", ".join(f"{k}: {n}" for k, n in s["dropped"].items())
        print(f"dropped heads: {heads}", file=sys.stderr)
    for note in s["notes"]:
        print(f"note: {note}", file=sys.stderr)
    if s["stand_ins"]:
        print(f"note: metadata read as inert records, not rebuilt: {', '.join(s['stand_ins'])}",
              file=sys.stderr)
    where = ", ".join(filter(None, [s["container"], s["state_dict_at"],
                                    s["prefix"] and f"backbone prefix '{s['prefix']}'"]))
    print(f"input:   {s['label']} ({where})")
    print(f"depth:   ResNet-{s['depth']} (blocks {'-'.join(map(str, s['blocks']))})")
    print(f"written: {s['tensors_written']} tensors in {s['output_format']} naming -> {s['output']}")
    print(f"dropped: {s['tensors_dropped']} tensors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
