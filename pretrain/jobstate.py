"""What became of the job submitted from a folder: Slurm first, the job's result file last.

A job's record (OUTPUT_DIR/submitit/job.json) names its launcher and job id. For a Slurm job the state comes
from `squeue` while Slurm holds the job (pending, running, requeued, held, or ended within MinJobAge), then
from `sacct` where the cluster keeps accounting, and only then from the result file submitit writes: a job
that Slurm requeues after a preemption or `scontrol requeue` has a result file from its first run (the trainer
was stopped by SIGTERM) while it waits to run again, so that file alone would call it ended and let a second
job onto the same output folder. Without accounting a job that has left the queue is judged by its result
file, and the tools say once that Slurm keeps no history of finished jobs.
"""
from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

RECORD = "job.json"
_QUEUED = ("PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "SUSPENDED", "RESIZING",
           "RESV_DEL_HOLD")
_RUNNING = ("RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING", "STOPPED")
_HELD = ("JobHeldUser", "JobHeldAdmin")
_noted_no_accounting = False  # the "no accounting" line is printed once per process


@dataclass
class JobStatus:
    state: str  # none | queued | running | finished | failed | unknown
    job_id: str = ""
    detail: str = ""  # queued: Slurm's reason; failed: Slurm's state and the last line of the job's log

    @property
    def active(self) -> bool:
        """Slurm may still run it (or could not say): submitting again would put two jobs on one folder."""
        return self.state in ("queued", "running", "unknown")


def write_record(folder: Path, job, launcher: str, cmd: list[str], res) -> None:
    previous = []
    try:  # keep the ids of earlier jobs on this folder: their logs stay in it
        old = json.loads((folder / RECORD).read_text())
        previous = [*old.get("previous_jobs", []), old["job_id"]]
    except (OSError, ValueError, KeyError):
        pass
    record = {"job_id": str(job.job_id), "launcher": launcher, "command": cmd, "resources": asdict(res),
              "submitted": datetime.datetime.now().isoformat(timespec="seconds"), "previous_jobs": previous}
    tmp = folder / (RECORD + ".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, folder / RECORD)  # a cut-off write never leaves a record that reads as "no job"


def log_tail(job) -> str:
    """The last line the work itself wrote: the last log line before the traceback that submitit's wrapper
    prints when the job fails ("RuntimeError: exit status 1: ..." says less than the line above it)."""
    for path in (job.paths.stderr, job.paths.stdout):
        try:
            lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            continue
        tb = max((i for i, ln in enumerate(lines) if ln.startswith("Traceback")), default=len(lines))
        own = [ln for ln in lines[:tb] if not ln.startswith("submitit ")]
        if own or lines:
            return f"{(own or lines)[-1][:200]}  [log: {path}]"
    return f"(no log in {job.paths.folder})"


def _local_alive(pid: str) -> bool:
    try:
        return "submitit" in Path(f"/proc/{int(pid)}/cmdline").read_bytes().decode(errors="replace")
    except (OSError, ValueError):
        return False


def _run(cmd: list[str]) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None


def squeue(ids: list[str]) -> dict[str, tuple[str, str]] | None:
    """{job id: (state, reason)} for the jobs Slurm still knows; None if squeue did not answer."""
    r = _run(["squeue", "--noheader", "--states=all", "--jobs=" + ",".join(ids), "--format=%i|%T|%r"])
    if r is None:
        return None
    if r.returncode != 0:  # every id unknown (purged after MinJobAge) is an error to squeue, not to us
        return {} if "Invalid job id" in r.stderr else None
    rows = (line.split("|") for line in r.stdout.splitlines() if line.count("|") == 2)
    return {i.strip(): (s.strip(), why.strip()) for i, s, why in rows}


def sacct(ids: list[str]) -> dict[str, str] | None:
    """{job id: state} from accounting; None where the cluster keeps none (after one line saying so)."""
    global _noted_no_accounting
    r = _run(["sacct", "--noheader", "--parsable2", "--allocations", "--format=JobID,State",
              *(f"--jobs={i}" for i in ids)])
    if r is None or r.returncode != 0:
        if not _noted_no_accounting:
            why = (r.stderr.strip().splitlines() or ["no answer"])[-1] if r is not None else "not found"
            print(f"note: no Slurm accounting here (sacct: {why}): jobs that left the queue are judged by "
                  "their result files; finished-job history is unavailable", file=sys.stderr, flush=True)
            _noted_no_accounting = True
        return None
    rows = (line.split("|") for line in r.stdout.splitlines() if line.count("|") == 1)
    return {i.strip(): s.split()[0] if s.split() else "UNKNOWN" for i, s in rows}  # "CANCELLED by 0"


def job_statuses(folders: list[Path]) -> list[JobStatus]:
    """The state of the last job submitted from each folder: one squeue call for all Slurm jobs, one sacct
    call for those squeue no longer lists."""
    import submitit

    jobs = []
    for folder in folders:
        try:
            record = json.loads((folder / RECORD).read_text())
        except (OSError, ValueError):
            jobs.append(None)
            continue
        slurm = record["launcher"] == "slurm"
        jobs.append((slurm, (submitit.SlurmJob if slurm else submitit.LocalJob)(folder, record["job_id"])))
    ids = sorted({j.job_id for s, j in filter(None, jobs) if s})
    queue = squeue(ids) if ids else {}
    gone = [i for i in ids if queue is not None and i not in queue]
    history = (sacct(gone) or {}) if gone else {}
    out = []
    for entry in jobs:
        if entry is None:
            out.append(JobStatus("none"))
        elif not entry[0]:
            out.append(_local_status(entry[1]))
        elif queue is None:
            out.append(JobStatus("unknown", entry[1].job_id, "squeue did not answer: is slurmctld up? "
                                 "nothing is submitted for this folder until Slurm answers"))
        else:
            job = entry[1]
            state, reason = queue.get(job.job_id) or (history.get(job.job_id, ""), "")
            out.append(_slurm_status(job, state.upper(), reason))
    return out


def job_status(folder: Path) -> JobStatus:
    return job_statuses([folder])[0]


def _result(job) -> JobStatus | None:
    if not job.paths.result_pickle.exists():
        return None
    if job.exception() is None:
        return JobStatus("finished", job.job_id)
    return JobStatus("failed", job.job_id, log_tail(job))


def _local_status(job) -> JobStatus:
    done = _result(job)
    if done is not None:
        return done
    alive = _local_alive(job.job_id)
    return JobStatus("running", job.job_id) if alive else JobStatus("failed", job.job_id, log_tail(job))


def _slurm_status(job, state: str, reason: str) -> JobStatus:
    job_id = job.job_id
    if state.startswith(_QUEUED):
        held = reason in _HELD or state == "REQUEUE_HOLD"
        what = f"held ({reason}): `scontrol release {job_id}` lets it run" if held else \
            state.lower() + (f" ({reason})" if reason and reason != "None" else "")
        return JobStatus("queued", job_id, what)
    if state.startswith(_RUNNING):
        return JobStatus("running", job_id)
    if state in ("", "COMPLETED"):  # left the queue: the result file says how the work itself ended
        done = _result(job)
        if done is not None:
            return done
        if state == "":
            why = "Slurm no longer lists it and it left no result"
            return JobStatus("failed", job_id, f"{why}: {log_tail(job)}")
    return JobStatus("failed", job_id, f"{state}: {log_tail(job)}")
