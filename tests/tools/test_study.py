"""tools/study: the scene generator (disjoint sources, masks = pasted regions, deterministic checksum) and the
whole study at its --tiny size end to end, then a rerun that only regenerates the report."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from tools.study import scenes

ROOT = Path(__file__).resolve().parents[2]


def fake_cifar(root: Path, train=8, test=6):
    """A tools.get_cifar10-shaped tree: CIFAR-10 class folders of 32 px PNGs, each image distinct."""
    rng = np.random.default_rng(0)
    for split, n in (("train", train), ("test", test)):
        for c, name in enumerate(scenes.CLASSES):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                px = rng.integers(0, 60, (32, 32, 3)) + np.array([c * 20, 250 - c * 20, 100])  # class tint
                Image.fromarray(px.clip(0, 255).astype(np.uint8)).save(root / split / name / f"{c * n + i:05d}.png")
    return root


SMALL = dict(train=12, val=6, canvas=64, min_size=16, max_size=32, max_objects=3)


def test_scenes_use_disjoint_sources_and_masks_are_the_pasted_images(tmp_path):
    c10 = fake_cifar(tmp_path / "c10")
    m = scenes.build(tmp_path / "scenes", c10 / "test", **SMALL)
    coco = {s: json.loads((tmp_path / "scenes" / f"{s}.json").read_text()) for s in ("train", "val")}
    sources = {s: {a["source"] for a in coco[s]["annotations"]} for s in coco}
    assert sources["train"] and sources["val"] and not sources["train"] & sources["val"]
    assert m["counts"]["train"]["images"] == 12 and m["counts"]["val"]["images"] == 6
    for split in ("train", "val"):
        images = {i["id"]: i for i in coco[split]["images"]}
        for a in coco[split]["annotations"]:
            info = images[a["image_id"]]
            scene = np.asarray(Image.open(tmp_path / "scenes" / split / info["file_name"]))
            x, y, w, h = a["bbox"]
            assert w == h and 16 <= w <= 32 and a["area"] == w * h
            # the mask, rasterised by pycocotools as detectron2's evaluator does, is exactly the pasted square
            rle = mask_utils.frPyObjects(a["segmentation"], info["height"], info["width"])
            mask = mask_utils.decode(mask_utils.merge(rle)).astype(bool)
            square = np.zeros_like(mask)
            square[y:y + h, x:x + w] = True
            assert (mask == square).all()
            # ... and holds the source image of its category, resized
            src = Image.open(c10 / "test" / a["source"]).convert("RGB").resize((w, h), Image.BICUBIC)
            assert (scene[y:y + h, x:x + w] == np.asarray(src)).all()
            assert scenes.CLASSES[a["category_id"] - 1] == a["source"].split("/")[0]


def test_scene_checksum_is_deterministic_and_depends_on_the_seed(tmp_path):
    c10 = fake_cifar(tmp_path / "c10")
    a = scenes.build(tmp_path / "a", c10 / "test", **SMALL)
    b = scenes.build(tmp_path / "b", c10 / "test", **SMALL)
    c = scenes.build(tmp_path / "c", c10 / "test", **SMALL, seed=1)
    assert a["sha256"] == b["sha256"] != c["sha256"]
    # a rerun with the same settings keeps the set; other settings in the same folder are refused
    assert scenes.build(tmp_path / "a", c10 / "test", **SMALL) == a
    with pytest.raises(scenes.SceneError, match="other settings"):
        scenes.build(tmp_path / "a", c10 / "test", **{**SMALL, "train": 5})
    assert scenes.main([str(tmp_path / "d"), "--cifar-test", str(tmp_path / "nope")]) == 2
    assert not (tmp_path / "d").exists()


@pytest.mark.slow  # 3 pretraining runs, 6 conversions, 6 detectron2 runs, kNN: a minute or two on 2 cores
def test_tiny_study_end_to_end_then_rerun_only_reports(tmp_path):
    c10 = fake_cifar(tmp_path / "c10")
    out = tmp_path / "study"
    cmd = [sys.executable, "-m", "tools.study", "--tiny", "--out", str(out), "--data", str(c10)]
    first = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    res = json.loads((out / "report" / "study_results.json").read_text())
    rows = res["rows"]
    assert set(rows) == {"random", "supervised", "simsiam_256", "simsiam_512", "fastsiam_256", "fastsiam_512"}
    for name, r in rows.items():
        assert r["seeds"]["0"]["bbox"]["AP"] is not None and r["seeds"]["0"]["segm"]["AP"] is not None, name
        assert 0 <= r["knn_top1"] <= 1, name
    assert rows["supervised"]["views"] == rows["simsiam_512"]["views"] == rows["fastsiam_512"]["views"] == 512
    # the supervised backbone went through the converter as a FastSiam-layout checkpoint, classifier dropped
    report = json.loads((out / "det" / "supervised" / "seed0" / "weights_report.json").read_text())
    assert report["loaded"] > 0 and not any("bottom_up" in k for k in report["not_initialised"])
    md = (out / "report" / "study.md").read_text()
    assert "`tiny` preset" in md and "python -m tools.study --tiny" in md and res["scenes"]["sha256"] in md
    assert (out / "report" / "study_fig4.png").stat().st_size > 1000
    assert res["timings"]["stages"]["pretrain"]["jobs"] == 3

    before = (out / "report" / "study_results.json").stat().st_mtime_ns
    second = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "start:" not in second.stdout and second.stdout.count("done earlier") >= 3 + 6 * 3 + 1
    assert (out / "report" / "study_results.json").stat().st_mtime_ns > before
    again = json.loads((out / "report" / "study_results.json").read_text())
    assert again["rows"] == rows and len(again["commands"]) == 2
    first_run, rerun = again["commands"]
    assert first_run["done_before"] == 0 and rerun["done_before"] == rerun["stages"] == first_run["stages"] > 20
    md = (out / "report" / "study.md").read_text()
    assert f"found all {rerun['stages']} stages done, only regenerated the report" in md
    assert f"ran {first_run['stages']} of {first_run['stages']} stages in" in md


def test_user_mistakes_exit_2_in_one_line(tmp_path, capsys):
    from tools.study.__main__ import main

    out = tmp_path / "study"
    assert main(["--tiny", "--out", str(out), "--data", str(tmp_path / "no_cifar")]) == 2
    assert "tools.get_cifar10" in capsys.readouterr().err
    # the same folder with other settings (another preset, another detection schedule) is refused
    assert main(["--quick", "--out", str(out), "--data", str(tmp_path / "no_cifar")]) == 2
    assert main(["--tiny", "--det-iters", "7", "--out", str(out), "--data", str(tmp_path / "no_cifar")]) == 2
    assert capsys.readouterr().err.count("other settings") == 2
    assert main(["--tiny", "--parallel", "0", "--out", str(tmp_path / "x")]) == 2
