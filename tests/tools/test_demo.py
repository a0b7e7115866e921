"""`make demo`'s pipeline at its smallest size: every stage runs the real tools; a rerun skips them."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pretrain import precision

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # two pretraining runs, three conversions and three detectron2 runs: about a minute or two
def test_demo_pipeline_tiny(tmp_path):
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "tools.demo", "--size", "tiny", "--device", "cpu", "--out", str(out)]
    first = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]

    # every stage left its output
    for name in ("demo_fastsiam", "demo_simsiam"):
        assert (out / "pretrain" / name / "checkpoint.pth").is_file()
        lines = (out / "pretrain" / name / "log.jsonl").read_text().splitlines()
        assert all("loss" in json.loads(line) for line in lines)
    for name in ("demo_fastsiam", "demo_simsiam", "random_init"):
        assert (out / "weights" / f"{name}.pth").is_file()
        run_dir = out / "runs" / name / "coco_R_50_FPN_1x_instant" / "seed0"
        results = json.loads((run_dir / "results.json").read_text())
        assert {"bbox", "segm"} <= set(results)
    tables = (out / "tables.md").read_text()
    for name in ("demo_fastsiam", "demo_simsiam", "random_init"):
        assert name in tables
    assert (out / "datasets" / ".complete").is_file()  # the generator finished: a rerun may skip it
    assert (out / "fig2_target_stability.png").stat().st_size > 1000
    assert (out / "fig6_activations.png").stat().st_size > 1000
    assert "TOY RUN" in first.stdout and str(out) in first.stdout
    # the closing line names the time and the machine (the README's figure depends on both)
    closing = rf"Demo finished in \d+ s on {re.escape(precision.cpu_name())}, \d+ CPU threads"
    assert re.search(closing, first.stdout), first.stdout[-500:]
    # the conversions went through transfer.convert's entry point (its summary lines are in the log)
    assert (out / "logs" / "convert.log").read_text().count("written: ") == 3
    if len(os.sched_getaffinity(0)) >= 2:  # on a multi-core CPU the detectron2 runs went side by side
        assert "--jobs 2" in (out / "logs" / "transfer.log").read_text()
        assert (out / "runs/demo_fastsiam/coco_R_50_FPN_1x_instant/seed0/train_net.log").is_file()

    # a rerun skips every finished stage and repeats no training
    second = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert second.stdout.count("skipped") >= 2 + 3  # 2 pretraining runs and 3 conversions
    transfer_log = (out / "logs" / "transfer.log").read_text()
    assert transfer_log.rstrip().splitlines()[-1] == "3 cells, 3 done, 0 to run"
