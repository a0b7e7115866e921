"""python -m tools.launch with a fake trainer that writes results.json (no detectron2 needed)."""
from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tools.launch.__main__ import main as launch_main

REPO = Path(__file__).resolve().parents[3]

# Stands in for `python -m transfer.train_net`: logs its argv, writes OUTPUT_DIR/results.json, and fails when
# FAIL_SEED matches the SEED it was given.
FAKE_TRAINER = """
import json, os, sys
from pathlib import Path
argv = sys.argv[1:]
opts = dict(zip(argv[argv.index("OUTPUT_DIR")::2], argv[argv.index("OUTPUT_DIR") + 1::2]))
import time
t0 = time.time()
time.sleep(float(os.environ.get("FAKE_SLEEP", "0")))
print("fake trainer output")
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps(argv) + "\\n")
with open(os.environ["FAKE_LOG"] + ".times", "a") as f:
    f.write(json.dumps([t0, time.time(), os.environ.get("OMP_NUM_THREADS")]) + "\\n")
if opts["SEED"] == os.environ.get("FAIL_SEED"):
    sys.exit(3)
Path(opts["OUTPUT_DIR"], "results.json").write_text(json.dumps({"bbox": {"AP": 1.0 + int(opts["SEED"])}}))
"""


@pytest.fixture
def setup(tmp_path, monkeypatch):
    trainer = tmp_path / "fake_train_net.py"
    trainer.write_text(FAKE_TRAINER)
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "fastsiam_r50_in1k_25ep.pkl").write_bytes(b"w1")
    (weights / "imagenet.pth").write_bytes(b"w2")
    (weights / "notes.txt").write_text("not weights")
    cfgs = tmp_path / "configs"
    cfgs.mkdir()
    for stem in ("coco_R_50_FPN_1x", "coco_R_50_FPN_1x_random", "cityscapes_R_50_FPN_instant",
                 "cityscapes_R_50_FPN_random_instant"):
        (cfgs / f"{stem}.yaml").write_text("{}\n")
    log = tmp_path / "trainer.log"
    monkeypatch.setenv("FAKE_LOG", str(log))
    monkeypatch.delenv("FAIL_SEED", raising=False)
    base = ["--weights-dir", str(weights), "--random", "--seeds", "0", "1", "--runs", str(tmp_path / "runs"),
            "--configs", str(cfgs / "coco_R_50_FPN_1x.yaml"), str(cfgs / "cityscapes_R_50_FPN_instant.yaml"),
            "--trainer", f"{shlex.quote(sys.executable)} {shlex.quote(str(trainer))}"]
    return {"base": base, "log": log, "runs": tmp_path / "runs", "weights": weights, "cfgs": cfgs}


def calls(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_full_matrix_then_resume(setup):
    assert launch_main(setup["base"] + ["--", "SOLVER.IMS_PER_BATCH", "2"]) == 0
    runs, done = setup["runs"], calls(setup["log"])
    assert len(done) == 3 * 2 * 2  # weights (2 files + random) x configs x seeds
    for name in ("fastsiam_r50_in1k_25ep", "imagenet"):
        for stem in ("coco_R_50_FPN_1x", "cityscapes_R_50_FPN_instant"):
            for k in (0, 1):
                assert json.loads((runs / name / stem / f"seed{k}" / "results.json").read_text()) == \
                    {"bbox": {"AP": 1.0 + k}}
    for stem in ("coco_R_50_FPN_1x_random", "cityscapes_R_50_FPN_random_instant"):
        assert (runs / "random" / stem / "seed1" / "results.json").is_file()
    by_out = {c[c.index("OUTPUT_DIR") + 1]: c for c in done}
    fs = by_out[str(runs / "fastsiam_r50_in1k_25ep/coco_R_50_FPN_1x/seed1")]
    assert fs[:2] == ["--config-file", str(setup["cfgs"] / "coco_R_50_FPN_1x.yaml")]
    fs_weights = (setup["weights"] / "fastsiam_r50_in1k_25ep.pkl").resolve()
    assert fs[fs.index("MODEL.WEIGHTS") + 1] == str(fs_weights)
    assert fs[fs.index("SEED") + 1] == "1" and fs[-2:] == ["SOLVER.IMS_PER_BATCH", "2"]
    rnd = by_out[str(runs / "random/cityscapes_R_50_FPN_random_instant/seed0")]
    assert rnd[1] == str(setup["cfgs"] / "cityscapes_R_50_FPN_random_instant.yaml")
    assert rnd[rnd.index("MODEL.WEIGHTS") + 1] == ""  # random init, whatever the config says
    # interrupted matrix: one result lost, one cell cut off mid-training -> only those two run again
    (runs / "imagenet/coco_R_50_FPN_1x/seed0/results.json").unlink()
    (runs / "random/coco_R_50_FPN_1x_random/seed1/results.json").unlink()
    (runs / "random/coco_R_50_FPN_1x_random/seed1/last_checkpoint").write_text("model_0000999.pth")
    setup["log"].unlink()
    assert launch_main(setup["base"]) == 0
    again = calls(setup["log"])
    assert sorted(c[c.index("OUTPUT_DIR") + 1] for c in again) == [
        str(runs / "imagenet/coco_R_50_FPN_1x/seed0"), str(runs / "random/coco_R_50_FPN_1x_random/seed1")]
    again.sort(key=lambda c: c[c.index("OUTPUT_DIR") + 1])
    assert ["--resume" in c for c in again] == [False, True]


def test_dry_run_prints_and_runs_nothing(setup, capsys):
    assert launch_main(setup["base"] + ["--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 12 and not setup["log"].exists() and not setup["runs"].exists()
    first = shlex.split(out[0])
    assert "--config-file" in first and "OUTPUT_DIR" in first and "SEED" in first


def test_failed_cell_does_not_stop_the_rest(setup, monkeypatch, capsys):
    monkeypatch.setenv("FAIL_SEED", "1")
    assert launch_main(setup["base"]) == 1
    err = capsys.readouterr().err
    assert len(calls(setup["log"])) == 12
    assert "6 of 12 cells failed" in err and str(setup["runs"] / "imagenet/coco_R_50_FPN_1x/seed1") in err
    assert (setup["runs"] / "imagenet/coco_R_50_FPN_1x/seed0/results.json").is_file()
    assert not (setup["runs"] / "imagenet/coco_R_50_FPN_1x/seed1/results.json").exists()


def test_jobs_run_cells_side_by_side_with_split_threads(setup, monkeypatch, capsys):
    monkeypatch.setenv("FAKE_SLEEP", "1.0")
    monkeypatch.setenv("FAIL_SEED", "1")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3})
    args = setup["base"][:]
    args[args.index("--seeds") + 2] = "1"  # seeds 0 1: half the cells fail, the rest must still finish
    assert launch_main(args + ["--jobs", "2"]) == 1
    err = capsys.readouterr().err
    assert "6 of 12 cells failed" in err and "exit status 3" in err
    times = [json.loads(line) for line in Path(str(setup["log"]) + ".times").read_text().splitlines()]
    assert len(times) == 12 and {t[2] for t in times} == {"2"}  # 4 cores / 2 jobs
    at_once = [sum(s <= t[0] < e for s, e, _ in times) for t in times]  # cells running when each started
    assert max(at_once) == 2, times  # side by side (each cell sleeps 1 s), and never more than 2 at once
    # each cell's output went to its own log, not to the terminal
    log = setup["runs"] / "imagenet/coco_R_50_FPN_1x/seed0/train_net.log"
    assert "fake trainer output" in log.read_text()
    assert (setup["runs"] / "imagenet/coco_R_50_FPN_1x/seed0/results.json").is_file()


def test_jobs_must_be_positive_and_local(setup, capsys):
    assert launch_main(setup["base"] + ["--jobs", "0"]) == 2
    assert launch_main(setup["base"] + ["--jobs", "2", "--launcher", "slurm", "--dry-run"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert "--jobs must be at least 1" in err[0] and "--jobs is for the local launcher" in err[1]
    assert not setup["log"].exists()


@pytest.mark.parametrize("change, message", [
    (lambda a, s: a + ["--weights", "x=" + str(s["weights"] / "missing.pkl")], "weights file not found"),
    (lambda a, s: a + ["--weights", "no_equals_sign"], "expected NAME=PATH"),
    (lambda a, s: a + ["--configs", str(s["cfgs"] / "nope.yaml")], "config not found"),
    (lambda a, s: (s["cfgs"] / "coco_R_50_FPN_1x_random.yaml").unlink() or a, "no random-init config"),
], ids=["missing-weights", "bad-pair", "missing-config", "missing-random-config"])
def test_bad_input_exits_2_before_running(setup, capsys, change, message):
    assert launch_main(change(list(setup["base"]), setup)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
    assert not setup["log"].exists()


def test_named_weights_pairs_and_script_entry(setup, tmp_path):
    w = setup["weights"] / "imagenet.pth"
    args = ["--weights", f"mine={w}", "--seeds", "3", "--runs", str(setup["runs"]), "--configs",
            str(setup["cfgs"] / "coco_R_50_FPN_1x.yaml"), "--dry-run"]
    p = subprocess.run([sys.executable, "-m", "tools.launch", *args], cwd=REPO, capture_output=True,
                       text=True)
    assert p.returncode == 0, p.stderr
    (cmd,) = p.stdout.splitlines()
    assert shlex.split(cmd)[-6:] == ["OUTPUT_DIR", str(setup["runs"] / "mine/coco_R_50_FPN_1x/seed3"),
                                     "MODEL.WEIGHTS", str(w.resolve()), "SEED", "3"]


def test_random_row_on_the_repo_configs(tmp_path, capsys):
    """Every protocol config of configs/transfer (and its instant twin) resolves its random-init config."""
    protocols = sorted((REPO / "configs/transfer").glob("*.yaml"))
    protocols = [p for p in protocols if not p.stem.endswith("_random")]
    instant = sorted((REPO / "configs/transfer/instant").glob("*_instant.yaml"))
    assert protocols and instant
    args = ["--random", "--runs", str(tmp_path), "--dry-run", "--configs", *map(str, protocols + instant)]
    assert launch_main(args) == 0
    cmds = [shlex.split(c) for c in capsys.readouterr().out.splitlines()]
    assert len(cmds) == len(protocols) + len(instant)
    used = {Path(c[c.index("--config-file") + 1]) for c in cmds}
    assert {p.stem for p in used} == {p.stem + "_random" for p in protocols} | {p.stem for p in instant}
    assert all(c[c.index("MODEL.WEIGHTS") + 1] == "" for c in cmds)
