"""python -m pretrain.submit without a Slurm cluster: the Slurm-to-torchrun variable mapping of multi-node
jobs, dry runs, bad input, and a job run by submitit's LocalExecutor that is preempted, requeued and resumes
exactly."""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from pretrain import childjob, submit
from tests.pretrain.conftest import TINY, run_pretrain

NODE_ENV = {  # task 11 of a 2 x 8 job, as Slurm sets it on the second node
    "SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "4242", "SLURM_NTASKS": "16", "SLURM_JOB_NUM_NODES": "2",
    "SLURM_NODEID": "1", "SLURM_PROCID": "11", "SLURM_LOCALID": "3", "SLURM_JOB_NODELIST": "gpu-a[17-18]"}


def test_slurm_environment_maps_to_torchrun_variables(monkeypatch):
    import submitit

    for key, value in NODE_ENV.items():
        monkeypatch.setenv(key, value)
    env = childjob.torch_env(submitit.JobEnvironment())
    assert {k: v for k, v in env.items() if k != "MASTER_PORT"} == {
        "RANK": "11", "LOCAL_RANK": "3", "WORLD_SIZE": "16", "LOCAL_WORLD_SIZE": "8",
        "MASTER_ADDR": "gpu-a17"}
    assert 20000 <= int(env["MASTER_PORT"]) < 60000


def test_every_task_of_a_multi_node_job_gets_its_own_rank_and_one_rendezvous():
    class FakeJobEnv:  # what submitit.JobEnvironment reports in task `rank` of a 2-node, 8-GPU job
        def __init__(self, rank):
            self.global_rank, self.local_rank, self.node = rank, rank % 8, rank // 8
            self.num_tasks, self.num_nodes, self.job_id = 16, 2, "9001"
            self.hostnames = ["node-a", "node-b"]

    envs = [submit.PretrainJob(["python"]).environment(FakeJobEnv(r)) for r in range(16)]
    assert sorted(int(e["RANK"]) for e in envs) == list(range(16))
    assert [e["LOCAL_RANK"] for e in envs] == [str(r % 8) for r in range(16)]
    assert {(e["MASTER_ADDR"], e["MASTER_PORT"], e["WORLD_SIZE"]) for e in envs} == {
        ("node-a", str(childjob.master_port("9001")), "16")}
    assert childjob.master_port("9001") != childjob.master_port("9002")  # two jobs on a node: other ports


def test_dry_run_prints_the_job(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--dry-run", "--nodes", "2", "--gpus-per-node", "8", "--partition", "gpu", "--timeout-min", "720",
            "--slurm-arg", "constraint=h100", "--",
            "--config", "configs/pretrain/fastsiam_r50_in1k_25ep.yaml",
            "--data", "/data/imagenet/train", "--output-dir", str(out), "workers=8"]
    assert submit.main(args) == 0
    res, cmd, output = capsys.readouterr().out.strip().splitlines()
    assert res == ("resources: nodes=2 gpus_per_node=8 tasks_per_node=8 cpus_per_task=10 mem=327680M "
                   "timeout_min=720 partition=gpu constraint=h100")  # 4 GB per CPU: 8 ranks x 10
    assert cmd.split()[2:4] == ["-m", "pretrain"] and cmd.split("  (")[0].endswith(f"{out} workers=8")
    assert output.split()[1] == str(out.resolve()) and str(out.resolve() / "submitit") in output
    assert not out.exists()


@pytest.mark.parametrize("args, message", [
    (["--dry-run", "--config", "c.yaml"], "after --"),
    (["--dry-run", "--", "--config", "c.yaml"], "need --output-dir"),
    (["--", "--output-dir", "OUT"], "srun is not on PATH"),
    (["--launcher", "submitit-local", "--nodes", "2", "--", "--output-dir", "OUT"], "this machine only"),
], ids=["no-separator", "no-output-dir", "no-slurm", "local-multi-node"])
def test_bad_input_exits_2(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun
    monkeypatch.chdir(tmp_path)
    assert submit.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "OUT").exists()


def _pretrain_child(out: Path) -> tuple[int, int] | None:
    """(pid, parent pid) of the running `python -m pretrain ... --output-dir OUT`; the parent is the submitit
    task."""
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            if b"pretrain" in argv and str(out).encode() in argv:
                return int(proc.name), int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return None


def _iterations(out: Path) -> list[int]:
    """Iterations logged so far; a line still being appended (no newline yet) is not counted."""
    log = out / "log.jsonl"
    lines = log.read_text().split("\n")[:-1] if log.exists() else []
    return [json.loads(line)["iteration"] for line in lines]


@pytest.mark.slow  # two tiny runs and submitit's processes: ~15 s on 2 idle cores
def test_preempted_job_is_requeued_and_resumes_exactly(image_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    # 16 images / batch 4: 8 iterations, every one logged
    out = tmp_path / "out"
    result = {}
    args = ["--launcher", "submitit-local", "--gpus-per-node", "0", "--timeout-min", "10", "--",
            "--data", str(image_dir), "--output-dir", str(out), *TINY, "epochs=2"]
    thread = threading.Thread(target=lambda: result.setdefault("rc", submit.main(args)))
    thread.start()
    deadline = time.time() + 180
    while len(_iterations(out)) < 2 and thread.is_alive() and time.time() < deadline:
        time.sleep(0.02)
    child = _pretrain_child(out)
    assert child is not None and len(_iterations(out)) < 8, "the run ended before it could be preempted"
    # Slurm's time-limit or preemption signal to the submitit task (Slurm signals the trainer too: ignored)
    os.kill(child[0], signal.SIGUSR2)
    os.kill(child[1], signal.SIGUSR2)
    thread.join(timeout=240)
    assert not thread.is_alive() and result["rc"] == 0
    job_log = "".join(p.read_text() for p in (out / "submitit").glob("*_log.*"))
    assert "stopped at iteration" in job_log and "Requeued job" in job_log and "resuming from" in job_log
    assert _iterations(out) == list(range(1, 9))  # each iteration exactly once: resumed where it stopped
    reference = tmp_path / "reference"
    r = run_pretrain(image_dir, reference, "epochs=2")  # TINY too
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["stopped"] for r in rows if "stopped" in r] == ["SIGTERM"]  # the task stopped it cleanly, once
    losses = [r["loss"] for r in rows]
    ref = [json.loads(line)["loss"] for line in (reference / "log.jsonl").read_text().splitlines()]
    assert losses == ref  # bit-identical on CPU with a fixed seed, as an uninterrupted run


def _fake_slurm(tmp_path: Path, monkeypatch, **scripts: str) -> None:
    """Slurm's client commands as shell scripts on PATH (srun only has to exist)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in {"srun": "exit 0", **scripts}.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{text}\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")


# sinfo on a GPU cluster: a default partition of two kinds of machines, a small debug partition
FAKE_SINFO = """printf 'gpu*|64|515000|gpu:a100:4(S:0-1)|2-00:00:00|6\\n'
printf 'gpu*|128|1031000|gpu:a100:8(S:0-1)|2-00:00:00|2\\n'
printf 'debug|8|64000|(null)|30:00|1\\n'"""


@pytest.mark.parametrize("args, message", [
    (["--gpus-per-node", "8", "--nodes", "3"], "submitted"),
    (["--gpus-per-node", "8", "--cpus-per-task", "17"], "8 task(s) x 17 CPUs = 136 CPUs per machine"),
    (["--gpus-per-node", "8", "--timeout-min", "2881"], "partition gpu's time limit is 2880 min"),
    (["--gpus-per-node", "8", "--mem-per-gpu", "200G"], "1638400 MB of memory per machine"),
    (["--partition", "debug", "--gpus-per-node", "1", "--cpus-per-task", "4"],
     "partition debug's machines have no GPUs"),
    (["--partition", "debug", "--gpus-per-node", "0", "--cpus-per-task", "4", "--timeout-min", "31"],
     "time limit is 30 min"),
    (["--partition", "gpus", "--gpus-per-node", "8"], "partition 'gpus' does not exist (sinfo lists: debug,"),
    (["--gpus-per-node", "8", "--mem", "lots"], "--mem: bad memory size 'lots'"),
], ids=["fits", "cpus", "time", "mem", "no-gres", "short-partition", "typo", "bad-mem"])
def test_request_checked_against_the_partition_before_submission(tmp_path, monkeypatch, capsys, args,
                                                                   message):
    """A request sbatch would accept but no machine can ever run is refused before anything is written; one
    that fits goes on to sbatch (here a stand-in that records the script)."""
    sbatch = 'cp "$1" "$(dirname "$0")/job.sh"; echo "Submitted batch job 77"'
    _fake_slurm(tmp_path, monkeypatch, sinfo=FAKE_SINFO, sbatch=sbatch,
                squeue="echo 'slurm_load_jobs error: Invalid job id specified' >&2; exit 1")
    out = tmp_path / "run"
    rc = submit.main([*args, "--", "--data", "D", "--output-dir", str(out)])
    cap = capsys.readouterr()
    if message == "submitted":  # 3 machines: the partition has 8 (its largest have 8 GPUs)
        assert rc == 0 and cap.out.startswith("submitted job 77: nodes=3 gpus_per_node=8 tasks_per_node=8 "
                                              "cpus_per_task=10 mem=327680M")
        script = (tmp_path / "bin/job.sh").read_text()
        assert "#SBATCH --mem=327680M" in script and "export SLURM_EXPORT_ENV=ALL" in script
        assert json.loads((out / "submitit/job.json").read_text())["job_id"] == "77"
        return
    assert rc == 2 and cap.err.startswith("error: ") and message in cap.err, cap.err
    assert len(cap.err.strip().splitlines()) == 1 and not out.exists()


def test_a_controller_that_does_not_answer_blocks_submission(tmp_path, monkeypatch, capsys):
    """squeue failing is no evidence that the job ended: the folder's job is 'unknown', nothing is submitted,
    and the message says why rather than advising to delete the record."""
    _fake_slurm(tmp_path, monkeypatch, sinfo=FAKE_SINFO, sbatch="echo 'Submitted batch job 78'",
                squeue="echo 'slurm_load_jobs error: Unable to contact slurm controller' >&2; exit 1")
    out = tmp_path / "run"
    (out / "submitit").mkdir(parents=True)
    (out / "submitit/job.json").write_text(json.dumps({"job_id": "41", "launcher": "slurm"}))
    rc = submit.main(["--gpus-per-node", "8", "--", "--data", "D", "--output-dir", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "job 41 is already unknown (squeue did not answer: is slurmctld up?" in err and "remove" not in err
    assert json.loads((out / "submitit/job.json").read_text())["job_id"] == "41"
