"""python -m pretrain.submit against the real daemons of the CI Slurm cluster (tools/ci/slurm_up.sh:
partitions `cpu` and `high` on one node, no accounting): two CPU ranks with gloo, a `scontrol requeue` and a
real preemption mid-run that resume exactly with no second job on the folder, refused requests, and the states
Slurm reports without accounting. Each job is a tiny 12-iteration run."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from pretrain import jobstate, submit
from tests.pretrain.conftest import TINY
from tests.slurm_cluster import cancel_jobs_under, jobs_named, slurm_state, start_now, wait_ended, wait_for

pytestmark = pytest.mark.slurm
RUN = [*TINY, "epochs=3"]  # 16 images / batch 4: 12 iterations, every one logged
ITERATIONS = 12
TWO_RANKS = ["--gpus-per-node", "0", "--ntasks-per-node", "2", "--cpus-per-task", "1", "--mem", "2G",
             "--timeout-min", "10", "--partition", "cpu"]  # both ranks fill the 2-CPU CI node


@pytest.fixture(autouse=True)
def no_jobs_left(tmp_path):
    yield
    cancel_jobs_under(tmp_path)


def _submit(capsys, image_dir: Path, out: Path, *extra: str) -> tuple[int, str, str]:
    rc = submit.main([*TWO_RANKS, *extra, "--", "--data", str(image_dir), "--output-dir", str(out), *RUN])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _job_id(stdout: str) -> str:
    assert stdout.startswith("submitted job "), stdout
    return stdout.split()[2].rstrip(":")


def _rows(out: Path) -> list[dict]:
    log = out / "log.jsonl"
    return [json.loads(line) for line in log.read_text().split("\n")[:-1]] if log.exists() else []


def _status(capsys, out: Path) -> str:
    assert submit.main(["--status", "--", "--output-dir", str(out)]) == 0
    return capsys.readouterr().out.strip()


@pytest.fixture(scope="module")
def reference(image_dir, module_tmp) -> list[float]:
    """An uninterrupted two-rank run submitted under SBATCH_EXPORT=NONE (a site default at some centres: the
    job must carry its own environment); its losses."""
    out = module_tmp("slurm") / "reference"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SBATCH_EXPORT", "NONE")
        mp.setenv("OMP_NUM_THREADS", "1")
        rc = submit.main([*TWO_RANKS, "--", "--data", str(image_dir), "--output-dir", str(out), *RUN])
        assert rc == 0
        job_id = json.loads((out / "submitit/job.json").read_text())["job_id"]
        assert wait_ended(job_id) == "COMPLETED"
    logs = {p.name: p.read_text() for p in (out / "submitit").glob(f"{job_id}_*_log.out")}
    assert len(logs) == 2 and "2 per process x 2 processes = 4 global" in logs[f"{job_id}_0_log.out"], logs
    rows = _rows(out)
    assert [r["iteration"] for r in rows] == list(range(1, ITERATIONS + 1))
    return [r["loss"] for r in rows]


def _interrupted(capsys, image_dir, out, monkeypatch, interrupt) -> tuple[str, list[str]]:
    """Submit, let it run 2 iterations, interrupt(job_id); check that the folder's job is reported queued and
    is not submitted twice while Slurm holds it; let it run again and end. Returns (job id, status lines)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    rc, stdout, err = _submit(capsys, image_dir, out)
    assert rc == 0, err
    job_id = _job_id(stdout)
    wait_for(lambda: len(_rows(out)) >= 2, "two iterations")
    assert len(_rows(out)) < ITERATIONS - 2, "the run ended before it could be interrupted"
    interrupt(job_id)
    # the job stops (SIGTERM: checkpoint after the running iteration) and Slurm holds it, pending again
    wait_for(lambda: any("stopped" in r for r in _rows(out)), "the checkpoint of the stopped run", 60)
    wait_for(lambda: slurm_state(job_id) == "PENDING", "the requeued job", 120)
    seen = [_status(capsys, out)]
    rc, stdout, err = _submit(capsys, image_dir, out)  # rerun while Slurm holds it: nothing submitted
    assert rc == 2 and stdout == "" and f"job {job_id} is already queued" in err, err
    assert len(err.strip().splitlines()) == 1
    assert jobs_named(f"pretrain:{out.name}") == [job_id]  # one job on the folder, the first
    assert json.loads((out / "submitit/job.json").read_text())["job_id"] == job_id
    start_now(job_id)
    assert wait_ended(job_id) == "COMPLETED"
    seen.append(_status(capsys, out))
    return job_id, seen


def _check_resumed_exactly(out: Path, reference: list[float]) -> None:
    rows = _rows(out)
    assert [r["stopped"] for r in rows if "stopped" in r] == ["SIGTERM"]  # stopped once, cleanly
    assert [r["iteration"] for r in rows] == list(range(1, ITERATIONS + 1))  # each iteration exactly once
    assert [r["loss"] for r in rows] == reference  # bit-identical to the uninterrupted run


def test_scontrol_requeue_mid_run_resumes_exactly_without_a_second_job(reference, image_dir, tmp_path,
                                                                       monkeypatch, capsys):
    out = tmp_path / "requeued"
    job_id, seen = _interrupted(capsys, image_dir, out, monkeypatch,
                                lambda j: subprocess.run(["scontrol", "requeue", j], check=True, timeout=30))
    assert seen[0].startswith(f"queued {out}  job {job_id}: pending")
    assert seen[1] == f"finished {out}  job {job_id}"
    _check_resumed_exactly(out, reference)


def test_cancelled_mid_run_reads_failed_and_a_rerun_resumes_exactly(reference, image_dir, tmp_path,
                                                                    monkeypatch, capsys):
    """scancel: SIGTERM, checkpoint, the job ends CANCELLED (not 'finished', though the trainer exited 0):
    Slurm no longer holds it, so the same command submits a new job, which resumes where it stopped."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "cancelled"
    rc, stdout, err = _submit(capsys, image_dir, out)
    assert rc == 0, err
    first = _job_id(stdout)
    wait_for(lambda: len(_rows(out)) >= 2, "two iterations")
    assert len(_rows(out)) < ITERATIONS - 2, "the run ended before it could be cancelled"
    subprocess.run(["scancel", first], check=True, timeout=30)
    assert wait_ended(first) == "CANCELLED"
    line = _status(capsys, out)
    assert line.startswith(f"failed {out}  job {first}: CANCELLED: "), line
    rc, stdout, err = _submit(capsys, image_dir, out)
    assert rc == 0, err
    second = _job_id(stdout)
    assert second != first and wait_ended(second) == "COMPLETED"
    assert json.loads((out / "submitit/job.json").read_text())["previous_jobs"] == [first]
    assert _status(capsys, out) == f"finished {out}  job {second}"
    _check_resumed_exactly(out, reference)


def test_preemption_by_the_high_partition_resumes_exactly(reference, image_dir, tmp_path, monkeypatch,
                                                           capsys):
    out = tmp_path / "preempted"
    high = []

    def preempt(job_id: str) -> None:  # a job of the higher-priority partition needs the whole node
        r = subprocess.run(["sbatch", "--parsable", "--partition=high", "--cpus-per-task=2", "--mem=1G",
                            f"--output={tmp_path / 'high.log'}", "--wrap=sleep 2"],
                           capture_output=True, text=True, check=True, timeout=30)
        high.append(r.stdout.strip())

    job_id, seen = _interrupted(capsys, image_dir, out, monkeypatch, preempt)
    assert wait_ended(high[0]) == "COMPLETED"
    assert seen[0].startswith(f"queued {out}  job {job_id}: pending") and seen[1].startswith("finished")
    _check_resumed_exactly(out, reference)


@pytest.mark.parametrize("extra, rc, message", [
    (["--cpus-per-task", "10"], 2, "2 task(s) x 10 CPUs = 20 CPUs per machine, but partition cpu's machines"),
    (["--partition", "nope"], 2, "partition 'nope' does not exist (sinfo lists: cpu, high)"),
    (["--gpus-per-node", "1", "--ntasks-per-node", "1"], 2, "no GPUs (no gpu GRES)"),
    (["--timeout-min", "100"], 2, "partition cpu's time limit is 60 min"),
    (["--mem", "4T"], 2, "MB of memory per machine, but partition cpu's machines have"),
    (["--slurm-arg", "constraint=nosuchfeature"], 1, "sbatch refused the job: sbatch: error:"),
], ids=["cpus", "partition", "gpus", "time", "mem", "sbatch-refuses"])
def test_a_request_that_cannot_start_is_refused_in_one_line(image_dir, tmp_path, capsys, extra, rc, message):
    out = tmp_path / "runs" / "refused"
    got, stdout, err = _submit(capsys, image_dir, out, *extra)
    assert got == rc and stdout == ""
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "runs").exists()  # no folder, pickle or sbatch script left behind


def test_without_accounting_a_job_slurm_forgot_is_not_unknown(tmp_path, monkeypatch, capsys):
    """No accounting (the CI cluster's set-up): a job that left squeue long ago is judged by its files, not
    reported 'unknown' for ever; the tools say so once."""
    monkeypatch.setattr(jobstate, "_noted_no_accounting", False)
    folders = []
    for name, job_id in (("a", "987654"), ("b", "987655")):
        folder = tmp_path / name / "submitit"
        folder.mkdir(parents=True)
        (folder / "job.json").write_text(json.dumps({"job_id": job_id, "launcher": "slurm"}))
        folders.append(folder)
    (folders[1] / "987655_0_log.err").write_text("epoch 3/3: loss 0.1\n")
    first, second = jobstate.job_statuses(folders)
    err = capsys.readouterr().err
    assert first.state == second.state == "failed" and not first.active
    assert "Slurm no longer lists it and it left no result" in first.detail
    assert second.detail.endswith(f"epoch 3/3: loss 0.1  [log: {folders[1] / '987655_0_log.err'}]")
    assert err.count("\n") == 1 and "no Slurm accounting here" in err and "history is unavailable" in err
    jobstate.job_statuses(folders)
    assert capsys.readouterr().err == ""  # once per process
