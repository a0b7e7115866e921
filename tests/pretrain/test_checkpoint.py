"""Checkpoints: atomic writes keep the previous file on failure; weights_only loading refuses pickled code."""
import errno
import os
import pickle

import pytest
import torch

from pretrain import checkpoint
from pretrain.model import SiameseNet


def _state(model):
    return {"model": model.state_dict(), "optimizer": None, "scaler": None, "epoch": 1, "iteration": 7,
            "config": {"arch": "resnet18", "dim": 32, "pred_dim": 8, "cifar_stem": False,
                       "bn_mode": "per_view"},
            "git": ""}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return SiameseNet("resnet18", dim=32, pred_dim=8)


def test_roundtrip_and_load_model(tmp_path, model):
    path = tmp_path / "checkpoint.pth"
    checkpoint.save_checkpoint(_state(model), path)
    ckpt = checkpoint.load_checkpoint(path)
    assert ckpt["iteration"] == 7
    loaded = checkpoint.load_model(path)
    assert not loaded.training
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    sd = checkpoint.export_backbone(ckpt)
    assert "conv1.weight" in sd and "layer4.1.bn2.running_var" in sd
    assert not any(k.startswith("fc") for k in sd)
    assert not list(tmp_path.glob(".*tmp*"))


def test_disk_full_keeps_previous(tmp_path, model, monkeypatch):
    path = tmp_path / "checkpoint.pth"
    checkpoint.save_checkpoint(_state(model), path)
    before = path.read_bytes()

    def full_disk_save(obj, f):
        f.write(b"x" * 1000)  # a partial write, then the disk is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full_disk_save)
    with pytest.raises(checkpoint.CheckpointError, match="No space left on device; the previous file is"):
        checkpoint.save_checkpoint(_state(model), path)
    assert path.read_bytes() == before
    assert not list(tmp_path.glob(".*tmp*"))  # no temp file left behind


def test_interrupted_write_keeps_previous(tmp_path, model, monkeypatch):
    path = tmp_path / "checkpoint.pth"
    checkpoint.save_checkpoint(_state(model), path)
    before = path.read_bytes()

    def interrupted(obj, f):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_checkpoint(_state(model), path)
    assert path.read_bytes() == before and not list(tmp_path.glob(".*tmp*"))


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # the evil file is a plain pickle
def test_unsafe_and_corrupt_files_are_refused(tmp_path, model):
    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as f:
        pickle.dump({"model": Evil()}, f)
    with pytest.raises(checkpoint.CheckpointError, match="cannot be loaded safely"):
        checkpoint.load_checkpoint(evil)
    good = tmp_path / "good.pth"
    checkpoint.save_checkpoint(_state(model), good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(checkpoint.CheckpointError, match="truncated"):
        checkpoint.load_checkpoint(truncated)
    with pytest.raises(checkpoint.CheckpointError, match="does not exist"):
        checkpoint.load_checkpoint(tmp_path / "missing.pth")
    torch.save({"state_dict": {}}, tmp_path / "other.pth")
    with pytest.raises(checkpoint.CheckpointError, match="no 'model' entry"):
        checkpoint.load_checkpoint(tmp_path / "other.pth")


def test_keep_copy_survives_replacement(tmp_path, model):
    path = tmp_path / "checkpoint.pth"
    checkpoint.save_checkpoint(_state(model), path)
    checkpoint.keep_copy(path, tmp_path / "checkpoint_0001.pth")
    state = _state(model)
    state["iteration"] = 99
    checkpoint.save_checkpoint(state, path)
    assert checkpoint.load_checkpoint(tmp_path / "checkpoint_0001.pth")["iteration"] == 7
    assert checkpoint.load_checkpoint(path)["iteration"] == 99
