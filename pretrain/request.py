"""A job's resources, its submitit executor, and the submission itself: one job per output folder at a time.

Shared by pretrain/submit.py (pretraining) and tools/launch/slurm.py (transfer cells). A request is checked
against its partition before anything is written (pretrain/partition.py); the job carries the environment it
needs in its sbatch script, so sites that set SBATCH_EXPORT=NONE work; and a folder whose last job Slurm still
holds is never given a second one (pretrain/jobstate.py), under a lock, so two submissions racing on one
folder cannot both pass the check.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import io
import os
import shlex
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pretrain import partition
from pretrain.jobstate import JobStatus, job_status, write_record

REPO = Path(__file__).resolve().parents[1]
MAX_TIMEOUTS = 20  # requeues after hitting the time limit (preemptions are not counted by submitit)
# what a job needs from the submitting shell, written into its sbatch script (SBATCH_EXPORT=NONE drops it)
FORWARDED = ("PATH", "DETECTRON2_DATASETS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "TORCH_HOME", "HOME")
FORWARDED_PREFIX = "FASTSIAM_"
MEM_KEYS = ("mem", "mem-per-gpu", "mem-per-cpu")


class UsageError(Exception):
    """A bad command line or a request that can never start; the CLIs print it as one line and exit 2."""


class SubmitError(Exception):
    """sbatch refused the job (one line); nothing of the attempt is left in the output folder."""


class ActiveJob(Exception):
    """Slurm still holds the folder's last job (or could not say): nothing was submitted."""

    def __init__(self, status: JobStatus):
        super().__init__(f"job {status.job_id} is already {status.state}"
                         + (f" ({status.detail})" if status.detail else ""))
        self.status = status


@dataclass
class Resources:
    nodes: int = 1
    gpus_per_node: int = 8
    tasks_per_node: int = 1
    cpus_per_task: int | None = None
    mem: str | None = None  # per machine, sbatch syntax (16G); None with mem_per_gpu or a --slurm-arg mem
    mem_per_gpu: str | None = None
    timeout_min: int = 1440
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    slurm_args: dict = field(default_factory=dict)  # free sbatch options, KEY=VALUE -> #SBATCH --KEY=VALUE

    def describe(self) -> str:
        parts = [f"{k}={v}" for k, v in asdict(self).items() if k != "slurm_args" and v is not None]
        return " ".join(parts + [f"{k}={v}" for k, v in self.slurm_args.items()])


def add_resource_arguments(ap: argparse.ArgumentParser, cpus_help: str) -> None:
    ap.add_argument("--nodes", type=int, default=1, help="machines per job (default: 1)")
    ap.add_argument("--gpus-per-node", type=int, default=8, help="GPUs per machine (default: 8)")
    ap.add_argument("--cpus-per-task", type=int, help=cpus_help)
    ap.add_argument("--mem", metavar="SIZE", help="memory per machine, e.g. 64G (default: 4G per CPU "
                    "requested, at most what the partition's machines have)")
    ap.add_argument("--mem-per-gpu", metavar="SIZE", help="memory per GPU instead of --mem, e.g. 32G")
    ap.add_argument("--timeout-min", type=int, default=1440,
                    help="time limit per job in minutes; a job that reaches it is requeued (default: 1440)")
    ap.add_argument("--partition", help="Slurm partition (default: the cluster's default partition)")
    ap.add_argument("--account", help="Slurm account")
    ap.add_argument("--qos", help="Slurm quality of service")
    ap.add_argument("--slurm-arg", action="append", default=[], metavar="KEY=VALUE",
                    help="any other sbatch option, repeatable: --slurm-arg constraint=a100 --slurm-arg mem=0")


def resources_from_args(args, tasks_per_node: int, cpus_per_task: int) -> Resources:
    """Resources from add_resource_arguments' options (args.launcher and args.dry_run are checked too). A real
    Slurm submission is checked against its partition here, before any folder is made."""
    if args.launcher == "slurm" and not args.dry_run and shutil.which("srun") is None:
        raise UsageError("Slurm's srun is not on PATH: submit from a Slurm login node, or use --dry-run or "
                         "--launcher submitit-local")
    if args.nodes < 1 or args.gpus_per_node < 0 or args.timeout_min < 1:
        raise UsageError("--nodes and --timeout-min must be at least 1, --gpus-per-node at least 0")
    if args.cpus_per_task is not None and args.cpus_per_task < 1:
        raise UsageError(f"--cpus-per-task must be at least 1, got {args.cpus_per_task}")
    if args.launcher == "submitit-local" and args.nodes > 1:
        raise UsageError("--launcher submitit-local runs on this machine only: use --nodes 1")
    extra = {}
    for pair in args.slurm_arg:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"bad --slurm-arg {pair!r}: expected KEY=VALUE (an sbatch option, no --)")
        extra[key.strip().lstrip("-")] = value
    if args.mem is not None and args.mem_per_gpu is not None:
        raise UsageError("give --mem or --mem-per-gpu, not both")
    if args.mem_per_gpu is not None and args.gpus_per_node == 0:
        raise UsageError("--mem-per-gpu needs GPUs: use --mem for a CPU job")
    for flag, value in (("--mem", args.mem), ("--mem-per-gpu", args.mem_per_gpu)):
        try:
            if value is not None:
                partition.parse_mem_mb(value)
        except ValueError as e:
            raise UsageError(f"{flag}: {e}") from e
    cpus = args.cpus_per_task if args.cpus_per_task is not None else cpus_per_task
    res = Resources(args.nodes, args.gpus_per_node, tasks_per_node, cpus, args.mem, args.mem_per_gpu,
                    args.timeout_min, args.partition, args.account, args.qos, extra)
    own_mem = res.mem is not None or res.mem_per_gpu is not None or any(k in extra for k in MEM_KEYS)
    default_mb = None if own_mem else partition.MEM_PER_CPU_MB * cpus * tasks_per_node
    if args.launcher == "slurm" and not args.dry_run:
        try:
            default_mb = partition.check(res, default_mb)
        except partition.RequestError as e:
            raise UsageError(str(e)) from e
    if default_mb is not None:
        res.mem = f"{default_mb}M"
    return res


def job_setup() -> list[str]:
    """sbatch script lines that give the job this shell's environment explicitly. SLURM_EXPORT_ENV=ALL: under
    SBATCH_EXPORT=NONE, sbatch sets it to NONE in the job, and srun would start the tasks with no environment
    at all (no SUBMITIT_EXECUTOR, no PATH)."""
    # the job unpickles this package's classes: this checkout first on the path, wherever sbatch starts
    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {k: os.environ[k] for k in FORWARDED if k in os.environ}
    env.update({k: v for k, v in os.environ.items() if k.startswith(FORWARDED_PREFIX)})
    env.update(PYTHONPATH=pythonpath, SLURM_EXPORT_ENV="ALL")
    return [f"export {k}={shlex.quote(v)}" for k, v in sorted(env.items())]


def make_executor(launcher: str, folder: Path, res: Resources, name: str):
    """submitit's AutoExecutor on Slurm or its LocalExecutor: one submission path, two back ends. The job's
    Python is this one (submitit runs sys.executable), e.g. the checkout's virtualenv."""
    import submitit

    cluster = "slurm" if launcher == "slurm" else "local"
    ex = submitit.AutoExecutor(folder=folder, cluster=cluster, slurm_max_num_timeout=MAX_TIMEOUTS,
                               local_max_num_timeout=MAX_TIMEOUTS)
    extra = dict(res.slurm_args)
    # as sbatch options, not submitit's mem_gb: sbatch's own syntax (16G, 4000M) reaches sbatch unchanged
    if res.mem is not None:
        extra.setdefault("mem", res.mem)
    if res.mem_per_gpu is not None:
        extra.setdefault("mem-per-gpu", res.mem_per_gpu)
    setup = job_setup()
    ex.update_parameters(
        name=name, nodes=res.nodes, tasks_per_node=res.tasks_per_node, gpus_per_node=res.gpus_per_node,
        cpus_per_task=res.cpus_per_task, timeout_min=res.timeout_min, slurm_partition=res.partition,
        slurm_account=res.account, slurm_qos=res.qos, slurm_additional_parameters=extra,
        slurm_setup=setup, local_setup=setup)
    return ex


def _refusal(error: Exception) -> str:
    """sbatch's own words from submitit's error (which quotes the whole command and its output)."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    said = [ln for ln in lines if ln.startswith("sbatch: error:")]
    return (said or lines or [type(error).__name__])[-1][:300]


def submit_once(folder: Path, launcher: str, res: Resources, name: str, job, record_cmd: list[str]):
    """Submit `job` with its records in `folder`, unless the folder's last job is still held by Slurm
    (ActiveJob). A refused submission raises SubmitError and leaves nothing behind: no folder this call made,
    no pickle or sbatch script of submitit's."""
    from submitit.core.utils import FailedJobError, FailedSubmissionError

    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / ".submit.lock"
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # the check and the submission are one step
        status = job_status(folder)
        if status.active:
            raise ActiveJob(status)
        before = set(folder.iterdir())
        said = io.StringIO()
        try:
            # submitit prints sbatch's stderr itself when sbatch fails: kept for the one line below instead
            with contextlib.redirect_stderr(said):
                sub = make_executor(launcher, folder, res, name).submit(job)
        except (FailedJobError, FailedSubmissionError, OSError) as e:
            for p in set(folder.iterdir()) - before:
                if p.is_file():
                    p.unlink()
            if missing:
                lock.unlink()
                for d in missing:  # innermost first
                    if d.exists() and not any(d.iterdir()):
                        d.rmdir()
            raise SubmitError(f"sbatch refused the job: {_refusal(e)}") from e
        sys.stderr.write(said.getvalue())  # whatever a successful submission had to say
        write_record(folder, sub, launcher, record_cmd, res)
    return sub
