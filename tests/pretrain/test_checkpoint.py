"""Checkpoints: atomic writes keep the previous file on failure; weights_only loading refuses pickled code;
resume refuses a changed trajectory."""
import dataclasses
import errno
import os
import pickle

import pytest
import torch

from pretrain import checkpoint
from pretrain.config import CHOICES, Config, ConfigError, base_lr
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


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt(), SystemExit(130)],
                         ids=["ctrl-c", "sigint-handler"])
def test_ctrl_c_inside_torch_save_stays_an_interrupt(tmp_path, model, ctrl_c_on_third_write, interrupt):
    """Ctrl-C while torch.save's C++ writer calls the file's write: torch raises RuntimeError("unexpected
    pos") with the interrupt only as context. It must stay an interrupt (exit 130), not a write failure."""
    path = tmp_path / "checkpoint.pth"
    checkpoint.save_checkpoint(_state(model), path)
    before = path.read_bytes()

    def interrupted_save(f):
        torch.save(_state(model), ctrl_c_on_third_write(f, interrupt))

    with pytest.raises(type(interrupt)) as raised:  # tools.study's SIGINT handler raises SystemExit(130)
        checkpoint.atomic_write(path, interrupted_save)
    assert raised.value is interrupt
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


# ---- resume: a changed trajectory is refused, a changed cadence or logging is not ----

def _saved(cfg):
    """What the engine stores as ckpt["config"]: the resolved config plus its _run section."""
    return {**cfg.to_dict(), "_run": {"lr": base_lr(cfg), "iters_per_epoch": 10}}


def _other(key, value):
    """A valid value different from `value` for config key `key`."""
    if key in CHOICES:
        return next(c for c in CHOICES[key] if c != value)
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 2 if value else 0.5
    if value is None:  # lr: a number; knn_train, knn_val: a folder
        return 0.5 if key == "lr" else "/elsewhere"
    return value + "/elsewhere"


def test_every_config_key_is_classified_once():
    keys = {f.name for f in dataclasses.fields(Config)}
    assert checkpoint.TRAJECTORY_KEYS | checkpoint.FREE_KEYS == keys
    assert not checkpoint.TRAJECTORY_KEYS & checkpoint.FREE_KEYS


@pytest.mark.parametrize("key", sorted(checkpoint.TRAJECTORY_KEYS))
def test_changed_trajectory_key_is_named_with_old_and_new_value(key):
    base = Config()
    changed = dataclasses.replace(base, **{key: _other(key, getattr(base, key))})
    want = [] if key in ("lr", "lr_rule") else [f"{key} {getattr(base, key)!r} -> {getattr(changed, key)!r}"]
    if base_lr(changed) != base_lr(base):  # lr, lr_rule and batch_size: the lr they give is compared too
        want.append(f"lr {base_lr(base)!r} -> {base_lr(changed)!r}")
    assert want and checkpoint.resume_changes(_saved(base), changed) == want


@pytest.mark.parametrize("key", sorted(checkpoint.FREE_KEYS))
def test_free_keys_may_change(key):
    base = Config()
    changed = dataclasses.replace(base, **{key: _other(key, getattr(base, key))})
    assert getattr(changed, key) != getattr(base, key)
    assert checkpoint.resume_changes(_saved(base), changed, iters_per_epoch=10) == []


def test_resume_check_message_lr_rule_and_older_checkpoints():
    base = Config()  # batch 32, lr null, fastsiam rule: lr 0.125
    same_lr = dataclasses.replace(base, lr=0.125, lr_rule="simsiam")  # another spelling of the same lr
    assert checkpoint.resume_changes(_saved(base), same_lr) == []
    saved = _saved(base)
    del saved["seed"], saved["_run"]  # an older checkpoint without the key and without _run
    assert checkpoint.resume_changes(saved, dataclasses.replace(base, seed=5), iters_per_epoch=3) == []
    assert checkpoint.resume_changes(saved, dataclasses.replace(base, batch_size=64)) == [
        "batch_size 32 -> 64", "lr 0.125 -> 0.25"]  # lr recomputed from the saved lr, lr_rule, batch_size
    assert checkpoint.resume_changes(_saved(base), base, iters_per_epoch=9) == [
        "iterations per epoch (readable images // batch_size) 10 -> 9"]
    ckpt = {"config": _saved(base)}
    with pytest.raises(ConfigError) as e:
        checkpoint.check_resume(ckpt, dataclasses.replace(base, epochs=30, bn_mode="joint"), "out/checkpoint.pth")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("out/checkpoint.pth was trained with other settings: ")
    assert "bn_mode 'per_view' -> 'joint', epochs 25 -> 30." in msg and "another --output-dir" in msg
    checkpoint.check_resume(ckpt, dataclasses.replace(base, workers=2, log_every=7), "x")  # no error


def test_checkpoint_that_does_not_fit_its_network_is_one_clear_error(tmp_path, model):
    """A ResNet-18 checkpoint from before the projector followed SimSiam's widths: 512 -> dim in its first fc."""
    state = _state(model)
    old = dict(state["model"])
    old["projector.0.weight"] = torch.zeros(32, 512)  # the old layout: Linear(512, dim=32)
    path = tmp_path / "old.pth"
    checkpoint.save_checkpoint({**state, "model": old}, path)
    with pytest.raises(checkpoint.CheckpointError) as e:
        checkpoint.load_model(path)
    assert str(e.value) == (
        f"checkpoint {path} does not fit the network its config describes: projector.0.weight is 32x512 in the "
        "file, 512x512 in the network (written by an older version? ResNet-18/34 projectors are now as wide as "
        "the backbone, as SimSiam's)")
    del old["projector.0.weight"]
    checkpoint.save_checkpoint({**state, "model": old}, path)
    with pytest.raises(checkpoint.CheckpointError, match="projector.0.weight is missing in the file"):
        checkpoint.load_model(path)
