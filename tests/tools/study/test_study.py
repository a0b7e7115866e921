"""tools/study: the whole study at its --tiny size end to end, then a rerun that only regenerates the report;
user mistakes."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tools.data.fake_cifar import fake_cifar

ROOT = Path(__file__).resolve().parents[3]


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
    # only what a row takes is kept: the rows' pretraining epochs; no fine-tuned model (scores are all it needs)
    kept = {m: sorted(f.name for f in (out / "pretrain" / m).glob("checkpoint_0*.pth"))
            for m in ("fastsiam", "simsiam", "supervised")}
    assert kept == {"fastsiam": ["checkpoint_0001.pth", "checkpoint_0002.pth"],
                    "simsiam": ["checkpoint_0002.pth", "checkpoint_0004.pth"], "supervised": ["checkpoint_0004.pth"]}
    assert not list((out / "det").glob("*/seed0/model_*.pth"))

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
    assert "tools.data.cifar10" in capsys.readouterr().err
    # the same folder with other settings (another preset, another detection schedule) is refused
    assert main(["--quick", "--out", str(out), "--data", str(tmp_path / "no_cifar")]) == 2
    assert main(["--tiny", "--det-iters", "7", "--out", str(out), "--data", str(tmp_path / "no_cifar")]) == 2
    assert capsys.readouterr().err.count("other settings") == 2
    assert main(["--tiny", "--parallel", "0", "--out", str(tmp_path / "x")]) == 2
