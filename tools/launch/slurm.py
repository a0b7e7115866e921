"""The Slurm launcher: one submitit job per cell, requeued on preemption or time limit; and the matrix status.

A cell's job has one task per machine; each task runs the trainer, whose detectron2 `launch` starts one
process per GPU. With several machines the task passes detectron2 its machine rank and rendezvous address,
taken from the job's environment (submitit.JobEnvironment): --num-machines N --machine-rank <Slurm node id>
--dist-url tcp://<first node of the job>:<port from the job id>. When Slurm announces the time limit or a
preemption, submitit calls CellJob.checkpoint() (pretrain/childjob.py's ChildJob): the trainer is stopped, the
job requeued, and the requeued job starts the trainer with --resume, from detectron2's last checkpoint in
OUTPUT_DIR (the work since SOLVER.CHECKPOINT_PERIOD's last save is done again). Job records live in
OUTPUT_DIR/submitit/.
"""
from __future__ import annotations

import shlex
import sys
from dataclasses import replace
from pathlib import Path

from pretrain.childjob import ChildJob, master_port
from pretrain.jobstate import job_status, job_statuses
from pretrain.request import ActiveJob, Resources, SubmitError, submit_once
from tools.launch.cell import Cell

LOCAL = "submitit-local"


def d2_flags(gpus_per_node: int, nodes: int, machine_rank, master_addr: str, port) -> list[str]:
    """detectron2's launch options for one machine of a job (default_argument_parser's names)."""
    flags = ["--num-gpus", str(gpus_per_node)] if gpus_per_node > 0 else []  # 0: one process on the CPU
    if nodes > 1:
        flags += ["--num-machines", str(nodes), "--machine-rank", str(machine_rank),
                  "--dist-url", f"tcp://{master_addr}:{port}"]
    return flags


class CellJob(ChildJob):
    """The trainer for one cell, as machine `node` of the job."""

    def __init__(self, cell: Cell, trainer: list[str], extra: list[str], nodes: int, gpus_per_node: int):
        super().__init__([])
        self.cell, self.trainer, self.extra = cell, list(trainer), list(extra)
        self.nodes, self.gpus_per_node = nodes, gpus_per_node

    def command(self, job_env) -> list[str]:
        flags = d2_flags(self.gpus_per_node, self.nodes, job_env.node, job_env.hostnames[0],
                         master_port(job_env.job_id))
        return self.cell.command(self.trainer, flags, self.extra)

    def check_done(self, job_env) -> None:
        if job_env.node == 0 and not self.cell.done:  # the main process writes results.json
            raise RuntimeError(f"the trainer exited 0 without writing {self.cell.out / 'results.json'}")


def folder(cell: Cell) -> Path:
    return cell.out / "submitit"


def submit(todo: list[Cell], trainer: list[str], extra: list[str], res: Resources, launcher: str,
           dry_run: bool) -> list[Cell]:
    """Submit one job per cell (print them with dry_run); a cell whose job Slurm still holds (queued, running,
    requeued, held) is left alone. submitit-local runs each job on this machine and waits for it. Returns the
    cells that failed, those sbatch refused included."""
    failed = []
    for i, cell in enumerate(todo, 1):
        cell = replace(cell, out=cell.out.resolve(), config=cell.config.resolve())  # valid from any directory
        job = CellJob(cell, trainer, extra, res.nodes, res.gpus_per_node)
        tag = f"[{i}/{len(todo)}]"
        if dry_run:
            flags = d2_flags(res.gpus_per_node, res.nodes, "<node-rank>", "<first-node>", "<port>")
            print(f"{tag} {cell.name}/{cell.config.stem}/seed{cell.seed}\n  resources: {res.describe()}\n"
                  f"  command:   {shlex.join(cell.command(trainer, flags, extra))}\n"
                  f"  output:    {cell.out}  (job records: {folder(cell)})")
            continue
        name = f"{cell.name}:{cell.config.stem}:seed{cell.seed}"
        try:
            sub = submit_once(folder(cell), launcher, res, name, job, cell.command(trainer, [], extra))
        except ActiveJob as e:  # Slurm still holds it: a second job would share its output folder
            print(f"{tag} {e}: {cell.out}", file=sys.stderr)
            continue
        except SubmitError as e:  # one cell refused (a limit, a typo in an option) does not stop the others
            print(f"{tag} FAILED {cell.out}: {e}", file=sys.stderr, flush=True)
            failed.append(cell)
            continue
        print(f"{tag} job {sub.job_id}: {cell.out}", file=sys.stderr, flush=True)
        if launcher == LOCAL:  # this machine runs it: one cell at a time, as the local launcher does
            sub.wait()
            if sub.exception() is not None or not cell.done:
                why = job_status(folder(cell)).detail
                print(f"{tag} FAILED {cell.out}: {why}", file=sys.stderr, flush=True)
                failed.append(cell)
    return failed


def status_lines(cells: list[Cell]) -> list[str]:
    """One line per cell: done, pending (not submitted), queued or running (job id), failed (log tail)."""
    lines = []
    for cell, st in zip(cells, job_statuses([folder(c) for c in cells]), strict=True):
        if cell.done:
            state, note = "done", ""
        elif st.state == "none":
            resumes = (cell.out / "last_checkpoint").exists()
            state, note = "pending", "  (has a checkpoint: resumes)" if resumes else ""
        elif st.state == "finished":  # the job ended well but the trainer wrote no results.json
            state, note = "failed", f"  job {st.job_id}: finished without results.json"
        else:
            state, note = st.state, f"  job {st.job_id}" + (f": {st.detail}" if st.detail else "")
        lines.append(f"{state:<8} {cell.out}{note}")
    return lines
