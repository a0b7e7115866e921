"""The figure scripts (Figs. 2, 4, 5, 6, 7) on tiny inputs, on the CPU."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pretrain.checkpoint import load_model
from pretrain.model import SiameseNet
from tools.figures import fig2_target_stability as fig2
from tools.figures import fig4_cost as fig4
from tools.figures import fig5_views as fig5
from tools.figures import fig6_activations as fig6
from tools.figures import fig7_views as fig7
from tools.figures.plotting import UsageError, plt, run_main

REPO = Path(__file__).resolve().parents[3]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 5000  # a real plot, not an empty canvas
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []  # no temp file left


# ---------------------------------------------------------------------------------------------- Fig. 2
def test_fig2_simulation_numbers():
    n, dim = 8, 2048
    sim = fig2.simulate(n=n, dim=dim, trials=600, seed=1)
    k = np.arange(1, n + 1)
    # first dimension of the K-view mean ~ N(0, 1/K)
    std = sim["first_dim"].std(axis=0)
    np.testing.assert_allclose(std, 1 / np.sqrt(k), rtol=0.12)
    assert abs(sim["first_dim"].mean()) < 0.1
    # default: distance to the all-views target (the distribution's mean), sqrt(d / K): it never reaches 0,
    # not even at K = n, where the mean of the n sampled views would be the target itself
    d = sim["distance"]
    assert np.all(np.diff(d) < 0)
    np.testing.assert_allclose(d, np.sqrt(dim / k), rtol=0.02)
    assert d[-1] > 0.9 * np.sqrt(dim / n)
    # K = 3 (FastSiam) is much closer than K = 1 (SimSiam)
    assert d[2] < 0.6 * d[0]
    # same seed, same numbers
    np.testing.assert_array_equal(fig2.simulate(n=n, dim=64, trials=10, seed=3)["distance"],
                                  fig2.simulate(n=n, dim=64, trials=10, seed=3)["distance"])


def test_fig2_other_references():
    n, dim, m = 8, 2048, 4
    k = np.arange(1, n + 1)
    held = fig2.simulate(n=n, dim=dim, trials=400, seed=2, reference="held-out",
                         reference_views=m)["distance"]
    np.testing.assert_allclose(held, np.sqrt(dim * (1 / k + 1 / m)), rtol=0.02)  # a small M adds its noise
    sample = fig2.simulate(n=n, dim=dim, trials=400, seed=2, reference="sample")["distance"]
    assert sample[-1] == pytest.approx(0.0, abs=1e-9)  # the old reference: the mean of the same n views
    np.testing.assert_allclose(sample[:-1], np.sqrt(dim * (1 / k[:-1] - 1 / n)), rtol=0.02)
    with pytest.raises(ValueError, match="reference"):
        fig2.simulate(n=4, dim=4, trials=2, reference="mean")


def test_fig2_default_plots_the_distance_to_the_all_views_target(monkeypatch):
    figs = []
    monkeypatch.setattr(fig2, "save_figure", lambda fig, path: figs.append(fig))
    assert fig2.main(["--views", "6", "--dim", "512", "--trials", "50", "--show-k", "1", "3"]) == 0
    right = figs[0].axes[1]
    simulated = right.get_lines()[0].get_ydata()
    assert "all-views" in right.get_title()
    assert simulated[-1] == pytest.approx(np.sqrt(512 / 6), rel=0.05)  # K = n: still sqrt(d / n) away
    plt.close(figs[0])


def test_fig2_png_and_script(tmp_path):
    out = tmp_path / "fig2.png"
    p = subprocess.run([sys.executable, "-m", "tools.figures.fig2_target_stability", "--views", "6", "--trials", "200",
                        "--show-k", "1", "3", "--output", str(out)], cwd=REPO, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert_png(out)
    bad = subprocess.run([sys.executable, "-m", "tools.figures.fig2_target_stability", "--views", "4",
                          "--show-k", "9"], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "Traceback" not in bad.stderr


# ---------------------------------------------------------------------------------------------- Figs. 4, 5
@pytest.fixture
def ablation(tmp_path):
    """Runs tree + pretraining dirs: SimSiam-like 2-view and FastSiam-like 3/4/6-view runs, 2 seeds each."""
    runs, pre = tmp_path / "runs", tmp_path / "pretrain"
    spec = {"ss50": (50, 2, 37.0), "ss100": (100, 2, 38.3), "fs10": (10, 4, 38.8), "fs25": (25, 4, 39.6),
            "v3": (25, 3, 39.2), "v6": (25, 6, 39.8)}
    # per protocol: (task, offset from the FPN bbox AP above), so each panel has its own numbers
    protocols = {"coco_R_50_FPN_1x": ("bbox", 0.0), "coco_R_50_C4_1x": ("bbox", -1.2),
                 "cityscapes_R_50_FPN": ("segm", -5.6)}
    for name, (epochs, views, ap) in spec.items():
        (pre / name).mkdir(parents=True)
        (pre / name / "config.yaml").write_text(f"arch: resnet50\nepochs: {epochs}\nnum_views: {views}\n"
                                                f"batch_size: 32\n")
        for protocol, (task, offset) in protocols.items():
            for k in range(2):
                d = runs / name / protocol / f"seed{k}"
                d.mkdir(parents=True)
                (d / "results.json").write_text(json.dumps({task: {"AP": ap + offset + 0.2 * k}}))
                paper_data(d, protocol)
    d = runs / "imagenet" / "coco_R_50_FPN_1x" / "seed0"
    d.mkdir(parents=True)
    (d / "results.json").write_text(json.dumps({"bbox": {"AP": 39.7}}))
    paper_data(d, "coco_R_50_FPN_1x")
    return runs, {name: pre / name for name in spec}


def paper_data(d: Path, protocol: str) -> None:
    """The provenance.json train_net writes for a run on the builtin splits of the protocol."""
    train, test = (("cityscapes_fine_instance_seg_train", "cityscapes_fine_instance_seg_val")
                   if protocol.startswith("cityscapes") else ("coco_2017_train", "coco_2017_val"))
    (d / "provenance.json").write_text(json.dumps(
        {"train": [{"name": train, "builtin": True}], "test": [{"name": test, "builtin": True}],
         "mask_format": "polygon"}))


def drawn(module, monkeypatch, argv) -> list[tuple[str, str, list[float]]]:
    """Run a figure script, keep its figure instead of writing it: (title, ylabel, plotted y) per panel."""
    figs = []
    monkeypatch.setattr(module, "save_figure", lambda fig, path: figs.append(fig))
    assert module.main(argv) == 0
    (fig,) = figs
    panels = [(ax.get_title(), ax.get_ylabel(), sorted(y for ln in ax.get_lines() for y in ln.get_ydata()))
              for ax in fig.axes]
    plt.close(fig)
    return panels


def test_fig4_and_fig5_default_to_the_papers_panels(ablation, monkeypatch):
    """Paper Figs. 4 and 5: COCO with the R50-C4 detector (AP^bb) and Cityscapes (AP^mk), two panels."""
    runs, pre = ablation
    names = [f"{n}={pre[n]}" for n in ("ss100", "fs25")]
    for module in (fig4, fig5):
        panels = drawn(module, monkeypatch, [str(runs), "--pretrain", *names, "--output", "unused.png"])
        assert [(title, ylabel) for title, ylabel, _ in panels] == [("coco_R_50_C4_1x", "bbox AP"),
                                                                   ("cityscapes_R_50_FPN", "segm AP")]
        c4, city = panels[0][2], panels[1][2]
        assert pytest.approx(38.3 - 1.2 + 0.1) in c4 and pytest.approx(39.6 - 5.6 + 0.1) in city  # seed means
    # the FPN detector stays an option
    panels = drawn(fig4, monkeypatch, [str(runs), "--pretrain", *names, "--protocol", "coco_R_50_FPN_1x",
                                       "--no-paper", "--output", "unused.png"])
    assert [(t, y) for t, y, _ in panels] == [("coco_R_50_FPN_1x", "bbox AP")]
    assert pytest.approx(39.7) in panels[0][2]  # the imagenet line of the FPN runs


def test_figures_leave_out_runs_on_other_data(ablation, monkeypatch, capsys):
    """A run on one's own data (provenance.json says so) is no point beside the paper's, as in the tables."""
    runs, pre = ablation
    d = runs / "fs25" / "coco_R_50_FPN_1x" / "seed9"
    d.mkdir(parents=True)
    (d / "results.json").write_text(json.dumps({"bbox": {"AP": 77.7}}))
    (d / "provenance.json").write_text(json.dumps(
        {"train": [{"name": "mine", "builtin": False}], "test": [{"name": "mine_val", "builtin": False}],
         "mask_format": "polygon"}))
    panels = drawn(fig4, monkeypatch, [str(runs), "--pretrain", f"fs25={pre['fs25']}", "--protocol",
                                       "coco_R_50_FPN_1x", "--no-paper", "--output", "unused.png"])
    assert pytest.approx(39.6 + 0.1) in panels[0][2]  # the two seeds on COCO, not the own-data run
    assert "leaving out 1 runs on other data" in capsys.readouterr().err
    (d / "results.json").unlink()


def test_fig4_cost_units_and_paper_points():
    assert fig4.cost(25, 4) == 25 and fig4.cost(100, 2) == 50 and fig4.cost(10, 4) == 10
    pts = {label: (c, v) for label, c, v in fig4.paper_points("coco_R_50_FPN_1x", "bbox", "AP")}
    assert pts == {"SimSiam 100 ep (paper)": (50, 38.4), "FastSiam 10 ep (paper)": (10, 38.9),
                   "FastSiam 25 ep (paper)": (25, 39.7)}
    assert fig4.paper_points("keypoint_R_50_FPN_1x", "keypoints", "AP") == []  # the paper used 2x


def test_fig4_png(ablation, tmp_path):
    runs, pre = ablation
    out = tmp_path / "fig4.png"
    assert fig4.main([str(runs), "--pretrain", *(f"{n}={pre[n]}" for n in ("ss50", "ss100", "fs10", "fs25")),
                      f"fs25_at_10={pre['fs25']}@10", "--output", str(out)]) == 0
    assert_png(out)


def test_saved_figures_get_the_umask_mode_and_leave_no_temp_file(tmp_path):
    """A figure for a lab's shared folder is as readable as the tables beside it (a mkstemp temp file would
    make it 0600)."""
    import os
    import stat

    from tools.figures.plotting import save_figure

    old = os.umask(0o022)
    try:
        fig, ax = plt.subplots()
        ax.plot([0, 1], [0, 1])
        save_figure(fig, tmp_path / "fig.png")
    finally:
        os.umask(old)
    assert_png(tmp_path / "fig.png")
    assert stat.S_IMODE((tmp_path / "fig.png").stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["fig.png"]


def test_fig5_png_and_errors(ablation, tmp_path):
    runs, pre = ablation
    out = tmp_path / "fig5.png"
    assert fig5.main([str(runs), "--pretrain", *(f"{n}={pre[n]}" for n in ("ss50", "v3", "fs25", "v6")),
                      "--output", str(out)]) == 0
    assert_png(out)
    with pytest.raises(UsageError, match="no pretraining config.yaml"):
        fig5.main([str(runs), "--pretrain", f"x={tmp_path}", "--output", str(out)])
    with pytest.raises(UsageError, match="none of the --pretrain names has results"):
        fig5.main([str(runs), "--pretrain", f"v3={pre['v3']}", "--protocol", "keypoint_R_50_FPN_2x"])
    with pytest.raises(SystemExit) as e:  # as the command line sees it: status 2
        run_main(lambda: fig5.main([str(tmp_path / "nope"), "--pretrain", f"v3={pre['v3']}"]))
    assert e.value.code == 2


# ---------------------------------------------------------------------------------------------- Figs. 6, 7
@pytest.fixture(scope="module")
def model_files(module_tmp):
    """A tiny checkpoint.pth as pretrain/ writes it, the backbone as a torchvision state dict, two images."""
    d = module_tmp("fig67")
    torch.manual_seed(0)
    m = SiameseNet(arch="resnet18", dim=64, pred_dim=16)
    cfg = {"arch": "resnet18", "dim": 64, "pred_dim": 16, "cifar_stem": False, "image_size": 48,
           "num_views": 4, "crop_scale_min": 0.2, "blur": False, "bn_mode": "per_view"}  # blur: slow on CPU
    torch.save({"model": m.state_dict(), "optimizer": None, "scaler": None, "epoch": 1, "iteration": 5,
                "config": cfg, "git": ""}, d / "checkpoint.pth")
    tv = {**m.backbone.state_dict(), "fc.weight": torch.zeros(10, 512), "fc.bias": torch.zeros(10)}
    torch.save(tv, d / "resnet18_torchvision.pth")
    rng = np.random.default_rng(0)
    images = []
    for i in range(2):
        a = (rng.random((60, 80, 3)) * 255).astype(np.uint8)
        a[10:40, 20:50] = (255, 40 * i, 0)
        images.append(d / f"img{i}.png")
        Image.fromarray(a).save(images[-1])
    return d / "checkpoint.pth", d / "resnet18_torchvision.pth", images


def test_fig6_backbones_maps_and_png(model_files, tmp_path):
    ckpt, tv, images = model_files
    net_a, size_a = fig6.load_backbone(ckpt)
    net_b, size_b = fig6.load_backbone(tv)
    assert (size_a, size_b) == (48, None)
    assert isinstance(net_b.layer1[0], type(net_a.layer1[0])) and len(net_b.layer3) == 2  # inferred resnet18
    x = torch.randn(2, 3, 48, 48)
    a, b = fig6.activation_map(net_a, x), fig6.activation_map(net_b, x)
    assert a.shape == (2, 48, 48) and a.min() == 0 and a.max() == pytest.approx(1)
    torch.testing.assert_close(a, b)  # same weights through both loading paths
    out = tmp_path / "fig6.png"
    assert fig6.main(["--checkpoints", str(ckpt), str(tv), "--labels", "ckpt", "torchvision",
                      "--images", *map(str, images), "--output", str(out)]) == 0
    assert_png(out)


def test_fig6_bad_checkpoint_is_a_clean_error(tmp_path, capsys):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit) as e:
        run_main(lambda: fig6.main(["--checkpoints", str(bad), "--images", "x.png"]))
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith(f"error: {bad}: ") and len(err.strip().splitlines()) == 1


def test_fig7_views_and_png(model_files, tmp_path):
    ckpt, _, images = model_files
    model = load_model(ckpt)
    img = fig7.load_image(images[0], 96, crop=False)
    assert img.shape == (3, 60, 80)  # smaller than 96: never enlarged
    views, dist = fig7.rank_views(model, img, 200, 32, 0.2, False, torch.Generator().manual_seed(0))
    assert views.shape == (200, 3, 32, 32) and dist.shape == (200,)
    assert torch.isfinite(dist).all() and (dist >= 0).all() and dist.std() > 0
    assert (views[0] - views[1]).abs().max() > 0.1  # distinct augmented views
    out = tmp_path / "fig7.png"
    assert fig7.main(["--checkpoint", str(ckpt), "--images", *map(str, images), "--num-views", "24",
                      "--distance", "cosine", "--output", str(out)]) == 0
    assert_png(out)


def test_fig7_distance_to_the_mean():
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [5.0, 0.0], [0.9, 0.3]])
    mean = z.mean(0)
    euclid, cos = fig7.distance_to_mean(z), fig7.distance_to_mean(z, "cosine")
    torch.testing.assert_close(euclid, (z - mean).norm(dim=1))
    torch.testing.assert_close(cos, 1 - z @ mean / (z.norm(dim=1) * mean.norm()))
    # a long vector along the mean is far in Euclidean distance, close in angle: the two rankings differ
    assert euclid.argmax() == 3 and cos.argmax() == 4 and cos[3] < cos[0] + 1e-6
    with pytest.raises(ValueError, match="distance"):
        fig7.distance_to_mean(z, "l1")


def test_fig7_default_is_the_papers_untrained_encoder(model_files, tmp_path, monkeypatch, capsys):
    """Paper Fig. 7: 200 views through an untrained encoder, ranked by distance to the mean."""
    _, _, images = model_files
    args = fig7.parser().parse_args(["--images", "a.png"])
    assert (args.checkpoint, args.arch, args.num_views, args.distance) == (None, "resnet50", 200, "euclidean")
    a, b = fig7.untrained_model("resnet18", 64, 0), fig7.untrained_model("resnet18", 64, 0)
    same = zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    assert all(torch.equal(x, y) for x, y in same)  # seeded
    assert not a.training
    # no --checkpoint: an untrained encoder, Euclidean distance; the figure's numbers are those of rank_views
    figs = []
    monkeypatch.setattr(fig7, "save_figure", lambda fig, path: figs.append(fig))
    assert fig7.main(["--images", str(images[0]), "--arch", "resnet18", "--dim", "64", "--size", "32",
                      "--num-views", "24", "--output", str(tmp_path / "unused.png")]) == 0
    title = figs[0].texts[0].get_text()  # the suptitle
    plt.close(figs[0])
    assert "untrained resnet18 (seed 0)" in title and "euclidean" in title
    img = fig7.load_image(images[0], 64, crop=False)
    _, dist = fig7.rank_views(fig7.untrained_model("resnet18", 64, 0), img, 24, 32, 0.2, True,
                              torch.Generator().manual_seed(0))
    assert dist.std() > 0  # an untrained encoder still tells the views apart
    assert f"min {dist.min():.4g}, max {dist.max():.4g}" in capsys.readouterr().err
