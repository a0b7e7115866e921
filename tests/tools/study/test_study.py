"""tools/study: the whole study at its --tiny size end to end (every part), then a rerun that only regenerates
the report; a rerun after cleaning up that does not pretrain again; user mistakes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tools.data.fake_cifar import fake_cifar

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.slow  # 7 pretraining runs, 8 conversions and evaluations, 16 detectron2 runs: minutes on 2 cores
def test_tiny_study_end_to_end_then_rerun_only_reports(tmp_path):
    c10 = fake_cifar(tmp_path / "c10")
    out = tmp_path / "study"
    cmd = [sys.executable, "-m", "tools.study", "--tiny", "--out", str(out), "--data", str(c10),
           "--instrument", "frozen"]  # the main instrument of these assertions, whatever rows.py's is
    first = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    res = json.loads((out / "report" / "study_results.json").read_text())
    rows = res["rows"]
    assert set(rows) == {
        "random",
        "supervised",
        "simsiam_256",
        "simsiam_512",
        "fastsiam_256",
        "fastsiam_512",
        "k1",
        "k3",
    }
    for name, r in rows.items():
        assert 0 <= r["knn_top1"] <= 1 and 0 <= r["linear_top1"] <= 1, name
        assert r["det"]["frozen"]["0"]["bbox"]["AP"] is not None, name  # the main instrument: every row
    # the instrument part: random and supervised under all three; the table: 2 seeds on the main instrument
    for row in ("random", "supervised"):
        assert set(rows[row]["det"]) == {"finetune", "frozen", "lowdata"}
        assert set(rows[row]["det"]["frozen"]) == {"0", "1"} and set(rows[row]["det"]["finetune"]) == {"0"}
    assert set(rows["fastsiam_256"]["det"]) == {"frozen"} and set(rows["k1"]["det"]) == {"frozen"}
    assert set(res["instruments"]) == {"frozen"}  # the only one with 2 seeds on both rows at this size
    assert res["seeds_needed"]["seeds"] >= 2 and res["differences"][-1]["views"] == 512
    # separate runs per budget, each with its own schedule: the half-budget FastSiam run has 1 epoch, not 2
    assert rows["fastsiam_256"]["run"] == "fastsiam_b1of2" and rows["fastsiam_256"]["epochs"] == 1
    cfg = (out / "pretrain" / "fastsiam_b1of2" / "config.yaml").read_text()
    assert "epochs: 1" in cfg
    # Fig. 5: K = 1 and 3 at equal views per batch (8: batch 4 x 2 views, 2 x 4 views) and equal views
    k1, k3 = ((out / "pretrain" / k / "config.yaml").read_text() for k in ("k1", "k3"))
    assert "num_views: 2" in k1 and "batch_size: 4" in k1 and "num_views: 4" in k3 and "batch_size: 2" in k3
    assert rows["k1"]["views"] == rows["k3"]["views"] == 160
    (k31,) = res["k_differences"]  # the one pair of K, larger minus smaller, with an interval
    assert (k31["k"], k31["minus_k"]) == (3, 1) and set(k31["AP"]) == {"frozen"}
    assert k31["knn_top1"]["difference"] == pytest.approx(rows["k3"]["knn_top1"] - rows["k1"]["knn_top1"])
    assert all(r["pretrain_cpu_s"] > 0 for r in rows.values() if r["run"] != "random")
    # the supervised backbone went through the converter as a FastSiam-layout checkpoint, classifier dropped
    report = json.loads((out / "det" / "frozen" / "supervised" / "seed0" / "weights_report.json").read_text())
    assert report["loaded"] > 0 and not any("bottom_up" in k for k in report["not_initialised"])
    # the low-data instrument fine-tuned on its subset: a tenth of the 6 train scenes, rounded up
    low = json.loads((out / "data" / "scenes" / "train_0.1.json").read_text())
    assert len(low["images"]) == 1 and {a["image_id"] for a in low["annotations"]} == {low["images"][0]["id"]}
    assert "train_0.1.json" in (out / "logs" / "det_lowdata_random_seed0.log").read_text().splitlines()[0]
    assert (
        "MODEL.BACKBONE.FREEZE_AT 5"
        in (out / "logs" / "det_frozen_random_seed0.log").read_text().splitlines()[0]
    )
    md = (out / "report" / "study.md").read_text()
    assert "`tiny` preset" in md and "python -m tools.study --tiny" in md and res["scenes"]["sha256"] in md
    for section in ("## Table", "## Instrument ranges", "## FastSiam - SimSiam", "## Fig. 4", "## Fig. 5"):
        assert section in md, section
    for fig in ("study_fig4.png", "study_fig5.png"):
        assert (out / "report" / fig).stat().st_size > 1000
    assert res["timings"]["stages"]["pretrain"]["jobs"] == 7
    # only what is needed again is kept: one checkpoint a run, no fine-tuned model, no feature cache
    assert sorted(f.name for f in (out / "pretrain" / "simsiam").glob("checkpoint_0*.pth")) == [
        "checkpoint_0004.pth"
    ]
    assert not list((out / "det").glob("*/*/seed*/model_*.pth")) and not list(
        (out / "knn").glob("*/features")
    )

    before = (out / "report" / "study_results.json").stat().st_mtime_ns
    second = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "start:" not in second.stdout
    assert (out / "report" / "study_results.json").stat().st_mtime_ns > before
    again = json.loads((out / "report" / "study_results.json").read_text())
    assert again["rows"] == rows and len(again["commands"]) == 2
    first_run, rerun = again["commands"]
    assert (
        first_run["done_before"] == 0 and first_run["stages"] == 7 + 8 * 3 + 18  # pretrain, per row, det
    )
    # the rerun plans only the results (and what they need): all on disk, so nothing but the report
    assert rerun["done_before"] == rerun["stages"] == 8 + 18
    md = (out / "report" / "study.md").read_text()
    assert f"found all {rerun['stages']} stages done, only regenerated the report" in md

    # every result is on disk: without the pretraining checkpoints and backbones nothing is redone
    for f in [*(out / "pretrain").glob("*/checkpoint*.pth"), *(out / "backbones").glob("*.pth")]:
        f.unlink()
    third = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert third.returncode == 0 and "start:" not in third.stdout, third.stdout[-3000:] + third.stderr[-3000:]
    # one more seed on the main instrument: only those runs start, from the converted weights on disk
    more = subprocess.run(
        cmd + ["--table-seeds", "3", "--part", "table"], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert more.returncode == 0, more.stdout[-3000:] + more.stderr[-3000:]
    started = [
        line.split("start: ")[1].split("  (")[0] for line in more.stdout.splitlines() if "start: " in line
    ]
    assert sorted(started) == sorted(
        f"det frozen {r} seed2" for r in ("random", "supervised", "simsiam_512", "fastsiam_512")
    )
    # one more seed of Fig. 5's rows: only those two runs; a rerun without the flag keeps the folder's count
    more = subprocess.run(
        cmd + ["--fig-seeds", "2", "--part", "fig5"], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert more.returncode == 0, more.stdout[-3000:] + more.stderr[-3000:]
    started = [
        line.split("start: ")[1].split("  (")[0] for line in more.stdout.splitlines() if "start: " in line
    ]
    assert sorted(started) == ["det frozen k1 seed1", "det frozen k3 seed1"]
    same = subprocess.run(cmd + ["--part", "fig5"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert same.returncode == 0 and "start:" not in same.stdout, same.stdout[-3000:] + same.stderr[-3000:]
    state = json.loads((out / "study.json").read_text())
    assert state["settings"]["fig_seeds"] == 2 and state["settings"]["table_seeds"] == 3
    res = json.loads((out / "report" / "study_results.json").read_text())
    assert set(res["rows"]["k3"]["det"]["frozen"]) == {"0", "1"}

    # a fresh folder continues from the record alone (another session, no runs on disk): nothing starts and
    # the report holds the same rows, timings and commands, the carried ones marked
    record_path = out / "report" / "study_results.json"
    record = json.loads(record_path.read_text())
    fresh = [sys.executable, "-m", "tools.study", "--tiny", "--out", str(tmp_path / "fresh"),
             "--data", str(c10), "--instrument", "frozen"]
    cont = subprocess.run(fresh + ["--import", str(record_path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert cont.returncode == 0 and "start:" not in cont.stdout, cont.stdout[-3000:] + cont.stderr[-3000:]
    assert "imported from" in cont.stdout
    carried = json.loads((tmp_path / "fresh" / "report" / "study_results.json").read_text())
    def scored(rows: dict) -> dict:
        return {name: {k: v for k, v in r.items() if k != "imported"} for name, r in rows.items()}

    assert scored(carried["rows"]) == scored(record["rows"]) and carried["speedup"] == record["speedup"]
    # every carried score is marked as imported (compare tells it from a run repeated to the bit), none in
    # the folder that ran them
    for r in carried["rows"].values():
        det = {inst: list(seeds) for inst, seeds in r["det"].items()}
        assert r["imported"] == {"eval": r["knn_top1"] is not None, "det": det}
    assert not any(r["imported"]["eval"] or r["imported"]["det"] for r in record["rows"].values())
    assert len(carried["commands"]) == len(record["commands"]) + 1
    assert all(c.get("imported_from") for c in carried["commands"][:-1])
    # another preset's folder refuses the record before anything is written
    quick = [sys.executable, "-m", "tools.study", "--quick", "--out", str(tmp_path / "q"), "--data", str(c10)]
    refused = subprocess.run(quick + ["--import", str(record_path)], cwd=ROOT, capture_output=True, text=True,
                             timeout=120)
    assert refused.returncode == 2 and "other settings" in refused.stderr and not (tmp_path / "q").exists()


def test_user_mistakes_exit_2_in_one_line(tmp_path, capsys):
    from tools.study.__main__ import main

    out = tmp_path / "study"
    assert main(["--tiny", "--out", str(out), "--data", str(tmp_path / "no_cifar")]) == 2
    assert "tools.data.cifar10" in capsys.readouterr().err
    # the same folder with other settings (another preset, another detection schedule) is refused
    assert main(["--quick", "--out", str(out), "--data", str(tmp_path / "no_cifar")]) == 2
    assert main(["--tiny", "--det-iters", "7", "--out", str(out), "--data", str(tmp_path / "no_cifar")]) == 2
    assert capsys.readouterr().err.count("other settings") == 2
    (tmp_path / "broken.json").write_text("{not json")
    # a folder whose study.json predates a growable seed count (fig_seeds) is the same study, not refused
    state = json.loads((out / "study.json").read_text())
    assert state["settings"].pop("fig_seeds") == 1
    (out / "study.json").write_text(json.dumps(state))
    assert main(["--tiny", "--fig-seeds", "4", "--out", str(out), "--data", str(tmp_path / "no_cifar")]) == 2
    err = capsys.readouterr().err
    assert "tools.data.cifar10" in err and "other settings" not in err
    assert json.loads((out / "study.json").read_text())["settings"]["fig_seeds"] == 4
    for bad in (["--parallel", "0"], ["--table-seeds", "0"], ["--fig-seeds", "0"],
                ["--import", str(tmp_path / "broken.json")],
                ["--import", str(tmp_path / "missing.json")]):
        assert main(["--tiny", *bad, "--out", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and bad[0] in err


def test_rows_plan_only_their_stages(tmp_path, capsys):
    """--rows: a share of a part that one session can finish (checkpoints do not carry over with --import)."""
    import argparse

    from tools.study.__main__ import main
    from tools.study.plan import plan
    from tools.study.rows import PRESETS

    p = json.loads(json.dumps(PRESETS["tiny"]))
    args = argparse.Namespace(part=["fig4"], instrument="frozen", rows=["simsiam_256", "fastsiam_256"],
                              device="cpu")
    names = [j.name for j in plan(args, p, tmp_path / "study")]
    assert "pretrain simsiam_b1of2" in names and "pretrain fastsiam_b1of2" in names
    assert not any("512" in n or n in ("pretrain simsiam", "pretrain fastsiam") for n in names), names
    assert {n for n in names if n.startswith("det ")} == {"det frozen simsiam_256 seed0",
                                                         "det frozen fastsiam_256 seed0"}
    args.rows = None  # the whole part: its full-budget points too
    assert "pretrain simsiam" in [j.name for j in plan(args, p, tmp_path / "study")]
    # a row outside the parts is refused in one line before anything is written
    assert main(["--tiny", "--part", "fig4", "--rows", "k1", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--rows k1" in err and "simsiam_256" in err
    assert not (tmp_path / "x").exists()


def test_detection_runs_go_seed_by_seed_across_rows(tmp_path):
    """A share stopped part-way (a session's end, a Slurm time limit) leaves every row with as many seeds:
    seed s of each row runs before seed s+1 of any, after every pretraining, conversion and evaluation."""
    import argparse

    from tools.study.plan import plan
    from tools.study.rows import PRESETS

    p = json.loads(json.dumps(PRESETS["tiny"]))
    p["table_seeds"] = 3
    args = argparse.Namespace(part=["table"], instrument="lowdata", rows=["simsiam_512", "fastsiam_512"],
                              device="cpu")
    jobs = plan(args, p, tmp_path / "study")
    stages = [j.stage for j in jobs]
    assert stages == sorted(stages, key=lambda s: {"pretrain": 0, "transfer": 2}.get(s, 1)), stages
    dets = [j.name for j in jobs if j.stage == "transfer"]
    assert dets == [f"det {inst} {row}_512 seed{s}" for s, inst in
                    ((0, "lowdata"), (0, "finetune"), (1, "lowdata"), (2, "lowdata"))
                    for row in ("fastsiam", "simsiam")], dets


def test_interrupted_study_records_when_it_stopped(tmp_path):
    """SIGINT (Ctrl-C, or Slurm's SIGTERM): the jobs stop, and study.json says when, so the report's wall time
    counts the interrupted stretch instead of dropping it."""
    import signal
    import time

    c10 = fake_cifar(tmp_path / "c10")
    out = tmp_path / "study"
    cmd = [sys.executable, "-m", "tools.study", "--tiny", "--out", str(out), "--data", str(c10),
           "--part", "table"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    for line in proc.stdout:  # the first job has started: the signal reaches run_jobs
        seen.append(line)
        if "start: " in line:
            break
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    seen += proc.stdout.readlines()
    assert proc.wait(timeout=120) == 128 + signal.SIGINT, "".join(seen)
    last = json.loads((out / "study.json").read_text())["invocations"][-1]
    assert "finished" not in last and last["started"] < last["interrupted"] <= time.time()
