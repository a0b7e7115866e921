"""tools/proxy/ end to end on a fake CIFAR tree (20 training images, 16 px, small heads)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.tools.data.fake_cifar import fake_cifar
from tools.data.subsets import SubsetError, balanced_subset
from tools.proxy.__main__ import main, parse_args
from tools.proxy.evaluate import Evaluator
from tools.proxy.report import label, write_plot, write_table
from tools.proxy.runs import epochs_done, plan_runs

ROOT = Path(__file__).resolve().parents[3]
TINY = ["--train-subset", "20", "--knn-test", "10", "--batch-size", "4", "--views", "320",
        "--eval-every-views", "80", "--poll", "0.1",
        "--set", "image_size=16", "dim=32", "pred_dim=8", "log_every=1", "tensorboard=false"]


# slow: five processes each import torch (~3 s CPU apiece), two pretraining runs resume: ~30 s CPU in all
@pytest.mark.slow
def test_flow_with_kill_and_resume(tmp_path, monkeypatch):
    fake_cifar(tmp_path / "c10", train=4, test=2)
    out = tmp_path / "bench"
    args = ["--data", str(tmp_path / "c10"), "--out", str(out), *TINY]
    # 1) run in a child process and SIGKILL it (no clean shutdown) once FastSiam has its first kept checkpoint
    proc = subprocess.Popen([sys.executable, "-m", "tools.proxy", *args], cwd=ROOT,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = out / "seed0" / "fastsiam" / "checkpoint_0001.pth"
    deadline = time.time() + 120
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the tool and both pretraining processes
    proc.wait()
    assert first.exists(), "the pretraining never reached its first checkpoint"
    assert not (out / "seed0" / "fastsiam" / "checkpoint_0004.pth").exists(), "finished before the kill"
    first_mtime = first.stat().st_mtime_ns

    # 2) the same command resumes and completes
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    evals = results["evaluations"]
    assert first.stat().st_mtime_ns == first_mtime  # FastSiam resumed from checkpoint.pth, did not start over
    assert sorted(evals) == ([f"seed0/fastsiam/checkpoint_{e:04d}" for e in (1, 2, 3, 4)] + ["seed0/random"]
                             + [f"seed0/simsiam/checkpoint_{e:04d}" for e in (2, 4, 6, 8)])
    views = {m: sorted(e["views"] for e in evals.values() if e["method"] == m)
             for m in ("fastsiam", "simsiam")}
    assert views["fastsiam"] == views["simsiam"] == [80, 160, 240, 320]  # same compute at every point
    assert all(0 <= e["knn_top1"] <= 1 and e["knn"]["bank"] == 20 and e["knn"]["test"] == 10
               for e in evals.values())
    table = (out / "table.md").read_text()
    assert "| 320 |" in table and "0 (random init)" in table
    assert (out / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # 3) a third run has nothing left to do: no training launched, no evaluation repeated
    log_size = (out / "seed0" / "fastsiam.log").stat().st_size

    def no_eval(self, backbone):
        raise AssertionError("a finished evaluation was repeated")

    monkeypatch.setattr(Evaluator, "__call__", no_eval)
    assert main(args) == 0
    assert (out / "seed0" / "fastsiam.log").stat().st_size == log_size
    assert json.loads((out / "results.json").read_text())["evaluations"] == evals


def test_equal_views_gives_simsiam_twice_the_epochs(tmp_path):
    fake_cifar(tmp_path / "c10", train=4, test=2)
    args = parse_args(["--data", str(tmp_path / "c10"), "--out", str(tmp_path / "o"), "--seeds", "0", "1",
                          *TINY])
    runs = plan_runs(args, 20)  # batch 4: 5 iterations per epoch; FastSiam 80 views/epoch, SimSiam 40
    by = {(r["seed"], r["name"]): r for r in runs}
    assert len(runs) == 4 and by[1, "fastsiam"]["epochs"] == 4 and by[1, "simsiam"]["epochs"] == 8
    assert "save_every_epochs=2" in by[0, "simsiam"]["overrides"]
    assert "seed=1" in by[1, "simsiam"]["overrides"]
    args.equal = "epochs"  # lightly's protocol: the same epochs, SimSiam sees half the views
    assert {r["epochs"] for r in plan_runs(args, 20)} == {4}


def test_table_reports_mean_and_spread_over_seeds(tmp_path):
    sig = {"bank": 5000, "test": 5000, "k": 200, "t": 0.1, "image_size": 32}

    def ev(method, seed, views, acc, epoch):
        return {"method": method, "seed": seed, "views": views, "knn_top1": acc, "epoch": epoch, "knn": sig}

    results = {"evaluations": {
        "seed0/random": ev("random", 0, 0, 0.28, 0), "seed1/random": ev("random", 1, 0, 0.30, 0),
        "a": ev("fastsiam", 0, 1000, 0.40, 1), "b": ev("fastsiam", 1, 1000, 0.44, 1),
        "c": ev("simsiam", 0, 1000, 0.35, 2), "d": ev("simsiam", 1, 1000, 0.35, 2)}}
    write_table(results, tmp_path / "table.md")
    write_plot(results, tmp_path / "plot.png")
    table = (tmp_path / "table.md").read_text()
    assert "| 1,000 | 42.00 ± 2.83 (n=2: 40.00, 44.00) (1) | 35.00 ± 0.00 (n=2: 35.00, 35.00) (2) |" in table
    assert "| 0 (random init) | 29.00 ± 1.41" in table
    assert (tmp_path / "plot.png").stat().st_size > 1000


def test_missing_cache_is_a_one_line_error(tmp_path, capsys):
    assert main(["--data", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    assert "tools.data.cifar10" in capsys.readouterr().err
    with pytest.raises(SubsetError, match="multiple of the 10 classes"):
        fake_cifar(tmp_path / "c10", train=4, test=2)
        balanced_subset(tmp_path / "c10" / "train", 15, seed=0)


def test_amp_comparison_plans_one_run_per_precision(tmp_path):
    fake_cifar(tmp_path / "c10", train=4, test=2)
    args = parse_args(["--data", str(tmp_path / "c10"), "--out", str(tmp_path / "o"), "--seeds", "0", "1",
                          "--methods", "fastsiam", "--amp", "off", "bf16", *TINY])
    runs = plan_runs(args, 20)
    assert [(r["seed"], r["name"]) for r in runs] == [(0, "fastsiam_off"), (0, "fastsiam_bf16"),
                                                      (1, "fastsiam_off"), (1, "fastsiam_bf16")]
    assert all(f"amp={r['name'].split('_')[1]}" in r["overrides"] for r in runs)
    assert {r["epochs"] for r in runs} == {4}  # equal views: the same schedule at both precisions
    assert runs[1]["out"] == tmp_path / "o" / "seed0" / "fastsiam_bf16"
    plain = parse_args(["--data", str(tmp_path / "c10"), "--out", str(tmp_path / "o"), *TINY])
    one = plan_runs(plain, 20)
    assert [r["name"] for r in one] == ["fastsiam", "simsiam"] and "amp=auto" in one[0]["overrides"]
    assert label("fastsiam_bf16") == "FastSiam (4 views), amp=bf16"


def test_finished_reads_epochs_done_and_old_checkpoints():
    assert epochs_done({"epochs_done": 3, "epoch": 3}) == 3
    assert epochs_done({"epoch": 2}) == 2  # written before the key had its name
