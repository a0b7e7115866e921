"""Helpers for the tests marked `slurm` (tests/conftest.py skips them when no cluster is up): what Slurm says
about a job, and waiting on the real daemons with short polls."""
from __future__ import annotations

import subprocess
import time


def slurm_state(job_id: str) -> str:
    """squeue's state of a job ("" once Slurm has forgotten it)."""
    r = subprocess.run(["squeue", "--noheader", "--states=all", f"--jobs={job_id}", "--format=%T"],
                       capture_output=True, text=True, timeout=30)
    return r.stdout.strip()


def jobs_named(name: str) -> list[str]:
    """Ids of the jobs Slurm holds (not ended) under one job name: two would mean a duplicate submission."""
    r = subprocess.run(["squeue", "--noheader", f"--name={name}", "--format=%i"], capture_output=True,
                       text=True, timeout=30)
    return r.stdout.split()


def wait_for(predicate, what: str, timeout: float = 180, every: float = 0.3):
    """Poll until predicate() is true (returned); a loaded 2-core machine may take a while."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def wait_ended(job_id: str, timeout: float = 240) -> str:
    """Wait until Slurm reports the job ended; its final state."""
    ended = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED")
    return wait_for(lambda: (s := slurm_state(job_id)) in ended and s, f"job {job_id} to end", timeout)


def start_now(job_id: str) -> None:
    """A requeued job may start only 120 s later (Slurm sets its BeginTime); an administrator's `scontrol
    update StartTime=now` lets it go at once, which keeps the tests short and changes nothing else."""
    wait_for(lambda: slurm_state(job_id) == "PENDING", f"job {job_id} to be pending again", 120)
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True, timeout=30)


def cancel_jobs_under(folder) -> None:
    """scancel every job whose record lies under `folder`: a failed test must not leave jobs running on the
    CI cluster for the next one."""
    import json
    from pathlib import Path

    ids = []
    for record in Path(folder).rglob("job.json"):
        try:
            ids.append(json.loads(record.read_text())["job_id"])
        except (OSError, ValueError, KeyError):
            continue
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True, timeout=30)
