"""tools/evaluate: kNN + linear probe of any checkpoint transfer.convert reads, on tiny generated folders.

The images are 32 px solid colours (red / green / blue classes, random brightness and noise): a random-init
ResNet-18 separates them, so a correct pipeline scores near 100% and a wrong label order or wrong features
scores near chance (1/3). Checkpoints are written per test and removed after it (45 MB each).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from pretrain import precision
from pretrain.checkpoint import save_checkpoint
from pretrain.model import SiameseNet
from tools.evaluate import EvalError
from tools.evaluate import __main__ as cli
from tools.evaluate import features as features_mod
from tools.evaluate.__main__ import main, topk_accuracy
from tools.evaluate.linear import ProbeConfig, probe_scores, train_probe

REPO = Path(__file__).resolve().parents[3]
COLOURS = {"blue": (30, 40, 200), "green": (30, 180, 40), "red": (200, 30, 30)}  # sorted: labels 0, 1, 2
FAST = ["--image-size", "32", "--workers", "0", "--batch-size", "8", "--linear-epochs", "30"]


def write_tree(root: Path, per_class: int, seed: int, colours: dict = COLOURS) -> Path:
    rng = np.random.default_rng(seed)
    for name, rgb in colours.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            img = np.array(rgb) * rng.uniform(0.6, 1.2) + rng.normal(0, 20, (32, 32, 3))
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def data(module_tmp) -> tuple[Path, Path]:
    root = module_tmp("imagefolder")
    return write_tree(root / "train", 6, seed=0), write_tree(root / "val", 3, seed=1)


@pytest.fixture(scope="module")
def weights() -> dict:
    """A random-init torchvision ResNet-18 state dict (with fc): the one backbone behind every layout."""
    torch.manual_seed(0)
    return torchvision.models.resnet18().state_dict()


def layout(name: str, sd: dict) -> dict:
    """The checkpoint dict each project writes around the same backbone."""
    body = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    if name == "torchvision":
        return sd
    if name == "simsiam":  # main_simsiam.py under DDP: encoder (backbone + projector fc) and predictor
        return {"epoch": 100, "arch": "resnet18",
                "state_dict": {**{f"module.encoder.{k}": v for k, v in body.items()},
                               "module.encoder.fc.0.weight": torch.randn(8, 512),
                               "module.predictor.0.weight": torch.randn(4, 8)}}
    if name == "moco":  # MoCo v2: query encoder, (part of) the key encoder and the queue
        return {"epoch": 200, "arch": "resnet18",
                "state_dict": {**{f"module.encoder_q.{k}": v for k, v in sd.items()},
                               "module.encoder_k.conv1.weight": body["conv1.weight"].clone(),
                               "module.queue": torch.randn(128, 16), "module.queue_ptr": torch.zeros(1)}}
    raise ValueError(name)


@pytest.fixture
def checkpoint(tmp_path, weights):
    """write(name) -> path of a checkpoint in layout `name`; every file is deleted after the test."""
    written = []

    def write(name: str) -> Path:
        path = tmp_path / f"{name}.pth"
        if name == "fastsiam":  # as pretrain/ writes checkpoint.pth: the whole SiameseNet under "model"
            net = SiameseNet("resnet18", dim=64, pred_dim=16)
            net.backbone.load_state_dict({k: v for k, v in weights.items() if not k.startswith("fc.")})
            save_checkpoint({"model": net.state_dict(), "epoch": 1, "iteration": 4,
                             "config": {"arch": "resnet18", "dim": 64, "pred_dim": 16}}, path)
        else:
            torch.save(layout(name, weights), path)
        written.append(path)
        return path

    yield write
    for p in written:
        p.unlink(missing_ok=True)


def run(ckpt, train, val, out, *extra) -> tuple[int, dict | None]:
    rc = main([str(ckpt), "--train", str(train), "--val", str(val), "--out", str(out), *FAST, *extra])
    path = Path(out) / "results.json"
    return rc, json.loads(path.read_text()) if path.exists() else None


@pytest.fixture(scope="module")
def reference_features(data, weights, module_tmp):
    """Train features of the plain torchvision file: every other layout must give exactly these."""
    tmp = module_tmp("reference")
    torch.save(weights, tmp / "tv.pth")
    rc, _ = run(tmp / "tv.pth", *data, tmp / "out", "--no-linear")
    assert rc == 0
    (tmp / "tv.pth").unlink()
    return torch.load(tmp / "out" / "features" / "train.pt", weights_only=True)["features"]


# ============ every layout: runs, scores, identical features ============

@pytest.mark.parametrize("name, fmt", [("torchvision", "torchvision"), ("simsiam", "SimSiam"),
                                       ("moco", "MoCo v1/v2"), ("fastsiam", "FastSiam")])
def test_layouts(name, fmt, data, checkpoint, tmp_path, reference_features, capsys):
    ckpt = checkpoint(name)
    rc, r = run(ckpt, *data, tmp_path / "out")
    assert rc == 0
    c = r["checkpoint"]
    assert (c["format"], c["depth"], c["feature_dim"]) == (fmt, 18, 512)
    assert r["checkpoint"]["path"] == str(ckpt) and len(r["checkpoint"]["sha256"]) == 64
    assert r["data"]["classes"] == ["blue", "green", "red"]
    assert (r["data"]["train"]["images"], r["data"]["val"]["images"]) == (18, 9)
    # separable colours: near 100%; shuffled labels or wrong features would give about 1/3
    assert r["knn"]["top1"] >= 0.85 and r["linear"]["top1"] >= 0.85
    assert r["knn"]["top5"] == 1.0  # 3 classes: top-5 holds every class
    assert (r["knn"]["k"], r["knn"]["t"]) == (200, 0.1) and r["knn"]["k_used"] == 18
    assert r["linear"]["loss_per_epoch"][-1] < r["linear"]["loss_per_epoch"][0]
    assert set(r["seconds"]) >= {"inputs", "features_train", "features_val", "knn", "linear", "total"}
    assert r["hardware"]["device"] == "cpu" and r["hardware"]["cpu"] == precision.cpu_name()
    feats = torch.load(tmp_path / "out" / "features" / "train.pt", weights_only=True)["features"]
    assert torch.equal(feats, reference_features)  # same backbone behind every layout
    printed = capsys.readouterr().out
    assert "kNN (k=200, t=0.1):  top-1" in printed and "linear (30 epochs" in printed


def test_labels_matter(data, checkpoint, tmp_path):
    """Val images in the wrong class folders: every prediction is a wrong label, so the score is ~0."""
    swapped = dict(zip(COLOURS, list(COLOURS.values())[1:] + list(COLOURS.values())[:1], strict=True))
    val = write_tree(tmp_path / "swapped", 3, seed=1, colours=swapped)
    rc, r = run(checkpoint("torchvision"), data[0], val, tmp_path / "out")
    assert rc == 0 and r["knn"]["top1"] <= 0.15 and r["linear"]["top1"] <= 0.15


def test_cifar_stem_checkpoint(data, tmp_path):
    """The project's CIFAR configs train a 3x3 stride-1 stem without max-pool: built so, loaded strictly."""
    torch.manual_seed(0)
    path = tmp_path / "cifar.pth"
    torch.save({"model": SiameseNet("resnet18", dim=64, pred_dim=16, cifar_stem=True).state_dict()}, path)
    try:
        rc, r = run(path, *data, tmp_path / "out", "--no-linear", "--resize", "32")
    finally:
        path.unlink()
    assert rc == 0 and r["checkpoint"]["stem"] == "3x3" and r["knn"]["top1"] >= 0.85


# ============ the feature cache ============

def test_rerun_reuses_cache(data, checkpoint, tmp_path, monkeypatch):
    ckpt = checkpoint("torchvision")
    rc, first = run(ckpt, *data, tmp_path / "out")
    assert rc == 0 and not first["features"]["train"]["cached"] and not first["features"]["val"]["cached"]
    cache = tmp_path / "out" / "features" / "train.pt"
    mtime = cache.stat().st_mtime_ns

    def no_extraction(*args, **kwargs):
        raise AssertionError("features were extracted again")

    monkeypatch.setattr(features_mod, "extract", no_extraction)
    rc, second = run(ckpt, *data, tmp_path / "out")
    assert rc == 0 and second["features"]["train"]["cached"] and second["features"]["val"]["cached"]
    assert cache.stat().st_mtime_ns == mtime
    assert second["knn"] == first["knn"]
    # deterministic probe: same losses and scores from the same cached features and seed
    assert second["linear"]["loss_per_epoch"] == first["linear"]["loss_per_epoch"]
    assert second["linear"]["top1"] == first["linear"]["top1"]


def test_cache_key_follows_transform_and_images(data, checkpoint, tmp_path):
    ckpt = checkpoint("torchvision")
    assert run(ckpt, *data, tmp_path / "out", "--no-linear")[0] == 0
    rc, r = run(ckpt, *data, tmp_path / "out", "--no-linear", "--resize", "40")  # another transform
    assert rc == 0 and not r["features"]["train"]["cached"] and r["transform"]["resize_shorter_side"] == 40
    train = tmp_path / "train"  # one image fewer: another image list
    write_tree(train, 5, seed=0)
    rc, r = run(ckpt, train, data[1], tmp_path / "out", "--no-linear", "--resize", "40")
    assert rc == 0 and not r["features"]["train"]["cached"] and r["features"]["val"]["cached"]


# ============ switches ============

def test_no_knn_and_no_linear(data, checkpoint, tmp_path, capsys):
    ckpt = checkpoint("torchvision")
    rc, r = run(ckpt, *data, tmp_path / "a", "--no-knn")
    assert rc == 0 and r["knn"] is None and r["linear"]["top1"] >= 0.85 and "knn" not in r["seconds"]
    rc, r = run(ckpt, *data, tmp_path / "b", "--no-linear")
    assert rc == 0 and r["linear"] is None and r["knn"]["top1"] >= 0.85 and "linear" not in r["seconds"]
    capsys.readouterr()
    rc, r = run(ckpt, *data, tmp_path / "c", "--no-linear", "--no-knn")
    assert rc == 2 and r is None and capsys.readouterr().err.startswith("error: --no-knn and --no-linear")


# ============ bad inputs: one line, exit status 2, nothing computed ============

def _bad_inputs(tmp: Path, train: Path, val: Path, ckpt: Path) -> dict:
    (tmp / "empty").mkdir()
    extra = tmp / "extra"
    write_tree(extra, 1, seed=2, colours={**COLOURS, "yellow": (200, 200, 30)})
    no_images = tmp / "no_images"
    for c in COLOURS:
        (no_images / c).mkdir(parents=True)
    two = {"blue": COLOURS["blue"], "green": COLOURS["green"]}
    one_empty = write_tree(tmp / "one_empty", 1, seed=2, colours=two)
    (one_empty / "red").mkdir()
    (tmp / "garbage.pth").write_bytes(b"not a checkpoint" * 10)
    torch.save({"state_dict": {"w": torch.zeros(2)}}, tmp / "noresnet.pth")
    return {
        "missing train folder": ([ckpt, tmp / "nope", val], "no such folder"),
        "no class folders": ([ckpt, tmp / "empty", val], "has no class folders"),
        "class mismatch": ([ckpt, train, extra], "different classes (only in val: yellow)"),
        "no images": ([ckpt, train, no_images], "no images found in class folders"),
        "an empty class": ([ckpt, one_empty, val], "class folders without images: red"),
        "unreadable checkpoint": ([tmp / "garbage.pth", train, val], "not a readable PyTorch checkpoint"),
        "missing checkpoint": ([tmp / "absent.pth", train, val], "no such file"),
        "no resnet": ([tmp / "noresnet.pth", train, val], "holds no ResNet"),
    }


def test_bad_inputs_exit_2_before_compute(data, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(features_mod, "extract", lambda *a, **k: pytest.fail("extraction ran"))
    ckpt = tmp_path / "tv.pth"
    torch.save(torchvision.models.resnet18().state_dict(), ckpt)
    for case, (args, message) in _bad_inputs(tmp_path, *data, ckpt).items():
        out = tmp_path / f"out_{case.replace(' ', '_')}"
        capsys.readouterr()
        rc, r = run(*args, out)
        err = capsys.readouterr().err
        assert rc == 2, case
        assert err.startswith("error: ") and err.count("\n") == 1 and message in err, (case, err)
        assert r is None and not (out / "features").exists(), case
    ckpt.unlink()


def test_unreadable_image(data, checkpoint, tmp_path, capsys):
    """A file that is no image stops the extraction with one line naming it; no cache is written for it."""
    train = write_tree(tmp_path / "train", 2, seed=0)
    (train / "red" / "broken.png").write_bytes(b"\x89PNG not really")
    capsys.readouterr()
    rc, r = run(checkpoint("torchvision"), train, data[1], tmp_path / "out")
    err = capsys.readouterr().err
    assert rc == 2 and r is None and err.count("\n") == 1 and "broken.png" in err
    assert not (tmp_path / "out" / "features" / "train.pt").exists()


def test_command_line_exit_status(data, tmp_path):
    """The real `python -m tools.evaluate`: a bad checkpoint is one stderr line and exit status 2."""
    (tmp_path / "bad.pth").write_bytes(b"\0" * 100)
    r = subprocess.run([sys.executable, "-m", "tools.evaluate", str(tmp_path / "bad.pth"), "--train",
                        str(data[0]), "--val", str(data[1]), "--out", str(tmp_path / "out")],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: ") and "bad.pth" in r.stderr


# ============ the probe and the metric ============

def test_probe_deterministic_and_lars():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(3).repeat(20)
    x = torch.randn(60, 32, generator=g) + 3 * torch.nn.functional.one_hot(y, 32).float()  # 3 blobs
    cfg = ProbeConfig(epochs=20, batch_size=16)
    a, la = train_probe(x, y, 3, cfg, torch.device("cpu"))
    b, lb = train_probe(x, y, 3, cfg, torch.device("cpu"))
    assert la == lb and torch.equal(a.fc.weight, b.fc.weight)
    assert topk_accuracy(probe_scores(a, x), y)["top1"] == 1.0
    # LARS steps are ~lr x 0.001 of |w|: a 60-sample set needs a large lr to move at all (see linear.py)
    cfg = ProbeConfig(epochs=50, batch_size=16, optimizer="lars", base_lr=300.0)
    lars, losses = train_probe(x, y, 3, cfg, torch.device("cpu"))
    assert losses[-1] < 0.1 * losses[0] and topk_accuracy(probe_scores(lars, x), y)["top1"] == 1.0
    x[0, 0] = float("inf")  # a non-finite loss stops the probe with a one-line error
    with pytest.raises(EvalError, match="diverged in epoch 1"):
        train_probe(x, y, 3, ProbeConfig(epochs=5, batch_size=16), torch.device("cpu"))


def test_topk_accuracy():
    scores = torch.tensor([[0.1, 0.9, 0.0, 0.0, 0.0, 0.0], [0.5, 0.1, 0.2, 0.3, 0.4, 0.0]])
    assert topk_accuracy(scores, torch.tensor([1, 5])) == {"top1": 0.5, "top5": 0.5}
    assert topk_accuracy(scores, torch.tensor([0, 0])) == {"top1": 0.5, "top5": 1.0}
    assert cli.pick_device("cpu").type == "cpu"
