"""python -m tools.benchmark: the table math on fake runs, argument errors, resume and failures with a fake
trainer (no detectron2), and one end-to-end run of the real trainer on synthetic COCO-format data."""
from __future__ import annotations

import json
import math
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tools.benchmark import __main__ as benchmark
from tools.benchmark import report
from tools.launch.cell import Cell

REPO = Path(__file__).resolve().parents[3]
INSTANT = REPO / "configs/transfer/instant/coco_R_50_FPN_1x_instant.yaml"


# ------------------------------------------------------------------------------------------- table math
def fake_rows(tmp_path: Path, results: dict[str, list[dict | str | None]]) -> dict[str, report.Row]:
    """Rows whose seed-k cell holds results[name][k] as its results.json (None: the cell has none)."""
    rows = {}
    for name, per_seed in results.items():
        cells = []
        for k, res in enumerate(per_seed):
            out = tmp_path / "runs" / name / "cfg" / f"seed{k}"
            out.mkdir(parents=True)
            if res is not None:
                (out / "results.json").write_text(res if isinstance(res, str) else json.dumps(res))
            cells.append(Cell(name, None, INSTANT, k, out))
        rows[name] = report.Row(None, INSTANT, cells)
    return rows


def det(bb: float | None, mk: float | None = None) -> dict:
    out = {"bbox": {"AP": bb, "AP50": 99.0}}
    if mk is not None:
        out["segm"] = {"AP": mk}
    return out


@pytest.fixture
def rows(tmp_path):
    return fake_rows(tmp_path, {
        "imagenet": [det(40.0, 35.0), det(42.0, 36.0)],
        "mine": [det(41.0, 37.0), det(45.0, 39.0)],
        "random": [det(30.0), None],  # seed 1 failed; no masks at all
        "nan_row": [det(None, 10.0), "{broken"],  # a null AP and an unreadable file: both missing
    })


def test_mean_std_delta_and_missing_cells(rows):
    s = report.summarise(rows)
    assert s["metrics"] == ["AP^bb", "AP^mk"]  # no keypoints in any result: no AP^kp column
    mine, ref = s["rows"]["mine"], s["rows"]["imagenet"]
    assert mine["AP^bb"]["mean"] == 43.0 and mine["AP^bb"]["std"] == pytest.approx(math.sqrt(8))
    assert mine["AP^bb"]["values"] == [41.0, 45.0] and mine["AP^bb"]["n"] == 2
    assert mine["AP^bb"]["delta_vs_imagenet"] == pytest.approx(2.0)  # 43 - 41
    assert mine["AP^mk"]["delta_vs_imagenet"] == pytest.approx(2.5)  # 38 - 35.5
    assert ref["AP^bb"]["delta_vs_imagenet"] is None  # the reference itself
    rnd = s["rows"]["random"]
    assert rnd["AP^bb"] == {"mean": 30.0, "std": None, "n": 1, "values": [30.0], "delta_vs_imagenet": -11.0}
    assert rnd["AP^mk"] == {"mean": None, "std": None, "n": 0, "values": [], "delta_vs_imagenet": None}
    assert s["cells"]["random"] == {"done": 1, "planned": 2}
    assert s["cells"]["nan_row"] == {"done": 1, "planned": 2} and s["rows"]["nan_row"]["AP^bb"]["n"] == 0

    lines = report.markdown_table(s)
    assert lines[0] == "| Weights | n | AP^bb | Δ AP^bb | AP^mk | Δ AP^mk |"
    table = {r.split(" | ")[0].strip("| "): [c.strip() for c in r.strip("|").split("|")] for r in lines[2:]}
    assert list(table) == ["imagenet", "mine", "random", "nan_row"]  # the rows' order
    assert table["imagenet"] == ["imagenet", "2", "41.0 ± 1.41", "(ref)", "35.5 ± 0.71", "(ref)"]
    assert table["mine"] == ["mine", "2", "43.0 ± 2.83", "+2.0", "38.0 ± 1.41", "+2.5"]
    assert table["random"] == ["random", "1 of 2", "30.0", "-11.0", "-", "-"]
    assert table["nan_row"] == ["nan_row", "1 of 2", "-", "-", "10.0", "-25.5"]


def test_without_imagenet_there_are_no_delta_columns(tmp_path):
    s = report.summarise(fake_rows(tmp_path, {"mine": [det(1.0)], "random": [det(2.0)]}))
    assert report.markdown_table(s)[0] == "| Weights | n | AP^bb |"
    assert s["rows"]["mine"]["AP^bb"]["delta_vs_imagenet"] is None


def test_keypoints_column_when_results_have_keypoints(tmp_path):
    s = report.summarise(fake_rows(tmp_path, {"imagenet": [{"bbox": {"AP": 5.0}, "keypoints": {"AP": 7.0}}],
                                              "mine": [{"bbox": {"AP": 6.0}, "keypoints": {"AP": 9.0}}]}))
    assert s["metrics"] == ["AP^bb", "AP^kp"] and s["rows"]["mine"]["AP^kp"]["delta_vs_imagenet"] == 2.0


def test_markdown_and_json_written_atomically(rows, tmp_path):
    data = {"train": [{"name": "bench_train_0", "json_file": "/d/t.json", "image_root": "/d/t",
                       "sha256": "ab"}],
            "test": [{"name": "bench_test_0", "json_file": "/d/v.json", "image_root": "/d/v",
                      "sha256": "cd"}]}
    runs = tmp_path / "runs"
    text = report.write(runs, {INSTANT: rows}, data, [0, 1])
    assert (runs / "benchmark.md").read_text() == text
    assert "## coco_R_50_FPN_1x_instant" in text and "TOY RUN" in text and "sha256 ab" in text
    doc = json.loads((runs / "benchmark.json").read_text())
    assert doc["data"] == data and doc["seeds"] == [0, 1]
    (t,) = doc["tables"]
    assert t["config"] == str(INSTANT) and t["metrics"] == ["AP^bb", "AP^mk"]
    assert t["rows"]["mine"]["AP^bb"] == {"mean": 43.0, "std": pytest.approx(math.sqrt(8)), "n": 2,
                                          "values": [41.0, 45.0], "delta_vs_imagenet": 2.0}
    assert t["rows"]["random"]["AP^mk"]["mean"] is None and t["cells"]["random"]["done"] == 1
    assert [p.name for p in runs.iterdir() if p.name.startswith(".")] == []  # no temp file left


# ------------------------------------------------------------------------------------------- command line
# Stands in for `python -m transfer.train_net`: logs its argv, checks the dataset flags come before the
# config, writes OUTPUT_DIR/results.json with AP = 10 x (row number) + seed, and fails for seed FAIL_SEED.
FAKE_TRAINER = """
import json, os, sys
from pathlib import Path
argv = sys.argv[1:]
assert argv.index("--dataset-train") < argv.index("--config-file"), argv
assert argv.index("--dataset-test") < argv.index("--config-file"), argv
opts = dict(zip(argv[argv.index("OUTPUT_DIR")::2], argv[argv.index("OUTPUT_DIR") + 1::2]))
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps(argv) + "\\n")
if opts["SEED"] == os.environ.get("FAIL_SEED"):
    sys.exit(3)
row = {"imagenet": 4, "mine": 5, "random": 1}[Path(opts["OUTPUT_DIR"]).parts[-3]]
ap = 10.0 * row + int(opts["SEED"])
Path(opts["OUTPUT_DIR"], "results.json").write_text(json.dumps({"bbox": {"AP": ap}, "segm": {"AP": ap - 5}}))
"""


def coco_json(path: Path, n: int) -> None:
    path.write_text(json.dumps({"images": [{"id": i, "file_name": f"{i}.png", "width": 64, "height": 64}
                                           for i in range(1, n + 1)], "annotations": [],
                                "categories": [{"id": 1, "name": "thing"}]}))


@pytest.fixture
def cli(tmp_path, monkeypatch):
    """Data, weights and a fake trainer; base arguments of a 3-row, 2-seed benchmark."""
    for split, n in (("train", 3), ("val", 2)):
        (tmp_path / split).mkdir()
        coco_json(tmp_path / f"{split}.json", n)
    (tmp_path / "mine.pth").write_bytes(b"not a real checkpoint: the fake trainer does not read it")
    (tmp_path / "imagenet.pth").write_bytes(b"likewise")
    trainer = tmp_path / "fake_train_net.py"
    trainer.write_text(FAKE_TRAINER)
    monkeypatch.setenv("FAKE_LOG", str(tmp_path / "trainer.log"))
    monkeypatch.delenv("FAIL_SEED", raising=False)
    runs = tmp_path / "runs"
    base = ["--train", f"{tmp_path / 'train.json'}:{tmp_path / 'train'}",
            "--test", f"{tmp_path / 'val.json'}:{tmp_path / 'val'}",
            "--weights", f"mine={tmp_path / 'mine.pth'}", "--imagenet", str(tmp_path / "imagenet.pth"),
            "--random", "--config", str(INSTANT), "--seeds", "0", "1", "--runs", str(runs),
            "--trainer", f"{shlex.quote(sys.executable)} {shlex.quote(str(trainer))}"]
    return {"base": base, "runs": runs, "log": tmp_path / "trainer.log", "tmp": tmp_path}


def calls(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_runs_cells_prints_table_and_resumes(cli, capsys):
    assert benchmark.main(cli["base"] + ["--", "SOLVER.MAX_ITER", "2"]) == 0
    out, err = capsys.readouterr()
    done = calls(cli["log"])
    assert len(done) == 6 and "6 cells, 0 done, 6 to run" in err
    first = done[0]
    train = first[first.index("--dataset-train") + 1]
    assert train == f"bench_train_0={cli['tmp'] / 'train.json'}:{cli['tmp'] / 'train'}"
    assert first[first.index("--dataset-test") + 1].startswith("bench_test_0=")
    assert first[-2:] == ["SOLVER.MAX_ITER", "2"]
    assert "| imagenet | 2 | 40.5 ± 0.71 | (ref) | 35.5 ± 0.71 | (ref) |" in out
    assert "| mine | 2 | 50.5 ± 0.71 | +10.0 | 45.5 ± 0.71 | +10.0 |" in out
    assert "| random | 2 | 10.5 ± 0.71 | -30.0 | 5.5 ± 0.71 | -30.0 |" in out
    assert out == (cli["runs"] / "benchmark.md").read_text()
    doc = json.loads((cli["runs"] / "benchmark.json").read_text())
    assert doc["data"]["train"][0]["sha256"] == __import__("hashlib").sha256(
        (cli["tmp"] / "train.json").read_bytes()).hexdigest()
    # rerun: nothing left to run, the same table
    cli["log"].unlink()
    assert benchmark.main(cli["base"]) == 0
    out2, err2 = capsys.readouterr()
    assert calls(cli["log"]) == [] and "6 cells, 6 done, 0 to run" in err2 and out2 == out


def test_failed_cells_are_missing_and_exit_1(cli, monkeypatch, capsys):
    monkeypatch.setenv("FAIL_SEED", "1")
    assert benchmark.main(cli["base"]) == 1
    out, err = capsys.readouterr()
    assert "3 of 6 cells failed" in err
    assert "| mine | 1 of 2 | 50.0 | +10.0 | 45.0 | +10.0 |" in out  # printed for the cells that ran
    assert (cli["runs"] / "benchmark.json").is_file()


def test_one_table_per_config(cli, capsys):
    keypoint = REPO / "configs/transfer/instant/keypoint_R_50_FPN_1x_instant.yaml"
    args = cli["base"] + ["--config", str(INSTANT), str(keypoint), "--seeds", "0"]  # the last ones win
    assert benchmark.main(args) == 0
    out, _ = capsys.readouterr()
    assert len(calls(cli["log"])) == 3 * 2
    assert out.count("| Weights |") == 2 and "## coco_R_50_FPN_1x_instant" in out
    assert "## keypoint_R_50_FPN_1x_instant" in out
    doc = json.loads((cli["runs"] / "benchmark.json").read_text())
    assert [Path(t["config"]).name for t in doc["tables"]] == [INSTANT.name, keypoint.name]
    assert (cli["runs"] / "mine/keypoint_R_50_FPN_1x_instant/seed0/results.json").is_file()


def test_status_and_dry_run_run_nothing(cli, capsys):
    assert benchmark.main(cli["base"] + ["--dry-run"]) == 0
    out, _ = capsys.readouterr()
    assert len(out.splitlines()) == 6 and not cli["runs"].exists() and not cli["log"].exists()
    assert benchmark.main(cli["base"] + ["--status"]) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 6 and all(line.startswith("pending") for line in out.splitlines())
    assert "6 cells: 6 pending" in err


def caffe2_pth(path: Path) -> Path:
    import torch

    torch.save({"model": {"res2_0_branch2a_w": torch.zeros(1)}, "__author__": "Caffe2"}, path)
    return path


def test_caffe2_imagenet_trains_with_the_msra_twin(cli, capsys):
    args = list(cli["base"])
    args[args.index("--imagenet") + 1] = str(caffe2_pth(cli["tmp"] / "msra.pth"))
    args[args.index("--config") + 1] = str(REPO / "configs/transfer/coco_R_50_FPN_1x.yaml")
    assert benchmark.main(args + ["--dry-run"]) == 0
    configs = {shlex.split(line)[shlex.split(line).index("OUTPUT_DIR") + 1].split("/")[-3]:
               shlex.split(line)[shlex.split(line).index("--config-file") + 1]
               for line in capsys.readouterr().out.splitlines()}
    assert configs == {"imagenet": str(REPO / "configs/transfer/msra/coco_R_50_FPN_1x.yaml"),
                       "mine": str(REPO / "configs/transfer/coco_R_50_FPN_1x.yaml"),
                       "random": str(REPO / "configs/transfer/coco_R_50_FPN_1x_random.yaml")}


def other_categories(tmp: Path) -> Path:
    """A test json whose category is another than the training json's: refused once, before any cell."""
    path = tmp / "other.json"
    coco_json(path, 2)
    path.write_text(path.read_text().replace('"name": "thing"', '"name": "other"'))
    return path


def replace(args: list[str], flag: str, value: str | None) -> list[str]:
    """args with flag's value replaced (value None: flag and its value removed)."""
    i = args.index(flag)
    return args[:i] + args[i + 2:] if value is None else args[:i + 1] + [value] + args[i + 2:]


@pytest.mark.parametrize("change, message", [
    (lambda a, t: replace(a, "--train", "no_colon.json"), "expected ANNOTATIONS.json:IMAGE_DIR"),
    (lambda a, t: replace(a, "--train", f"{t / 'nope.json'}:{t / 'train'}"), "annotation file not found"),
    (lambda a, t: replace(a, "--test", f"{t / 'val.json'}:{t / 'nodir'}"), "image directory not found"),
    (lambda a, t: replace(a, "--weights", f"mine={t / 'missing.pth'}"), "weights file not found"),
    (lambda a, t: replace(a, "--imagenet", str(t / "missing.pth")), "--imagenet weights file not found"),
    (lambda a, t: replace(replace(a, "--imagenet", None), "--weights", None), "nothing to benchmark"),
    (lambda a, t: replace(a, "--weights", f"imagenet={t / 'mine.pth'}"), "is --imagenet PATH"),
    (lambda a, t: replace(a, "--config", str(t / "nope.yaml")), "config not found"),
    (lambda a, t: replace(a, "--config", str(REPO / "configs/transfer/msra/coco_R_50_FPN_1x.yaml")),
     "is an msra/ twin"),
    (lambda a, t: replace(a, "--imagenet", str(caffe2_pth(t / "msra.pth"))), "msra/coco_R_50_FPN_1x_instant"),
    (lambda a, t: replace(a, "--test", f"{other_categories(t)}:{t / 'val'}"),
     "class 0 is id 1 'other' there and id 1 'thing' here"),
    (lambda a, t: a + ["--jobs", "0"], "--jobs must be at least 1"),
    (lambda a, t: a + ["--seeds", "1", "1"], "--seeds repeats"),
], ids=["bad-spec", "missing-json", "missing-image-dir", "missing-weights", "missing-imagenet", "no-weights",
        "imagenet-as-weights", "missing-config", "msra-config", "caffe2-without-twin", "categories", "jobs",
        "seeds"])
def test_bad_input_exits_2_before_training(cli, capsys, change, message):
    assert benchmark.main(change(list(cli["base"]), cli["tmp"])) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1, err
    assert not cli["log"].exists() and not cli["runs"].exists()


def test_runs_tree_of_other_data_is_refused(cli, capsys):
    assert benchmark.main(cli["base"]) == 0
    coco_json(cli["tmp"] / "train.json", 4)  # the training json changed: the old cells do not answer for it
    cli["log"].unlink()
    assert benchmark.main(cli["base"]) == 2
    err = capsys.readouterr().err
    assert "holds a benchmark on other data" in err.splitlines()[-1] and not cli["log"].exists()


def test_module_entry_point_error_is_one_line(tmp_path):
    p = subprocess.run([sys.executable, "-m", "tools.benchmark", "--train", "x.json:img",
                        "--test", "y.json:img", "--imagenet", "w.pth", "--config", str(INSTANT),
                        "--runs", str(tmp_path / "r")],
                       cwd=REPO, capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.strip().splitlines() == [
        "error: --train x.json:img: annotation file not found: x.json"]


# ------------------------------------------------------------------------------------------- end to end
def synthetic_coco(root: Path, split: str, n: int, seed: int) -> str:
    """n 64 x 64 images with one or two filled polygons of 2 classes, boxes and polygon masks: JSON:DIR."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    image_dir = root / split
    image_dir.mkdir(parents=True)
    images, anns = [], []
    for i in range(1, n + 1):
        img = Image.fromarray(rng.integers(60, 120, (64, 64, 3), dtype=np.uint8))
        draw = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(1, 3))):
            cat = int(rng.integers(1, 3))
            x, y, w, h = (float(v) for v in (*rng.uniform(0, 28, 2), *rng.uniform(18, 34, 2)))
            poly = [x, y, x + w, y, x + w, y + h, x, y + h]
            draw.polygon(poly, fill=(230, 40, 40) if cat == 1 else (40, 60, 230))
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": cat, "segmentation": [poly],
                         "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
        img.save(image_dir / f"{i:04d}.png")
        images.append({"id": i, "file_name": f"{i:04d}.png", "width": 64, "height": 64})
    json_file = root / f"{split}.json"
    json_file.write_text(json.dumps({"images": images, "annotations": anns,
                                     "categories": [{"id": 1, "name": "red"}, {"id": 2, "name": "blue"}]}))
    return f"{json_file}:{image_dir}"


# the instant config's 5 iterations at 128 px, cut to what still trains, evaluates and writes results.json
SECONDS = ["SOLVER.MAX_ITER", "1", "SOLVER.STEPS", "()", "SOLVER.WARMUP_ITERS", "0",
           "TEST.PRECISE_BN.ENABLED", "False", "DATALOADER.NUM_WORKERS", "0",
           "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64",
           "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64"]


@pytest.mark.slow
def test_end_to_end_with_the_real_trainer(tmp_path, capsys, monkeypatch):
    """imagenet and mine (torchvision ResNet-18s, random init, converted by transfer.convert: the instant
    config is ResNet-18), seeds 0 1: four real train_net cells, two at a time, each recording the data it
    used; a rerun runs none. (The random row's planning and table are the fake-trainer tests'.)"""
    import torch
    import torchvision

    from transfer.convert import convert

    weights = {}
    for name, seed in (("imagenet", 0), ("mine", 1)):
        torch.manual_seed(seed)
        torch.save(torchvision.models.resnet18().state_dict(), tmp_path / f"tv_{name}.pth")
        weights[name] = tmp_path / f"{name}.pth"
        convert(str(tmp_path / f"tv_{name}.pth"), str(weights[name]))
    runs = tmp_path / "runs"
    args = ["--train", synthetic_coco(tmp_path, "train", 4, 0),
            "--test", synthetic_coco(tmp_path, "val", 2, 1),
            "--imagenet", str(weights["imagenet"]), "--weights", f"mine={weights['mine']}",
            "--config", str(INSTANT), "--seeds", "0", "1", "--runs", str(runs), "--jobs", "2", "--", *SECONDS]
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # the local launcher splits the cores between jobs
    rc = benchmark.main(args)
    out, err = capsys.readouterr()
    assert rc == 0, err[-3000:]
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells[0] in ("imagenet", "mine"):
            rows[cells[0]] = cells
    assert list(rows) == ["imagenet", "mine"]
    head = next(line for line in out.splitlines() if line.startswith("| Weights"))
    assert head == "| Weights | n | AP^bb | Δ AP^bb | AP^mk | Δ AP^mk |"
    for name, cells in rows.items():
        assert cells[1] == "2", cells  # both seeds have results
        assert " ± " in cells[2] and " ± " in cells[4], cells  # mean ± std over the two seeds
        if name != "imagenet":
            float(cells[3]), float(cells[5])  # numeric differences to the imagenet row
    doc = json.loads((runs / "benchmark.json").read_text())
    (table,) = doc["tables"]
    assert all(table["rows"][r]["AP^bb"]["n"] == 2 for r in ("imagenet", "mine"))
    train_sha = doc["data"]["train"][0]["sha256"]
    provs = list(runs.rglob("provenance.json"))  # the trainer's record of each cell's data
    assert len(provs) == 4
    for prov in provs:
        (train,) = json.loads(prov.read_text())["train"]
        assert train["name"] == "bench_train_0" and train["sha256"] == train_sha and not train["builtin"]
    assert (runs / "benchmark.md").read_text() == out
    # rerun: every cell is done, nothing runs, the same table
    assert benchmark.main(args) == 0
    out2, err2 = capsys.readouterr()
    assert "4 cells, 4 done, 0 to run" in err2 and out2 == out
