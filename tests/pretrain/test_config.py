"""Config: strict typed overrides, clear one-line errors (exit 2), every YAML loads, paper values."""
from pathlib import Path

import pytest
import yaml

from pretrain.__main__ import main
from pretrain.config import ConfigError, base_lr, load_config

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs" / "pretrain").glob("*.yaml"))


def test_overrides_are_typed(tmp_path):
    cfg = load_config(None, ["epochs=3", "lr=0.5", "blur=false", "knn_train=null", "warmup_epochs=1"],
                      data=str(tmp_path), output_dir=str(tmp_path / "o"))
    assert (cfg.epochs, cfg.lr, cfg.blur, cfg.knn_train, cfg.warmup_epochs) == (3, 0.5, False, None, 1.0)
    assert isinstance(cfg.warmup_epochs, float)


@pytest.mark.parametrize("override, message", [
    ("epoch=3", "unknown config key 'epoch'"),
    ("epochs=three", "config key 'epochs' must be int"),
    ("epochs=2.5", "config key 'epochs' must be int"),
    ("blur=3", "config key 'blur' must be bool"),
    ("arch=resnet7", "config key 'arch' must be one of"),
    ("num_views=1", "num_views must be at least 2"),
    ("epochs", "is not of the form key=value"),
])
def test_bad_overrides(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override], data=str(tmp_path), output_dir=str(tmp_path / "o"))


def test_yaml_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(bad), data=str(tmp_path), output_dir=str(tmp_path / "o"))
    bad.write_text("epochz: 3\n")
    with pytest.raises(ConfigError, match=f"unknown config key 'epochz' in {bad}"):
        load_config(str(bad), data=str(tmp_path), output_dir=str(tmp_path / "o"))
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(str(tmp_path / "missing.yaml"), data=str(tmp_path), output_dir=str(tmp_path / "o"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(None, data=str(tmp_path / "nope"), output_dir=str(tmp_path / "o"))


@pytest.mark.parametrize("args, message", [
    (["epochs=2", "colour=red"], "error: unknown config key 'colour' in command-line overrides"),
    (["batch_size=big"], "error: config key 'batch_size' must be int"),
])
def test_cli_exits_2_with_one_line(tmp_path, capsys, args, message):
    assert main(["--data", str(tmp_path), "--output-dir", str(tmp_path / "o"), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "o").exists()  # nothing was started


def test_cli_missing_data_dir(tmp_path, capsys):
    assert main(["--data", str(tmp_path / "none"), "--output-dir", str(tmp_path / "o")]) == 2
    assert "data folder" in capsys.readouterr().err


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_config_loads(tmp_path, path):
    cfg = load_config(str(path), data=str(tmp_path), output_dir=str(tmp_path / "o"))
    assert cfg.batch_size % 1 == 0 and base_lr(cfg) > 0


def _cfg(name, tmp_path):
    return load_config(str(CONFIGS[0].parent / name), data=str(tmp_path), output_dir=str(tmp_path / "o"))


def test_paper_values(tmp_path):
    c = _cfg("fastsiam_r50_in1k_25ep.yaml", tmp_path)
    assert (c.arch, c.batch_size, c.epochs, c.num_views, base_lr(c)) == ("resnet50", 32, 25, 4, 0.125)
    assert (c.momentum, c.weight_decay, c.dim, c.pred_dim, c.image_size) == (0.9, 1e-4, 2048, 512, 224)
    assert _cfg("fastsiam_r50_in1k_10ep.yaml", tmp_path).epochs == 10
    assert base_lr(_cfg("fastsiam_r50_in1k_25ep_bs64.yaml", tmp_path)) == 0.25
    assert base_lr(_cfg("fastsiam_r50_in1k_25ep_bs128.yaml", tmp_path)) == 0.5
    s = _cfg("simsiam_r50_in1k_100ep.yaml", tmp_path)
    assert (s.batch_size, s.num_views, s.epochs, s.lr_rule, base_lr(s)) == (256, 2, 100, "simsiam", 0.05)
    for v in (2, 3, 4, 5):  # Fig. 5: equal compute, about 512 views per batch
        c = _cfg(f"fastsiam_r50_in1k_views{v}.yaml", tmp_path)
        assert c.num_views == v and abs(c.batch_size * v - 512) < v


def test_run_config_yaml_round_trips(tmp_path):
    """A run's config.yaml (with its _run section) can be fed back as --config."""
    d = {"epochs": 2, "_run": {"git": "abc", "world_size": 1}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(d))
    cfg = load_config(str(tmp_path / "config.yaml"), data=str(tmp_path), output_dir=str(tmp_path))
    assert cfg.epochs == 2
