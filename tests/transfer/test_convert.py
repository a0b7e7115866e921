"""transfer.convert without detectron2: every input layout, every depth, every bad input.

Fake checkpoints are built here with the real key layouts (torchvision ResNets with random weights, wrapped in
each method's prefixes); nothing is downloaded.
"""
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision

from pretrain.model import SiameseNet
from transfer import convert as cv

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def moco_rename(key: str) -> str:
    """The reference renaming, written independently of the converter: the rules of MoCo's
    convert-pretrain-to-detectron2.py (facebookresearch/moco@7397dfe, detection/) as str.replace in order."""
    if "layer" not in key:
        key = "stem." + key
    for t in [1, 2, 3, 4]:
        key = key.replace(f"layer{t}", f"res{t + 1}")
    for t in [1, 2, 3]:
        key = key.replace(f"bn{t}", f"conv{t}.norm")
    return key.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")


def random_resnet_sd(arch: str = "resnet18", seed: int = 0) -> dict:
    """torchvision state dict whose BN parameters and statistics are random too (torchvision starts them at
    1 and 0, which would hide a swapped BN); conv weights keep torchvision's random init."""
    torch.manual_seed(seed)
    sd = getattr(torchvision.models, arch)().state_dict()
    for k, v in sd.items():
        if k.endswith("running_var"):
            v.copy_(torch.rand_like(v) + 0.5)
        elif k.endswith(("running_mean", "bias")):
            v.copy_(torch.randn_like(v) * 0.1)
        elif v.ndim == 1:  # BN weight
            v.copy_(torch.rand_like(v) * 0.5 + 0.25)
    return sd


def shape_only_sd(arch: str) -> dict:
    """torchvision state dict with the real keys and shapes but zero values: quick even for resnet152."""
    with torch.device("meta"):
        sd = getattr(torchvision.models, arch)().state_dict()
    return {k: torch.zeros(v.shape, dtype=torch.float16 if v.is_floating_point() else v.dtype)
            for k, v in sd.items()}


def backbone_keys(sd: dict) -> list[str]:
    return [k for k in sd if not k.startswith("fc.")]


def mlp_sd(prefix: str, dims: list[int], bn_last: bool = True) -> dict:
    """Linear + BatchNorm1d layers keyed like nn.Sequential heads (prefix.0.weight, prefix.1.running_mean)."""
    seq = []
    for d_in, d_out in zip(dims[:-1], dims[1:], strict=True):
        seq += [torch.nn.Linear(d_in, d_out), torch.nn.BatchNorm1d(d_out), torch.nn.ReLU()]
    if not bn_last:
        seq = seq[:-2]
    return {prefix + k: v for k, v in torch.nn.Sequential(*seq).state_dict().items()}


def wrap(fmt: str, sd: dict) -> tuple[dict, int]:
    """A checkpoint in a method's layout around torchvision weights `sd`, and its number of head tensors."""
    bb = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    feat = sd["fc.weight"].shape[1]
    if fmt == "fastsiam":
        heads = mlp_sd("projector.", [feat, 32, 32]) | mlp_sd("predictor.", [32, 8, 32], bn_last=False)
        model = {"backbone." + k: v for k, v in bb.items()} | heads
        return {"model": model, "optimizer": {"state": {}, "param_groups": []}, "scaler": None, "epoch": 1,
                "iteration": 10, "config": {"arch": "resnet18"}, "git": ""}, len(heads)
    if fmt == "backbone_export":
        return dict(bb), 0
    if fmt in ("simsiam", "simsiam_noddp"):
        p = "module." if fmt == "simsiam" else ""
        heads = mlp_sd(p + "encoder.fc.", [feat, 32, 32])
        heads |= mlp_sd(p + "predictor.", [32, 8, 32], bn_last=False)
        state = {p + "encoder." + k: v for k, v in bb.items()} | heads
        return {"epoch": 100, "arch": "resnet18", "state_dict": state, "optimizer": {"state": {}}}, len(heads)
    if fmt == "moco_v2":
        fc = mlp_sd("module.encoder_q.fc.", [feat, 32], bn_last=False)
        key_enc = {"module.encoder_k." + k: v.clone() for k, v in bb.items()} | {
            k.replace("encoder_q", "encoder_k"): v for k, v in fc.items()}
        state = {"module.encoder_q." + k: v for k, v in bb.items()} | fc | key_enc | {
            "module.queue": torch.randn(16, 64), "module.queue_ptr": torch.zeros(1, dtype=torch.long)}
        return {"epoch": 200, "arch": "resnet18", "state_dict": state}, len(fc) + len(key_enc) + 2
    if fmt == "moco_v3":
        fc = mlp_sd("module.base_encoder.fc.", [feat, 32, 16])
        mom = {"module.momentum_encoder." + k: v.clone() for k, v in bb.items()} | {
            k.replace("base_encoder", "momentum_encoder"): v for k, v in fc.items()}
        pred = mlp_sd("module.predictor.", [16, 32, 16])
        state = {"module.base_encoder." + k: v for k, v in bb.items()} | fc | mom | pred
        ckpt = {"epoch": 100, "arch": "resnet18", "state_dict": state, "scaler": {}}
        return ckpt, len(fc) + len(mom) + len(pred)
    if fmt == "torchvision":
        return dict(sd), 2
    raise ValueError(fmt)


FORMATS = {"fastsiam": "FastSiam", "backbone_export": "torchvision", "simsiam": "SimSiam",
           "simsiam_noddp": "SimSiam", "moco_v2": "MoCo v1/v2", "moco_v3": "MoCo v3",
           "torchvision": "torchvision"}


@pytest.fixture(scope="module")
def r18():
    return random_resnet_sd("resnet18")


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_each_input_layout_gives_exact_detectron2_keys_and_values(tmp_path, r18, fmt):
    ckpt, n_heads = wrap(fmt, r18)
    torch.save(ckpt, tmp_path / "in.pth")
    summary = cv.convert(str(tmp_path / "in.pth"), str(tmp_path / "out.pth"))
    out = torch.load(tmp_path / "out.pth", weights_only=True)

    assert out["__author__"] == cv.AUTHOR != "Caffe2" and out["matching_heuristics"] is True
    expected = {moco_rename(k): r18[k] for k in backbone_keys(r18)}
    assert set(out["model"]) == set(expected)
    for k, v in expected.items():
        assert torch.equal(out["model"][k], v), k
    assert summary["input_format"] == FORMATS[fmt] and summary["depth"] == 18
    assert summary["tensors_written"] == len(expected) and summary["tensors_dropped"] == n_heads


def test_real_siamesenet_checkpoint(tmp_path):
    """This project's own checkpoint.pth layout (pretrain/checkpoint.py), from the real SiameseNet."""
    model = SiameseNet(arch="resnet18", dim=64, pred_dim=16)
    sd = model.state_dict()
    torch.save({"model": sd, "optimizer": {}, "scaler": None, "epoch": 1, "iteration": 5,
                "config": {"arch": "resnet18"}, "git": ""}, tmp_path / "checkpoint.pth")
    s = cv.convert(str(tmp_path / "checkpoint.pth"), str(tmp_path / "out.pkl"))
    out = pickle.load(open(tmp_path / "out.pkl", "rb"))
    bb = [k[len("backbone."):] for k in sd if k.startswith("backbone.")]
    assert set(out["model"]) == {moco_rename(k) for k in bb}
    assert all(isinstance(v, np.ndarray) for v in out["model"].values())
    np.testing.assert_array_equal(out["model"]["res5.1.conv2.weight"],
                                  sd["backbone.layer4.1.conv2.weight"].numpy())
    assert s["tensors_dropped"] == sum(not k.startswith("backbone.") for k in sd)
    assert s["input_format"] == "FastSiam" and s["prefix"] == "backbone."


@pytest.mark.parametrize("arch,depth", [("resnet18", 18), ("resnet34", 34), ("resnet50", 50),
                                        ("resnet101", 101), ("resnet152", 152)])
def test_every_depth_is_detected_and_fully_mapped(tmp_path, arch, depth):
    sd = shape_only_sd(arch)
    torch.save({"state_dict": {"module.encoder." + k: v for k, v in sd.items()}}, tmp_path / "in.pth")
    s = cv.convert(str(tmp_path / "in.pth"), str(tmp_path / "out.pth"))
    out = torch.load(tmp_path / "out.pth", weights_only=True)["model"]
    assert s["depth"] == depth
    expected = {moco_rename(k): tuple(sd[k].shape) for k in backbone_keys(sd)}
    assert {k: tuple(v.shape) for k, v in out.items()} == expected


def test_pkl_output_is_moco_format(tmp_path, r18):
    torch.save(wrap("moco_v2", r18)[0], tmp_path / "in.pth.tar")
    cv.convert(str(tmp_path / "in.pth.tar"), str(tmp_path / "out.pkl"))
    with open(tmp_path / "out.pkl", "rb") as f:
        out = pickle.load(f)
    assert set(out) == {"model", "__author__", "matching_heuristics"} and out["matching_heuristics"] is True
    assert out["__author__"] != "Caffe2"
    np.testing.assert_array_equal(out["model"]["stem.conv1.norm.running_var"], r18["bn1.running_var"].numpy())
    np.testing.assert_array_equal(out["model"]["res3.0.shortcut.norm.weight"],
                                  r18["layer2.0.downsample.1.weight"].numpy())


def test_torchvision_format_loads_back_into_torchvision(tmp_path, r18):
    torch.save(wrap("simsiam", r18)[0], tmp_path / "in.pth")
    cv.convert(str(tmp_path / "in.pth"), str(tmp_path / "tv.pth"), fmt="torchvision")
    sd = torch.load(tmp_path / "tv.pth", weights_only=True)
    net = torchvision.models.resnet18()
    missing, unexpected = net.load_state_dict(sd, strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and unexpected == []
    for k in backbone_keys(r18):
        assert torch.equal(net.state_dict()[k], r18[k]), k


def test_without_num_batches_tracked(tmp_path, r18):
    """Old torchvision files have no num_batches_tracked; they are optional, everything else is required."""
    sd = {k: v for k, v in r18.items() if not k.endswith("num_batches_tracked")}
    torch.save(sd, tmp_path / "in.pth")
    s = cv.convert(str(tmp_path / "in.pth"), str(tmp_path / "out.pth"))
    assert s["tensors_written"] == len(backbone_keys(sd))


# ---- bad inputs: one-line error, exit 2, nothing written, an existing output left as it was ----

class Exploit:
    """Unpickled by plain pickle, this would run a shell command; the safe loader must refuse it."""

    def __reduce__(self):
        return (os.system, ("true",))


def _bad_inputs(tmp: str, r18: dict) -> dict:
    def save(name, obj):
        torch.save(obj, os.path.join(tmp, name))
        return os.path.join(tmp, name)

    good = save("good.pth", wrap("simsiam", r18)[0])
    with open(good, "rb") as f:
        data = f.read()
    paths = {"missing file": (os.path.join(tmp, "nope.pth"), "no such file"),
             "a directory": (tmp, "is a directory")}
    for name, content, msg in [("empty.pth", b"", "empty"),
                               ("truncated.pth", data[: len(data) // 2], "not a readable"),
                               ("text.pth", b"hello\nworld\n", "not a readable")]:
        with open(os.path.join(tmp, name), "wb") as f:
            f.write(content)
        paths[name] = (os.path.join(tmp, name), msg)
    unknown = wrap("simsiam", r18)[0]
    unknown["state_dict"]["module.encoder.extra.weight"] = torch.zeros(1)
    incomplete = wrap("moco_v2", r18)[0]
    del incomplete["state_dict"]["module.encoder_q.layer3.1.bn2.running_var"]
    resnet = torchvision.models.resnet
    odd_depth = resnet.ResNet(resnet.BasicBlock, [1, 1, 1, 1]).state_dict()
    conv_3x3 = shape_only_sd("resnet50")  # a bottleneck's first conv is 1x1
    conv_3x3["layer1.0.conv1.weight"] = torch.zeros(64, 64, 3, 3)
    short_stats = dict(r18)
    short_stats["layer2.1.bn1.running_mean"] = torch.zeros(100)  # its conv has 128 output channels
    cifar = SiameseNet(arch="resnet18", dim=16, pred_dim=8, cifar_stem=True).state_dict()
    vit = {"module.base_encoder.cls_token": torch.zeros(1, 1, 8),
           "module.base_encoder.blocks.0.attn.qkv.weight": torch.zeros(24, 8)}
    paths |= {
        "unsafe pickle": (save("unsafe.pth", {"hook": Exploit(), "state_dict": r18}), "posix.system"),
        "a tensor": (save("tensor.pth", torch.zeros(3)), "not a checkpoint dict"),
        "no state dict": (save("nostate.pth", {"epoch": 3, "arch": "resnet50"}), "no state dict"),
        "no ResNet (ViT)": (save("vit.pth", {"state_dict": vit}), "no ResNet"),
        "unknown keys": (save("unknown.pth", unknown), "module.encoder.extra.weight"),
        "incomplete": (save("incomplete.pth", incomplete), "layer3.1.bn2.running_var"),
        "unsupported depth": (save("odd.pth", odd_depth), "unsupported ResNet layout"),
        "1x1 conv saved as 3x3": (save("conv3x3.pth", {"state_dict": conv_3x3}),
                                  "layer1.0.conv1.weight is 64x64x3x3 (expected 64x64x1x1)"),
        "running_mean of the wrong length": (save("stats.pth", short_stats),
                                             "layer2.1.bn1.running_mean is 100 (expected 128)"),
        "CIFAR stem": (save("cifar.pth", {"model": cifar}), "CIFAR stem"),
        "detectron2 file": (save("d2.pth", {"model": {moco_rename(k): v for k, v in r18.items()}}),
                            "already in detectron2"),
    }
    return paths


def test_bad_inputs_fail_cleanly_and_write_nothing(tmp_path, r18, capsys):
    out = tmp_path / "out" / "weights.pth"
    out.parent.mkdir()
    out.write_bytes(b"previous output")
    for case, (path, msg) in _bad_inputs(str(tmp_path), r18).items():
        rc = cv.main([path, str(out)])
        err = capsys.readouterr().err
        assert rc == 2, case
        assert err.startswith("error: ") and err.count("\n") == 1 and msg in err, (case, err)
        assert out.read_bytes() == b"previous output", case
        assert os.listdir(out.parent) == ["weights.pth"], case  # no temp file left behind


def test_shape_errors_name_the_first_offenders(tmp_path, r18):
    """ResNet-50 tensors under ResNet-18 keys, which the keys alone cannot tell: the first three offenders are
    named, in the network's order, with the count."""
    r50 = shape_only_sd("resnet50")
    mixed = {k: (r50[k] if k in r50 else v) for k, v in r18.items()}  # ResNet-18 keys, ResNet-50 shapes
    torch.save(mixed, tmp_path / "in.pth")
    with pytest.raises(cv.ConvertError) as e:
        cv.convert(str(tmp_path / "in.pth"), str(tmp_path / "out.pth"))
    msg = str(e.value)
    assert "\n" not in msg and "do not fit a ResNet-18 (basic blocks 2-2-2-2)" in msg
    first = msg.index("layer1.0.conv1.weight is 64x64x1x1 (expected 64x64x3x3)")
    assert first < msg.index("layer1.1.conv1.weight is 64x256x1x1 (expected 64x64x3x3)")
    assert msg.count("expected") == 3 and "... (23 in all)" in msg
    assert not (tmp_path / "out.pth").exists()


@pytest.mark.parametrize("arch,depth", [("wide_resnet50_2", 50), ("resnext50_32x4d", 50)])
def test_wide_and_grouped_bottlenecks_pass_the_shape_check(tmp_path, arch, depth):
    """Width and groups are read from the first block, so consistent wide ResNets and ResNeXts convert."""
    sd = shape_only_sd(arch)
    torch.save(sd, tmp_path / "in.pth")
    s = cv.convert(str(tmp_path / "in.pth"), str(tmp_path / "out.pth"))
    assert s["depth"] == depth and s["tensors_written"] == len(backbone_keys(sd))
    assert any("WIDTH_PER_GROUP" in note for note in s["notes"])


def test_resnet_shapes_equal_torchvision():
    """The shape table is torchvision's own, for every depth and the wide/grouped variants."""
    for arch, args in [("resnet18", (False, (2, 2, 2, 2))), ("resnet34", (False, (3, 4, 6, 3))),
                       ("resnet50", (True, (3, 4, 6, 3))), ("resnet101", (True, (3, 4, 23, 3))),
                       ("resnet152", (True, (3, 8, 36, 3))), ("wide_resnet50_2", (True, (3, 4, 6, 3), 128)),
                       ("resnext50_32x4d", (True, (3, 4, 6, 3), 128, 32))]:
        with torch.device("meta"):
            sd = getattr(torchvision.models, arch)().state_dict()
        expected = {k: tuple(v.shape) for k, v in sd.items() if not k.startswith("fc.")}
        assert cv.resnet_shapes(*args) == expected, arch


def test_bad_outputs_fail_cleanly(tmp_path, r18, capsys):
    src = tmp_path / "in.pth"
    torch.save(r18, src)
    (tmp_path / "a_file").write_bytes(b"x")
    cases = {str(tmp_path / "w.pyth"): ".pth or .pkl", str(tmp_path / "w.pt"): ".pth or .pkl",
             str(src): "is the input file", str(tmp_path / "a_file" / "w.pth"): "cannot write",
             str(tmp_path / "a_dir.pth"): "is a directory"}
    (tmp_path / "a_dir.pth").mkdir()
    for out, msg in cases.items():
        assert cv.main([str(src), out]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and msg in err, err
    assert cv.main([str(src), str(tmp_path / "w.pkl"), "--format", "torchvision"]) == 2
    assert "must end with .pth" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["a_dir.pth", "a_file", "in.pth"]
    assert os.listdir(tmp_path / "a_dir.pth") == []
    assert torch.equal(torch.load(src, weights_only=True)["conv1.weight"], r18["conv1.weight"])


def test_failed_write_leaves_no_partial_file(tmp_path, r18, monkeypatch):
    """A write that dies half-way (disk full, kill) leaves the previous output and no temp file."""
    torch.save(r18, tmp_path / "in.pth")
    (tmp_path / "out.pth").write_bytes(b"previous output")

    def dying_save(obj, f):
        f.write(b"half a checkpoint")
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")

    monkeypatch.setattr(cv.torch, "save", dying_save)
    with pytest.raises(cv.ConvertError, match="cannot write"):
        cv.convert(str(tmp_path / "in.pth"), str(tmp_path / "out.pth"))
    assert (tmp_path / "out.pth").read_bytes() == b"previous output"
    assert sorted(os.listdir(tmp_path)) == ["in.pth", "out.pth"]


def test_cli_end_to_end(tmp_path, r18):
    """The real command line: summary on stdout, dropped heads on stderr; a bad file: exit 2, one line,
    no traceback."""
    torch.save(wrap("moco_v3", r18)[0], tmp_path / "in.pth.tar")
    run = [sys.executable, "-m", "transfer.convert", str(tmp_path / "in.pth.tar"), str(tmp_path / "out.pth")]
    r = subprocess.run(run, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "MoCo v3" in r.stdout and "ResNet-18" in r.stdout
    assert f"{len(backbone_keys(r18))} tensors" in r.stdout
    assert "momentum_encoder" in r.stderr and "predictor" in r.stderr and "base_encoder.fc" in r.stderr
    assert (tmp_path / "out.pth").is_file()

    (tmp_path / "bad.pth").write_bytes(b"\x80\x04not a checkpoint")
    run[3:5] = [str(tmp_path / "bad.pth"), str(tmp_path / "bad_out.pth")]
    r = subprocess.run(run, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == "" and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert not (tmp_path / "bad_out.pth").exists()


def test_ctrl_c_inside_torch_save_is_an_interrupt_not_a_write_error(tmp_path, ctrl_c_on_third_write):
    """torch.save turns a KeyboardInterrupt raised in the file's write into RuntimeError("unexpected pos"),
    which convert would report as "cannot write"; atomic_write raises the interrupt and leaves no file."""
    out = tmp_path / "out.pth"
    with pytest.raises(KeyboardInterrupt):
        cv.atomic_write(str(out), lambda f: torch.save({"w": torch.zeros(100_000)}, ctrl_c_on_third_write(f)))
    assert list(tmp_path.iterdir()) == []
