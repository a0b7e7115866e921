"""transfer.convert on other libraries' checkpoints (tests/transfer/library_checkpoints.py), without
detectron2: exact values, the detected source printed, heads dropped by name, unknown keys still refused, and
the loader's inert stand-ins for the metadata objects those checkpoints pickle."""
import argparse
import functools
import os
import sys
import types

import pytest
import torch
from omegaconf import OmegaConf

from tests.transfer.library_checkpoints import CASES
from tests.transfer.test_convert import moco_rename, random_resnet_sd
from transfer import convert as cv
from transfer import safe_load


@pytest.fixture(scope="module")
def r18():
    return random_resnet_sd("resnet18", seed=7)


@pytest.mark.parametrize("name", list(CASES))
def test_each_library_converts_exactly_and_still_refuses_unknown_keys(tmp_path, r18, name, capsys):
    case = CASES[name](r18)
    src, out = tmp_path / "in.ckpt", tmp_path / "out.pth"
    case.save(src)
    assert cv.main([str(src), str(out)]) == 0, capsys.readouterr().err
    stdout, stderr = capsys.readouterr()
    expected = {moco_rename(k): v for k, v in r18.items() if not k.startswith("fc.")}
    assert f"input:   {case.label} (" in stdout and f"written: {len(expected)} tensors" in stdout

    model = torch.load(out, weights_only=True)["model"]
    assert set(model) == set(expected)
    assert all(torch.equal(model[k], v) for k, v in expected.items())
    parts = cv.read_backbone(str(src))
    sd, _ = cv.find_state_dict(cv.load_checkpoint(str(src)), str(src))
    assert parts["label"] == case.label and parts["depth"] == 18
    assert sum(parts["dropped"].values()) == len(sd) - len(expected)  # every other tensor is a named head
    assert all(head in stderr for head in parts["dropped"])  # ... and listed

    case.state[case.unknown_key] = torch.zeros(1)  # strictness stays: an unknown key is an error
    case.save(src)
    out.unlink()
    assert cv.main([str(src), str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and (case.shown_unknown or case.unknown_key) in err and case.label in err
    assert not out.exists()
    src.unlink()  # ~50 MB per case: do not keep it for pytest's retention of tmp dirs


def test_dino_converts_the_teacher(tmp_path, r18):
    CASES["dino"](r18).save(tmp_path / "checkpoint.pth")  # its student's conv1 is zeros
    parts = cv.read_backbone(str(tmp_path / "checkpoint.pth"))
    assert parts["state_dict_at"] == "teacher" and torch.equal(parts["backbone"]["conv1.weight"],
                                                               r18["conv1.weight"])
    assert parts["stand_ins"] == ["argparse.Namespace"]


def test_lightly_teacher_and_student_copies_are_dropped_by_name(tmp_path, r18):
    CASES["lightly_benchmark"](r18).save(tmp_path / "byol.ckpt")
    parts = cv.read_backbone(str(tmp_path / "byol.ckpt"))
    assert parts["container"] == "Lightning 2.4.0 checkpoint" and parts["prefix"] == "backbone."
    assert set(parts["dropped"]) == {
        "projection_head.* (projection head)", "prediction_head.* (prediction head)",
        "online_classifier.* (online linear classifier)", "teacher_backbone.* (teacher backbone)",
        "teacher_projection_head.* (teacher projection head)"}


def test_source_forces_a_layout(tmp_path, r18, capsys):
    bare = {"backbone." + k: v for k, v in r18.items() if not k.startswith("fc.")}
    torch.save(bare, tmp_path / "in.pth")
    run = [str(tmp_path / "in.pth"), str(tmp_path / "out.pth")]
    assert cv.main(run) == 0 and "input:   FastSiam checkpoint (top level" in capsys.readouterr().out
    assert cv.main(run + ["--source", "mmselfsup"]) == 0
    assert "input:   mmselfsup/mmpretrain (top level" in capsys.readouterr().out
    (tmp_path / "out.pth").unlink()
    assert cv.main(run + ["--source", "vissl"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no ResNet in the layout of --source vissl" in err
    assert not (tmp_path / "out.pth").exists()
    with pytest.raises(cv.ConvertError, match="unknown --source 'nosuch'"):
        cv.convert(run[0], run[1], source="nosuch")


# ---------------------------------------------------------------- the loader's stand-ins
def _fake_modules(monkeypatch, **classes):
    """Make `module.path.Name=cls` importable for pickle only (the libraries are not installed)."""
    for dotted, cls in classes.items():
        module_name, _, attr = dotted.replace("__", ".").rpartition(".")
        parts = module_name.split(".")
        for i in range(1, len(parts) + 1):
            monkeypatch.setitem(sys.modules, ".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
        setattr(sys.modules[module_name], attr, cls)
        cls.__module__, cls.__qualname__ = module_name, attr


def test_lightning_hyper_parameters_load_as_records(tmp_path, monkeypatch):
    """Lightning saves a Hydra config as the omegaconf container itself plus its class (hparams_type); older
    versions pickled their AttributeDict. Neither library is imported or run: records and a plain dict."""
    class AttributeDict(dict):
        pass

    cfg = OmegaConf.create({"method": "simsiam", "optimizer": {"lr": 0.05, "kwargs": {}}, "crops": [2, 0]})
    ckpt = {"pytorch-lightning_version": "1.9.0", "state_dict": {"w": torch.ones(2)}, "hyper_parameters": cfg,
            "hparams_type": type(cfg), "old_hparams": AttributeDict(lr=0.1)}
    with monkeypatch.context() as m:
        _fake_modules(m, lightning__fabric__utilities__data__AttributeDict=AttributeDict)
        torch.save(ckpt, tmp_path / "lightning.ckpt")
    obj, names = safe_load.load(str(tmp_path / "lightning.ckpt"))
    assert torch.equal(obj["state_dict"]["w"], torch.ones(2))
    assert isinstance(obj["hyper_parameters"], safe_load.Record) and issubclass(obj["hparams_type"],
                                                                                safe_load.Record)
    assert type(obj["old_hparams"]) is dict and obj["old_hparams"] == {"lr": 0.1}
    assert {"omegaconf.dictconfig.DictConfig", "lightning.fabric.utilities.data.AttributeDict"} <= set(names)
    assert "lightning.fabric.utilities.data" not in sys.modules


def test_legacy_format_learns_the_stand_ins_one_by_one(tmp_path):
    """Files of torch < 1.6 (MoCo's releases) are not zip archives: the names come one refusal at a time."""
    ckpt = {"state_dict": {"w": torch.ones(2)}, "args": argparse.Namespace(lr=0.1),
            "cfg": OmegaConf.create({})}
    torch.save(ckpt, tmp_path / "old.pth.tar", _use_new_zipfile_serialization=False)
    obj, names = safe_load.load(str(tmp_path / "old.pth.tar"))
    assert obj["args"].state == {"lr": 0.1} and "argparse.Namespace" in names and len(names) > 2


def _static_lr(get_lr, param_group_indexes, lrs_to_replace):  # solo-learn's solo/methods/base.py hook
    return get_lr()


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickled_code_and_objects_are_refused_with_the_reason_and_never_run(tmp_path, r18, capsys):
    marker = tmp_path / "ran"
    torch.save({"state_dict": r18, "hook": _Exploit(marker)}, tmp_path / "evil.pth")
    # solo-learn with a static-lr predictor: configure_optimizers sets scheduler.get_lr to a partial of a
    # bound method, so Lightning's lr_schedulers entry pickles the scheduler and optimizer objects
    net = torch.nn.Linear(2, 2)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(torch.optim.SGD(net.parameters(), lr=0.1), 10)
    scheduler.get_lr = functools.partial(_static_lr, get_lr=scheduler.get_lr, param_group_indexes=[1],
                                         lrs_to_replace=[0.1])
    torch.save({"pytorch-lightning_version": "2.0.0", "state_dict": {"classifier.weight": net.weight},
                "lr_schedulers": [scheduler.state_dict()]}, tmp_path / "solo.ckpt")
    for name, shown in [("evil.pth", "posix.system"), ("solo.ckpt", "functools.partial")]:
        assert cv.main([str(tmp_path / name), str(tmp_path / "out.pth")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and shown in err and "re-save only its state dict" in err, err
    assert not marker.exists() and not (tmp_path / "out.pth").exists()
