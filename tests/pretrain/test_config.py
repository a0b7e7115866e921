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


# The SimSiam recipe the paper follows ("we follow the training setup in SimSiam", Sec. 4.1): SimSiam's
# builder (2048-d projector, 512-d predictor bottleneck), MoCo v2 augmentation at 224 px, SGD momentum 0.9,
# weight decay 1e-4, cosine schedule without warmup, --fix-pred-lr (facebookresearch/simsiam main_simsiam.py
# and its README).
SIMSIAM_R50 = dict(arch="resnet50", cifar_stem=False, dim=2048, pred_dim=512, bn_mode="per_view",
                   image_size=224, crop_scale_min=0.2, blur=True, momentum=0.9, weight_decay=1e-4,
                   warmup_epochs=0.0, fix_pred_lr=True)
# The CIFAR-10 proxies (docs/proxy.md): ResNet-18 with the CIFAR stem, 32 px, no blur, lightly's weight decay
CIFAR = dict(arch="resnet18", cifar_stem=True, image_size=32, crop_scale_min=0.2, blur=False,
             weight_decay=5e-4)
# Paper Sec. 4.1: batch 32, lr 0.125 "scaled linearly" with the batch; 4 views per image (K = 3 target views)
FASTSIAM = dict(SIMSIAM_R50, num_views=4, lr_rule="fastsiam")
# Fig. 5 (Sec. 4.3): "equivalent to 50 epochs in case of three views" (read as K = 3: 200 view-epochs) and
# "the same number of views per batch (512)"
VIEWS = {v: dict(FASTSIAM, num_views=v, batch_size=round(512 / v), epochs=round(200 / v),
                 base_lr=0.125 * round(512 / v) / 32) for v in (2, 3, 4, 5)}
EXPECTED = {
    # Tables 1-4 "FastSiam 25 / 32 / 4" and "10 / 32 / 4"
    "fastsiam_r50_in1k_25ep.yaml": dict(FASTSIAM, batch_size=32, epochs=25, base_lr=0.125),
    "fastsiam_r50_in1k_10ep.yaml": dict(FASTSIAM, batch_size=32, epochs=10, base_lr=0.125),
    # Table 5: batch 64 and 128, lr scaled linearly
    "fastsiam_r50_in1k_25ep_bs64.yaml": dict(FASTSIAM, batch_size=64, epochs=25, base_lr=0.25),
    "fastsiam_r50_in1k_25ep_bs128.yaml": dict(FASTSIAM, batch_size=128, epochs=25, base_lr=0.5),
    # Tables 1-4 "SimSiam 100 / 256 / 2": SimSiam's lr 0.05 x batch / 256, DDP with SyncBN
    "simsiam_r50_in1k_100ep.yaml": dict(SIMSIAM_R50, num_views=2, batch_size=256, epochs=100,
                                        lr_rule="simsiam", base_lr=0.05, sync_bn=True),
    **{f"fastsiam_r50_in1k_views{v}.yaml": VIEWS[v] for v in VIEWS},
    "cifar10_fastsiam_bs32.yaml": dict(CIFAR, num_views=4, batch_size=32, epochs=200, base_lr=0.125),
    "cifar10_simsiam_bs32.yaml": dict(CIFAR, num_views=2, batch_size=32, epochs=200, base_lr=0.125),
    "cifar10_simsiam_bs256.yaml": dict(CIFAR, num_views=2, batch_size=256, epochs=200, base_lr=0.05),
    # lightly@e8d317fc benchmarks: batch 128, 200 epochs, fixed lr 0.06, predictor lr decayed too
    "cifar10_fastsiam_bs128_lightly.yaml": dict(CIFAR, num_views=4, batch_size=128, epochs=200, base_lr=0.06,
                                                fix_pred_lr=False),
    "cifar10_simsiam_bs128_lightly.yaml": dict(CIFAR, num_views=2, batch_size=128, epochs=200, base_lr=0.06,
                                               fix_pred_lr=False),
    # not a paper run: a CPU smoke test with the FastSiam structure at toy size
    "smoke_cpu.yaml": dict(arch="resnet18", num_views=4, device="cpu", epochs=1, base_lr=0.125 * 8 / 32),
}


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_config_has_its_source_values(tmp_path, path):
    assert path.name in EXPECTED, f"{path.name}: add its paper (or reference) values to EXPECTED"
    cfg = load_config(str(path), data=str(tmp_path), output_dir=str(tmp_path / "o"))
    got = {key: base_lr(cfg) if key == "base_lr" else getattr(cfg, key) for key in EXPECTED[path.name]}
    assert got == EXPECTED[path.name]


def _cfg(name, tmp_path):
    return load_config(str(CONFIGS[0].parent / name), data=str(tmp_path), output_dir=str(tmp_path / "o"))


def test_views_ablation_has_equal_compute_and_views_per_batch(tmp_path):
    """Fig. 5: the same views per batch (512, up to rounding) and the same views in all (200 view-epochs)."""
    for v in (2, 3, 4, 5):
        c = _cfg(f"fastsiam_r50_in1k_views{v}.yaml", tmp_path)
        assert abs(c.batch_size * v - 512) < v and abs(c.epochs * v - 200) / 200 <= 0.005


def test_proxy_pairs_differ_only_in_the_number_of_views(tmp_path):
    """A FastSiam/SimSiam comparison isolates the target only if nothing else differs."""
    for fast, sim in (("cifar10_fastsiam_bs32", "cifar10_simsiam_bs32"),
                      ("cifar10_fastsiam_bs128_lightly", "cifar10_simsiam_bs128_lightly")):
        a, b = _cfg(f"{fast}.yaml", tmp_path).to_dict(), _cfg(f"{sim}.yaml", tmp_path).to_dict()
        assert {k for k in a if a[k] != b[k]} == {"num_views"}


def test_run_config_yaml_round_trips(tmp_path):
    """A run's config.yaml (with its _run section) can be fed back as --config."""
    d = {"epochs": 2, "_run": {"git": "abc", "world_size": 1}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(d))
    cfg = load_config(str(tmp_path / "config.yaml"), data=str(tmp_path), output_dir=str(tmp_path))
    assert cfg.epochs == 2
