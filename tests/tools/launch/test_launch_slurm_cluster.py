"""python -m tools.launch --launcher slurm against the real daemons of the CI Slurm cluster
(tools/ci/slurm_up.sh): two cells through every state --status reports (queued, held, running, done,
failed), reruns that never submit a job Slurm still holds, the environment a job gets under
SBATCH_EXPORT=NONE, and refused submissions that do not stop the matrix. The trainer is a stand-in that
waits for the test's word, so each stage can be seen."""
from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.slurm_cluster import cancel_jobs_under, jobs_named, slurm_state, wait_for
from tools.launch.__main__ import main as launch_main

pytestmark = pytest.mark.slurm
REPO = Path(__file__).resolve().parents[3]
CFG = REPO / "configs/transfer/instant/coco_R_50_FPN_1x_instant.yaml"

# Stands in for `python -m transfer.train_net`: records the environment it got, waits for OUT/go, then writes
# results.json, except seed 1, which fails until OUT/heal exists.
TRAINER = """
import json, os, sys, time
from pathlib import Path
argv = sys.argv[1:]
out = Path(argv[argv.index("OUTPUT_DIR") + 1])
seed = argv[argv.index("SEED") + 1]
keys = ("DETECTRON2_DATASETS", "FASTSIAM_CI_MARK", "SLURM_JOB_ID")
(out / "env.json").write_text(json.dumps({k: os.environ.get(k) for k in keys}))
while not (out / "go").exists():
    time.sleep(0.2)
if seed == "1" and not (out / "heal").exists():
    sys.exit("fake trainer: loss is NaN at iteration 7")
(out / "results.json").write_text(json.dumps({"bbox": {"AP": 1.0}}))
"""


@pytest.fixture(autouse=True)
def no_jobs_left(tmp_path):
    yield
    cancel_jobs_under(tmp_path)


def _args(tmp_path: Path, *extra: str) -> list[str]:
    trainer = tmp_path / "trainer.py"
    trainer.write_text(TRAINER)
    return ["--random", "--seeds", "0", "1", "--runs", str(tmp_path / "runs"), "--configs", str(CFG),
            "--launcher", "slurm", "--partition", "cpu", "--gpus-per-node", "0", "--timeout-min", "10",
            "--mem", "1G", "--trainer", f"{shlex.quote(sys.executable)} {shlex.quote(str(trainer))}", *extra]


def _status(args, capsys) -> dict[str, str]:
    """{seed folder name: its --status line}"""
    assert launch_main([*args, "--status"]) == 0
    lines = capsys.readouterr().out.splitlines()
    return {Path(line.split()[1]).name: line for line in lines}


def _job(cell: Path) -> str:
    return json.loads((cell / "submitit/job.json").read_text())["job_id"]


def test_two_cells_through_every_state_and_no_duplicate_job(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SBATCH_EXPORT", "NONE")  # the job must carry what it needs
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "datasets"))
    monkeypatch.setenv("FASTSIAM_CI_MARK", "carried")
    args = _args(tmp_path, "--cpus-per-task", "2")  # each cell takes the whole 2-CPU node: one at a time
    cells = [tmp_path / f"runs/random/{CFG.stem}/seed{k}" for k in (0, 1)]
    assert launch_main(args) == 0
    capsys.readouterr()
    jobs = [_job(c) for c in cells]
    wait_for(lambda: (cells[0] / "env.json").exists(), "the first cell to start")
    st = _status(args, capsys)
    assert st["seed0"].split()[0] == "running" and st["seed0"].endswith(f"job {jobs[0]}")
    assert st["seed1"].split()[0] == "queued" and f"job {jobs[1]}: pending" in st["seed1"]
    # squeue gives a pending job its reason once the scheduler has looked at it (on a loaded machine, after
    # the first status call): the status line shows it then
    wait_for(lambda: f"job {jobs[1]}: pending (" in _status(args, capsys)["seed1"], "the pending reason")
    subprocess.run(["scontrol", "hold", jobs[1]], check=True, timeout=30)
    assert f"job {jobs[1]}: held (JobHeld" in _status(args, capsys)["seed1"]
    assert launch_main(args) == 0  # rerun: both are Slurm's, neither is submitted again
    err = capsys.readouterr().err
    assert f"job {jobs[0]} is already running" in err and f"job {jobs[1]} is already queued" in err
    name = f"random:{CFG.stem}:seed"
    assert jobs_named(name + "0") == [jobs[0]] and jobs_named(name + "1") == [jobs[1]]
    subprocess.run(["scontrol", "release", jobs[1]], check=True, timeout=30)
    (cells[0] / "go").touch()
    wait_for(lambda: (cells[1] / "env.json").exists(), "the second cell to start")
    st = _status(args, capsys)
    assert st["seed0"].split()[0] == "done" and st["seed1"].split()[0] == "running"
    (cells[1] / "go").touch()
    wait_for(lambda: slurm_state(jobs[1]) in ("FAILED", "COMPLETED"), "the second cell to fail")
    line = _status(args, capsys)["seed1"]
    assert line.split()[0] == "failed" and "fake trainer: loss is NaN at iteration 7" in line
    env = json.loads((cells[1] / "env.json").read_text())
    assert env == {"DETECTRON2_DATASETS": str(tmp_path / "datasets"), "FASTSIAM_CI_MARK": "carried",
                   "SLURM_JOB_ID": jobs[1]}
    # rerun: the done cell is skipped, the failed one submitted again
    (cells[1] / "heal").touch()
    assert launch_main(args) == 0
    assert "2 cells, 1 done, 1 to run" in capsys.readouterr().err
    again = _job(cells[1])
    assert again != jobs[1]
    record = json.loads((cells[1] / "submitit/job.json").read_text())
    assert record["previous_jobs"] == [jobs[1]]  # the first job stays in the record
    wait_for(lambda: slurm_state(again) == "COMPLETED", "the resubmitted cell")
    assert [line.split()[0] for line in _status(args, capsys).values()] == ["done", "done"]


def test_refused_cells_do_not_stop_the_matrix(tmp_path, capsys):
    # sinfo already says no: one line, exit 2, before anything is written
    assert launch_main(_args(tmp_path)) == 2  # the default 6 CPUs per cell do not fit 2-CPU machines
    err = capsys.readouterr().err
    assert err.startswith("error: 1 task(s) x 6 CPUs = 6 CPUs per machine") and err.count("\n") == 1
    # sbatch says no: every cell is tried, each refusal is one line, the matrix exits 1 with the count
    assert launch_main(_args(tmp_path, "--cpus-per-task", "1", "--slurm-arg", "constraint=nope")) == 1
    err = capsys.readouterr().err
    refused = [line for line in err.splitlines() if "FAILED" in line]
    assert len(refused) == 2 and all("sbatch refused the job: sbatch: error:" in line for line in refused)
    assert "2 of 2 cells failed" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()  # no folder, pickle or sbatch script left behind
