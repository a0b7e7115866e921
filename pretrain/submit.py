"""Pretraining on a Slurm cluster through submitit: the same engine, one task per GPU, requeued on preemption.

    python -m pretrain.submit --nodes 2 --gpus-per-node 8 --partition gpu --timeout-min 1440 -- \\
        --config configs/pretrain/simsiam_r50_in1k_100ep.yaml --data /data/imagenet/train \\
        --output-dir /shared/runs/simsiam_r50_in1k_100ep
    python -m pretrain.submit --dry-run --nodes 2 --gpus-per-node 8 -- ...   # print the job, submit nothing
    python -m pretrain.submit --launcher submitit-local --gpus-per-node 0 -- ...  # the same job, here

Everything after `--` is the usual `python -m pretrain` command line. Each Slurm task (one per GPU) runs it as
a child process with the variables torchrun would set (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT;
read by pretrain/distributed.py), taken from the job's environment (submitit.JobEnvironment). When Slurm
announces the time limit or a preemption (USR2, submitit's signal), rank 0's task sends SIGTERM to its child,
whose engine writes checkpoint.pth after the running iteration (the ranks agree on stopping at every step, so
all stop together); submitit then requeues the job, and the requeued job resumes from checkpoint.pth exactly
as rerunning the same command does. The output dir must be on a filesystem every node sees; the job's records
(sbatch script, pickles, one log per task) go to OUTPUT_DIR/submitit/. The launcher `submitit-local` runs the
same job through submitit's LocalExecutor (one node, no Slurm) and waits for it.

The generic parts (resources, executor, child-process job, job records) are shared with tools/launch/slurm.py,
which submits the detectron2 transfer cells the same way.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAUNCHERS = ("slurm", "submitit-local")
MAX_TIMEOUTS = 20  # requeues after hitting the time limit (preemptions are not counted by submitit)
STOP_WAIT_S = 60  # time the child gets to write its checkpoint; submitit's signal comes 90 s before the kill
RECORD = "job.json"


class UsageError(Exception):
    """A bad command line; main() prints it as one line and exits 2."""


# ---------------------------------------------------------------- resources and executor
@dataclass
class Resources:
    nodes: int = 1
    gpus_per_node: int = 8
    tasks_per_node: int = 1
    cpus_per_task: int | None = None
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
    ap.add_argument("--timeout-min", type=int, default=1440,
                    help="time limit per job in minutes; a job that reaches it is requeued (default: 1440)")
    ap.add_argument("--partition", help="Slurm partition")
    ap.add_argument("--account", help="Slurm account")
    ap.add_argument("--qos", help="Slurm quality of service")
    ap.add_argument("--slurm-arg", action="append", default=[], metavar="KEY=VALUE",
                    help="any other sbatch option, repeatable: --slurm-arg constraint=a100 --slurm-arg mem=0")


def resources_from_args(args, tasks_per_node: int, cpus_per_task: int) -> Resources:
    """Resources from add_resource_arguments' options (args.launcher and args.dry_run are checked too)."""
    if args.launcher == "slurm" and not args.dry_run and shutil.which("srun") is None:
        raise UsageError("Slurm's srun is not on PATH: submit from a Slurm login node, or use --dry-run or "
                         "--launcher submitit-local")
    if args.nodes < 1 or args.gpus_per_node < 0 or args.timeout_min < 1:
        raise UsageError("--nodes and --timeout-min must be at least 1, --gpus-per-node at least 0")
    if args.launcher == "submitit-local" and args.nodes > 1:
        raise UsageError("--launcher submitit-local runs on this machine only: use --nodes 1")
    extra = {}
    for pair in args.slurm_arg:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"bad --slurm-arg {pair!r}: expected KEY=VALUE (an sbatch option, no --)")
        extra[key.strip().lstrip("-")] = value
    return Resources(args.nodes, args.gpus_per_node, tasks_per_node,
                     args.cpus_per_task if args.cpus_per_task is not None else cpus_per_task,
                     args.timeout_min, args.partition, args.account, args.qos, extra)


def make_executor(launcher: str, folder: Path, res: Resources, name: str):
    """submitit's AutoExecutor on Slurm or its LocalExecutor: one submission path, two back ends."""
    import submitit

    cluster = "slurm" if launcher == "slurm" else "local"
    ex = submitit.AutoExecutor(folder=folder, cluster=cluster, slurm_max_num_timeout=MAX_TIMEOUTS,
                               local_max_num_timeout=MAX_TIMEOUTS)
    # the job unpickles this package's classes: put this checkout first on the path, wherever sbatch starts
    setup = [f"export PYTHONPATH={shlex.quote(str(REPO))}${{PYTHONPATH:+:$PYTHONPATH}}"]
    ex.update_parameters(
        name=name, nodes=res.nodes, tasks_per_node=res.tasks_per_node, gpus_per_node=res.gpus_per_node,
        cpus_per_task=res.cpus_per_task, timeout_min=res.timeout_min, slurm_partition=res.partition,
        slurm_account=res.account, slurm_qos=res.qos, slurm_additional_parameters=dict(res.slurm_args),
        slurm_setup=setup, local_setup=setup)
    return ex


# ---------------------------------------------------------------- the job: a child process under submitit
def master_port(job_id: str) -> int:
    """A port every task of a job derives alike from the job id (as submitit's TorchDistributedEnvironment
    does, with crc32 instead of Python's random), so concurrent jobs on one node rarely collide."""
    return 20000 + zlib.crc32(str(job_id).encode()) % 40000


def torch_env(job_env) -> dict[str, str]:
    """The variables torchrun sets for one process, from a submitit JobEnvironment (one task per GPU): global
    rank = Slurm's task id, local rank = its index on the node, rendezvous on the job's first node."""
    return {"RANK": str(job_env.global_rank), "LOCAL_RANK": str(job_env.local_rank),
            "WORLD_SIZE": str(job_env.num_tasks),
            "LOCAL_WORLD_SIZE": str(job_env.num_tasks // job_env.num_nodes),
            "MASTER_ADDR": job_env.hostnames[0], "MASTER_PORT": str(master_port(job_env.job_id))}


def _ignore_preemption_signal() -> None:
    """In the child before exec: Slurm signals every process of the job step; only the submitit task must
    act on it (by stopping its child cleanly), not the child itself, whose default action is to die."""
    import submitit

    signal.signal(getattr(signal, "SIG" + submitit.JobEnvironment.USR_SIG), signal.SIG_IGN)


class ChildJob:
    """A submitit callable that runs a command as a child process and is requeued when Slurm stops the job.

    submitit calls checkpoint() on global rank 0 when the time limit or a preemption is announced; it returns
    the job to requeue. Subclasses choose the command and environment per task (command(), environment()) and
    what counts as done (check_done())."""

    def __init__(self, cmd: list[str], env: dict[str, str] | None = None):
        self.cmd, self.env = list(cmd), dict(env or {})
        self._proc: subprocess.Popen | None = None

    def command(self, job_env) -> list[str]:
        return self.cmd

    def environment(self, job_env) -> dict[str, str]:
        return {}

    def check_done(self, job_env) -> None:
        """Raise if the child exited 0 without finishing its work."""

    def __call__(self) -> int:
        import submitit

        job_env = submitit.JobEnvironment()
        cmd = self.command(job_env)
        env = {**os.environ, **self.env, **self.environment(job_env)}
        print(f"{job_env}: {shlex.join(cmd)}", flush=True)
        self._proc = subprocess.Popen(cmd, env=env, preexec_fn=_ignore_preemption_signal)
        try:
            # poll, not wait(): a blocking Popen.wait() holds a lock that the signal handler's own wait would
            # need, and submitit calls checkpoint() from the handler while this loop runs
            while (rc := self._proc.poll()) is None:
                time.sleep(0.5)
        finally:  # SIGINT/SystemExit in this task must not leave the training running on its own
            self._stop_child()
        self._proc = None
        if rc != 0:
            raise RuntimeError(f"exit status {rc}: {shlex.join(cmd)}")
        self.check_done(job_env)
        return rc

    def _stop_child(self) -> None:
        """SIGTERM, then wait: the pretraining engine writes a checkpoint after the running iteration, exits.
        os.waitpid directly, as this may run inside a signal handler that interrupted Popen.poll()."""
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        for sig, wait_s in ((signal.SIGTERM, STOP_WAIT_S), (signal.SIGKILL, 10)):
            try:
                os.kill(proc.pid, sig)
                deadline = time.monotonic() + wait_s
                while time.monotonic() < deadline:
                    pid, status = os.waitpid(proc.pid, os.WNOHANG)
                    if pid == proc.pid:  # reaped here: record it, so no later call signals a reused pid
                        proc.returncode = os.waitstatus_to_exitcode(status)
                        return
                    time.sleep(0.1)
            except (ProcessLookupError, ChildProcessError):  # already gone, or reaped by the interrupted poll
                return

    def checkpoint(self):
        import submitit

        print("time limit or preemption: stopping the child, then requeueing", flush=True)
        self._stop_child()
        return submitit.helpers.DelayedSubmission(self)  # command() is rebuilt when the requeued job starts

    def __getstate__(self):
        return {**self.__dict__, "_proc": None}  # a running process does not pickle


class PretrainJob(ChildJob):
    """`python -m pretrain ARGS` as rank RANK of WORLD_SIZE; it resumes from OUTPUT_DIR/checkpoint.pth."""

    def environment(self, job_env) -> dict[str, str]:
        return torch_env(job_env)


# ---------------------------------------------------------------- job records
@dataclass
class JobStatus:
    state: str  # none | queued | running | finished | failed | unknown
    job_id: str = ""
    detail: str = ""  # for failures: the last line of the job's log

    @property
    def active(self) -> bool:
        return self.state in ("queued", "running", "unknown")


def write_record(folder: Path, job, launcher: str, cmd: list[str], res: Resources) -> None:
    record = {"job_id": str(job.job_id), "launcher": launcher, "command": cmd, "resources": asdict(res),
              "submitted": datetime.datetime.now().isoformat(timespec="seconds")}
    tmp = folder / (RECORD + ".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, folder / RECORD)  # a cut-off write never leaves a record that reads as "no job"


_QUEUED = ("PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "SUSPENDED", "RESIZING")
_RUNNING = ("RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING")


def _log_tail(job) -> str:
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


def job_statuses(folders: list[Path]) -> list[JobStatus]:
    """The state of the last job submitted from each folder, from its record, submitit's files and, for Slurm
    jobs, one sacct call for all of them."""
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
    if any(j is not None and j[0] for j in jobs):
        submitit.SlurmJob.watcher.update()  # sacct for every registered job at once, then read from its cache
    return [JobStatus("none") if j is None else _status(*j) for j in jobs]


def job_status(folder: Path) -> JobStatus:
    return job_statuses([folder])[0]


def _status(slurm: bool, job) -> JobStatus:
    job_id = job.job_id
    if job.paths.result_pickle.exists():
        error = job.exception()
        return JobStatus("finished", job_id) if error is None else JobStatus("failed", job_id, _log_tail(job))
    if not slurm:
        alive = _local_alive(job_id)
        return JobStatus("running", job_id) if alive else JobStatus("failed", job_id, _log_tail(job))
    state = (job.get_info(mode="cache").get("State") or "UNKNOWN").upper()
    if state.startswith(_QUEUED):
        return JobStatus("queued", job_id)
    if state.startswith(_RUNNING):
        return JobStatus("running", job_id)
    if state == "UNKNOWN":
        record = job.paths.folder / RECORD
        return JobStatus("unknown", job_id, f"sacct did not answer; remove {record} to submit again")
    return JobStatus("failed", job_id, f"{state}: {_log_tail(job)}")


# ---------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    sep = argv.index("--") if "--" in argv else len(argv)
    pretrain_args = argv[sep + 1:]
    ap = argparse.ArgumentParser(prog="python -m pretrain.submit", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--launcher", choices=LAUNCHERS, default="slurm",
                    help="slurm (default), or submitit-local: the same job through submitit's LocalExecutor")
    ap.add_argument("--dry-run", action="store_true", help="print what would be submitted; submit nothing")
    add_resource_arguments(ap, "CPUs per task, i.e. per GPU, for the data-loader workers (default: 10)")
    args, unknown = ap.parse_known_args(argv[:sep])  # before the check below, so that --help works
    if unknown and sep < len(argv):
        ap.error(f"unrecognized arguments: {' '.join(unknown)}")
    if sep == len(argv):
        print("error: give the pretraining arguments after --, e.g. -- --config C --data D --output-dir O",
              file=sys.stderr)
        return 2
    out = argparse.ArgumentParser(add_help=False)
    out.add_argument("--output-dir")
    known, _ = out.parse_known_args(pretrain_args)
    try:
        if not known.output_dir:
            raise UsageError("the pretraining arguments need --output-dir (a folder every node can reach)")
        res = resources_from_args(args, tasks_per_node=max(args.gpus_per_node, 1), cpus_per_task=10)
        folder = Path(known.output_dir).resolve() / "submitit"
        cmd = [sys.executable, "-m", "pretrain", *pretrain_args]
        if args.dry_run:
            print(f"resources: {res.describe()}\n"
                  f"command:   {shlex.join(cmd)}  (one per task, RANK from Slurm)\n"
                  f"output:    {Path(known.output_dir).resolve()}  (job records: {folder})")
            return 0
        status = job_status(folder)
        if status.active:
            raise UsageError(f"job {status.job_id} is already {status.state} for {known.output_dir}")
        folder.mkdir(parents=True, exist_ok=True)
        ex = make_executor(args.launcher, folder, res, name=f"pretrain:{Path(known.output_dir).name}")
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    job = ex.submit(PretrainJob(cmd))
    write_record(folder, job, args.launcher, cmd, res)
    print(f"submitted job {job.job_id}: {res.describe()}; logs in {folder}", flush=True)
    if args.launcher == "slurm":
        return 0
    job.wait()  # submitit-local: this machine runs it; wait, as a local run would
    error = job.exception()
    if error is not None:
        print(f"job {job.job_id} failed: {_log_tail(job)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    # through the package, so that the job pickles as pretrain.submit.PretrainJob, not __main__.PretrainJob
    from pretrain import submit

    sys.exit(submit.main())
