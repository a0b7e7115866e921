"""Pretraining on a Slurm cluster through submitit: the same engine, one task per GPU, requeued on preemption.

    python -m pretrain.submit --nodes 2 --gpus-per-node 8 --partition gpu --timeout-min 1440 -- \\
        --config configs/pretrain/simsiam_r50_in1k_100ep.yaml --data /data/imagenet/train \\
        --output-dir /shared/runs/simsiam_r50_in1k_100ep
    python -m pretrain.submit --dry-run --nodes 2 --gpus-per-node 8 -- ...   # print the job, submit nothing
    python -m pretrain.submit --status -- ... --output-dir OUT               # the state of OUT's last job
    python -m pretrain.submit --gpus-per-node 0 --ntasks-per-node 4 --cpus-per-task 8 -- ...  # 4 CPU ranks
    python -m pretrain.submit --launcher submitit-local --gpus-per-node 0 -- ...  # the same job, here

Everything after `--` is the usual `python -m pretrain` command line. Each Slurm task (one per GPU, or
--ntasks-per-node CPU ranks with gloo) runs it as a child process with the variables torchrun would set (RANK,
LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT; read by pretrain/distributed.py), taken from the job's
environment (submitit.JobEnvironment). When Slurm announces the time limit (USR2, submitit's signal, 90 s
ahead), rank 0's task sends SIGTERM to its child, whose engine writes checkpoint.pth after the running
iteration (the ranks agree on stopping at every step, so all stop together); submitit then requeues the job.
A preemption or `scontrol requeue` sends SIGTERM to every process at once and kills them KillWait later (30 s
by default): the engine writes its checkpoint in that window and Slurm requeues the job itself. Either way the
requeued job resumes from checkpoint.pth exactly, as rerunning the same command does; while Slurm holds the
job (pending, running, requeued, held), rerunning submits nothing (pretrain/jobstate.py). The output dir must
be on a filesystem every node sees; the job's records (sbatch script, pickles, one log per task) go to
OUTPUT_DIR/submitit/. The launcher `submitit-local` runs the same job through submitit's LocalExecutor (one
node, no Slurm) and waits for it.

The generic parts (resources, executor, submission: pretrain/request.py; job states: pretrain/jobstate.py;
the child-process job: pretrain/childjob.py) are shared with tools/launch/slurm.py, which submits the
transfer cells; this module is only pretraining's command line and its job class.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

from pretrain.childjob import ChildJob, torch_env
from pretrain.jobstate import job_status, log_tail
from pretrain.request import (
    ActiveJob,
    SubmitError,
    UsageError,
    add_resource_arguments,
    resources_from_args,
    submit_once,
)

LAUNCHERS = ("slurm", "submitit-local")


# ---------------------------------------------------------------- the job
class PretrainJob(ChildJob):
    """`python -m pretrain ARGS` as rank RANK of WORLD_SIZE; it resumes from OUTPUT_DIR/checkpoint.pth."""

    def environment(self, job_env) -> dict[str, str]:
        env = torch_env(job_env)
        cpus = os.environ.get("SLURM_CPUS_PER_TASK")
        if cpus and "OMP_NUM_THREADS" not in os.environ:  # CPU ranks: each its own share of the machine
            env["OMP_NUM_THREADS"] = cpus
        return env

    def check_done(self, job_env) -> None:
        """A run stopped by SIGTERM exits 0 after writing its checkpoint: Slurm's preemption, `scontrol
        requeue` and `scancel` signal the child directly. Its job must not read as finished."""
        if job_env.global_rank != 0 or "--output-dir" not in self.cmd:
            return
        log = Path(self.cmd[self.cmd.index("--output-dir") + 1]) / "log.jsonl"
        try:
            last = json.loads(log.read_text().splitlines()[-1])
        except (OSError, ValueError, IndexError):
            return
        if "stopped" in last:
            raise RuntimeError(f"stopped by {last['stopped']} at iteration {last.get('iteration')}; "
                               f"it resumes from {last.get('checkpoint')} when run again")


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
    ap.add_argument("--status", action="store_true", help="print the state of OUTPUT_DIR's last job (none, "
                    "queued, running, finished, failed, unknown) and exit")
    add_resource_arguments(ap, "CPUs per task, i.e. per rank, for the data-loader workers (default: 10)")
    ap.add_argument("--ntasks-per-node", type=int, metavar="N",
                    help="CPU ranks per machine with --gpus-per-node 0 (gloo), mapped as GPU ranks are "
                         "(default: one per GPU, or 1 without GPUs)")
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
        if args.ntasks_per_node is not None and args.gpus_per_node > 0 \
                and args.ntasks_per_node != args.gpus_per_node:
            raise UsageError("one task per GPU: --ntasks-per-node is for CPU ranks (--gpus-per-node 0)")
        if args.ntasks_per_node is not None and args.ntasks_per_node < 1:
            raise UsageError(f"--ntasks-per-node must be at least 1, got {args.ntasks_per_node}")
        folder = Path(known.output_dir).resolve() / "submitit"
        if args.status:
            st = job_status(folder)
            print(f"{st.state} {known.output_dir}" + (f"  job {st.job_id}" if st.job_id else "")
                  + (f": {st.detail}" if st.detail else ""))
            return 0
        tasks = args.gpus_per_node or args.ntasks_per_node or 1
        res = resources_from_args(args, tasks_per_node=tasks, cpus_per_task=10)
        cmd = [sys.executable, "-m", "pretrain", *pretrain_args]
        if args.dry_run:
            print(f"resources: {res.describe()}\n"
                  f"command:   {shlex.join(cmd)}  (one per task, RANK from Slurm)\n"
                  f"output:    {Path(known.output_dir).resolve()}  (job records: {folder})")
            return 0
        job = submit_once(folder, args.launcher, res, f"pretrain:{Path(known.output_dir).name}",
                          PretrainJob(cmd), cmd)
    except ActiveJob as e:
        print(f"error: {e} for {known.output_dir}: nothing submitted (rerun once it has ended; "
              f"`scancel {e.status.job_id}` to stop it)", file=sys.stderr)
        return 2
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except SubmitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"submitted job {job.job_id}: {res.describe()}; logs in {folder}", flush=True)
    if args.launcher == "slurm":
        return 0
    job.wait()  # submitit-local: this machine runs it; wait, as a local run would
    error = job.exception()
    if error is not None:
        print(f"job {job.job_id} failed: {log_tail(job)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    # through the package, so that the job pickles as pretrain.submit.PretrainJob, not __main__.PretrainJob
    from pretrain import submit

    sys.exit(submit.main())
