"""python -m tools.launch --launcher slurm / submitit-local (tools/launch/slurm.py) without a Slurm cluster: dry
runs, the multi-node detectron2 flags, and the real submission path through submitit's LocalExecutor."""
from __future__ import annotations

import importlib.util
import json
import pickle
import shlex
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tools.launch import slurm
from tools.launch.__main__ import main as launch_main
from tools.launch.cell import Cell

REPO = Path(__file__).resolve().parents[3]
INSTANT = REPO / "configs" / "transfer" / "instant"

# Stands in for `python -m transfer.train_net`. First run: leaves a checkpoint, checks that Slurm's preemption
# signal (USR2, which Slurm sends to every process of the job) does not kill it, then asks its submitit task
# to checkpoint-and-requeue, as Slurm would, and waits to be stopped. A run with --resume writes results.json.
PREEMPTED_TRAINER = """
import json, os, signal, sys, time
from pathlib import Path
argv = sys.argv[1:]
out = Path(argv[argv.index("OUTPUT_DIR") + 1])
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps(argv) + "\\n")
if "--resume" in argv:
    (out / "results.json").write_text(json.dumps({"bbox": {"AP": 1.0}}))
    sys.exit(0)
(out / "last_checkpoint").write_text("model_0000004.pth")
os.kill(os.getpid(), signal.SIGUSR2)  # ignored in the trainer: only the submitit task acts on it
os.kill(os.getppid(), signal.SIGUSR2)  # the submitit task: stop this trainer, requeue the job
time.sleep(60)
sys.exit(5)  # not reached when the task stops us
"""


def test_dry_run_prints_the_job_of_every_pending_cell(tmp_path, capsys):
    runs = tmp_path / "runs"
    done = runs / "random/coco_R_50_FPN_1x_random/seed0"
    done.mkdir(parents=True)
    (done / "results.json").write_text("{}")
    cut = runs / "random/coco_R_50_FPN_1x_random/seed1"
    cut.mkdir(parents=True)
    (cut / "last_checkpoint").write_text("model_0000999.pth")
    args = ["--random", "--seeds", "0", "1", "2", "--runs", str(runs), "--configs",
            str(REPO / "configs/transfer/coco_R_50_FPN_1x.yaml"),
            str(REPO / "configs/transfer/coco_R_50_C4_1x.yaml"),
            "--launcher", "slurm", "--dry-run", "--nodes", "2", "--gpus-per-node", "8", "--partition", "gpu",
            "--account", "lab", "--qos", "high", "--timeout-min", "600", "--slurm-arg", "constraint=a100",
            "--slurm-arg", "mem=0", "--", "SOLVER.CHECKPOINT_PERIOD", "2000"]
    assert launch_main(args) == 0
    out = capsys.readouterr()
    blocks = out.out.split("\n[")
    assert len(blocks) == 5 and "6 cells, 1 done, 5 to run" in out.err  # 2 protocols x 3 seeds, one done
    for block in blocks:
        head, res, cmd, output = block.strip().splitlines()
        assert res.split(None, 1)[1] == ("nodes=2 gpus_per_node=8 tasks_per_node=1 cpus_per_task=48 "
                                         "timeout_min=600 partition=gpu account=lab qos=high "
                                         "constraint=a100 mem=0")
        cmd = shlex.split(cmd.split(None, 1)[1])
        assert cmd[cmd.index("--num-gpus"):cmd.index("--num-gpus") + 8] == [
            "--num-gpus", "8", "--num-machines", "2", "--machine-rank", "<node-rank>",
            "--dist-url", "tcp://<first-node>:<port>"]
        assert cmd[-2:] == ["SOLVER.CHECKPOINT_PERIOD", "2000"]
        folder = Path(cmd[cmd.index("OUTPUT_DIR") + 1])
        assert folder.is_absolute() and head.endswith(f"random/{folder.parent.name}/{folder.name}")
        assert output.split()[1] == str(folder) and str(folder / "submitit") in output
        assert ("--resume" in cmd) == (folder == cut.resolve())
    assert not any(runs.rglob("submitit"))  # nothing submitted, no job folder


@pytest.mark.parametrize("extra, message", [
    (["--launcher", "slurm"], "srun is not on PATH"),
    (["--launcher", "slurm", "--dry-run", "--slurm-arg", "constraint"], "expected KEY=VALUE"),
    (["--launcher", "slurm", "--dry-run", "--num-gpus", "8"], "--gpus-per-node"),
    (["--launcher", "submitit-local", "--nodes", "2"], "this machine only"),
], ids=["no-slurm", "bad-slurm-arg", "num-gpus", "local-multi-node"])
def test_bad_slurm_options_exit_2(tmp_path, monkeypatch, capsys, extra, message):
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun, whatever this machine has
    args = ["--random", "--runs", str(tmp_path / "runs"), "--configs",
            str(INSTANT / "coco_R_50_FPN_1x_instant.yaml"), *extra]
    assert launch_main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_multi_node_cell_takes_rank_and_address_from_the_job():
    cell = Cell("w", Path("/w.pth"), Path("c.yaml"), 0, Path("/runs/w/c/seed0"))
    job = slurm.CellJob(cell, ["train"], ["A", "1"], nodes=4, gpus_per_node=8)
    envs = [SimpleNamespace(node=n, hostnames=["gpu-a17", "gpu-a18", "gpu-b01", "gpu-b02"], job_id="771")
            for n in range(4)]
    cmds = [job.command(e) for e in envs]
    for n, cmd in enumerate(cmds):
        i = cmd.index("--num-gpus")
        assert cmd[i:i + 6] == ["--num-gpus", "8", "--num-machines", "4", "--machine-rank", str(n)]
        assert cmd[i + 6] == "--dist-url" and cmd[i + 7].startswith("tcp://gpu-a17:")
    assert len({c[c.index("--dist-url") + 1] for c in cmds}) == 1  # every machine meets at one address
    single = slurm.CellJob(cell, ["train"], [], nodes=1, gpus_per_node=8).command(envs[0])
    assert "--num-machines" not in single and single[single.index("--num-gpus") + 1] == "8"
    cpu = slurm.CellJob(cell, ["train"], [], nodes=1, gpus_per_node=0).command(envs[0])
    assert "--num-gpus" not in cpu  # the trainer's default: one process


def test_preempted_cell_is_requeued_and_resumes(tmp_path, monkeypatch, capsys):
    trainer = tmp_path / "trainer.py"
    trainer.write_text(PREEMPTED_TRAINER)
    log = tmp_path / "calls.log"
    monkeypatch.setenv("FAKE_LOG", str(log))
    runs = tmp_path / "runs"
    args = ["--random", "--runs", str(runs), "--configs", str(INSTANT / "coco_R_50_FPN_1x_instant.yaml"),
            "--launcher", "submitit-local", "--gpus-per-node", "0", "--timeout-min", "5",
            "--trainer", f"{shlex.quote(sys.executable)} {shlex.quote(str(trainer))}"]
    assert launch_main(args) == 0
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert ["--resume" in c for c in calls] == [False, True]  # one preemption, then resumed
    out = runs / "random/coco_R_50_FPN_1x_instant/seed0"
    assert (out / "results.json").is_file()
    job_log = "".join(p.read_text() for p in (out / "submitit").glob("*_log.*"))
    assert "Requeued job" in job_log and "stopping the child, then requeueing" in job_log
    capsys.readouterr()
    assert launch_main(args + ["--status"]) == 0
    assert capsys.readouterr().out.split() == ["done", str(out)]


@pytest.mark.slow  # two detectron2 instant runs: ~25 s on 2 idle cores
@pytest.mark.skipif(importlib.util.find_spec("detectron2") is None, reason="needs detectron2")
def test_two_instant_cells_through_submitit_then_skipped(tmp_path, monkeypatch, capsys):
    """The real trainer on two instant cells, each a submitit job run by LocalExecutor; a rerun submits
    none."""
    from tools.data import detection

    detection.make_all(str(tmp_path / "data"), num_images=10, seed=0)
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "data"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    runs = tmp_path / "runs"
    args = ["--random", "--seeds", "0", "1", "--runs", str(runs), "--configs",
            str(INSTANT / "coco_R_50_FPN_1x_instant.yaml"), "--launcher", "submitit-local",
            "--gpus-per-node", "0", "--timeout-min", "10", "--", "SOLVER.MAX_ITER", "2"]
    assert launch_main(args) == 0, capsys.readouterr().err
    cells = [runs / f"random/coco_R_50_FPN_1x_instant/seed{k}" for k in (0, 1)]
    for out in cells:
        assert set(json.loads((out / "results.json").read_text())) == {"bbox", "segm"}
        record = json.loads((out / "submitit/job.json").read_text())
        assert record["launcher"] == "submitit-local"
        assert (out / "submitit" / f"{record['job_id']}_0_result.pkl").is_file()  # submitit's job record
    capsys.readouterr()
    assert launch_main(args) == 0
    err = capsys.readouterr().err
    assert "2 cells, 2 done, 0 to run" in err and "job" not in err
    assert launch_main(["--status", *args]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split() for line in lines] == [["done", str(c)] for c in cells]


# squeue and sacct as Slurm would answer for the jobs of the status test: 101 pending, 102 running, 105
# requeued after a preemption (its first run's result file says it ended), 106 held; 103 and 104 have left the
# queue, and accounting knows 103 timed out
FAKE_SQUEUE = """#!/bin/sh
printf '101|PENDING|Resources\\n102|RUNNING|None\\n105|PENDING|BeginTime\\n106|PENDING|JobHeldUser\\n'
"""
FAKE_SACCT = """#!/bin/sh
echo "$@" >> "$(dirname "$0")/sacct.calls"
printf '103|TIMEOUT\\n'
"""


def test_status_one_line_per_cell(tmp_path, monkeypatch, capsys):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("squeue", FAKE_SQUEUE), ("sacct", FAKE_SACCT)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    runs = tmp_path / "runs"
    cfg = INSTANT / "coco_R_50_FPN_1x_instant.yaml"
    seed = [runs / f"random/{cfg.stem}/seed{k}" for k in range(9)]
    (seed[0]).mkdir(parents=True)
    (seed[0] / "results.json").write_text("{}")  # done, whatever its job says
    seed[1].mkdir()
    (seed[1] / "last_checkpoint").write_text("model_0000999.pth")  # never submitted, cut off locally
    for k, job_id, launcher in ((2, "101", "slurm"), (3, "102", "slurm"), (4, "103", "slurm"),
                                (5, "999999999", "submitit-local"), (6, "104", "slurm"), (7, "105", "slurm"),
                                (8, "106", "slurm")):
        jobs = seed[k] / "submitit"
        jobs.mkdir(parents=True)
        (jobs / "job.json").write_text(json.dumps({"job_id": job_id, "launcher": launcher}))
    (seed[4] / "submitit/103_0_log.err").write_text(
        "[d2] iter: 80000 loss 0.3\nslurmstepd: error: *** JOB 103 CANCELLED DUE TO TIME LIMIT ***\n")
    (seed[5] / "submitit/999999999_0_log.err").write_text(
        "FileNotFoundError: weights.pth\nsubmitit ERROR (...) - Submitted job triggered an exception\n"
        "Traceback (most recent call last):\nRuntimeError: exit status 1: python -m transfer.train_net\n")
    with open(seed[5] / "submitit/999999999_0_result.pkl", "wb") as f:
        pickle.dump(("error", "Traceback ...\nRuntimeError: exit status 1"), f)
    with open(seed[6] / "submitit/104_0_result.pkl", "wb") as f:  # finished, but no results.json
        pickle.dump(("success", 0), f)
    with open(seed[7] / "submitit/105_0_result.pkl", "wb") as f:  # the run before Slurm requeued it
        pickle.dump(("error", "RuntimeError: exit status -15"), f)
    args = ["--status", "--random", "--seeds", *map(str, range(9)), "--runs", str(runs),
            "--configs", str(cfg)]
    assert launch_main(args) == 0
    out = capsys.readouterr()
    lines = out.out.splitlines()
    assert [line.split()[:2] for line in lines] == [[s, str(d)] for s, d in zip(
        ("done", "pending", "queued", "running", "failed", "failed", "failed", "queued", "queued"), seed,
        strict=True)]
    assert lines[1].endswith("(has a checkpoint: resumes)")
    assert lines[2].endswith("job 101: pending (Resources)") and lines[3].endswith("job 102")
    assert "job 103: TIMEOUT: slurmstepd: error: *** JOB 103 CANCELLED DUE TO TIME LIMIT ***" in lines[4]
    assert "job 999999999: FileNotFoundError: weights.pth  [log: " in lines[5]  # the trainer's line, not ours
    assert lines[6].endswith("job 104: finished without results.json")
    assert lines[7].endswith("job 105: pending (BeginTime)")  # Slurm's word, not the stale result file's
    assert lines[8].endswith("job 106: held (JobHeldUser): `scontrol release 106` lets it run")
    assert "9 cells: 1 done, 1 pending, 3 queued, 1 running, 3 failed" in out.err
    # accounting is asked only about the jobs squeue no longer lists, in one call
    assert (bin_dir / "sacct.calls").read_text().split("--jobs=")[1:] == ["103 ", "104\n"]
