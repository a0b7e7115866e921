"""The local launcher: the cells as subprocesses of this machine, one after another or --jobs N side by side.

Side by side is for the CPU: detectron2's small toy models keep one core busy per process much better than one
process keeps two (its per-iteration Python work is serial), so on 2 cores two 1-thread cells finish sooner than
two 2-thread cells one after the other. Each parallel cell gets cores // N intra-op threads and writes its output
to OUTPUT_DIR/train_net.log instead of the terminal, where N cells would interleave.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time

from tools.launch.cell import Cell

LOG_NAME = "train_net.log"


def _threads_env(env: dict, jobs: int) -> dict:
    """Split the cores between the cells, unless the user already chose OMP_NUM_THREADS."""
    if jobs <= 1 or "OMP_NUM_THREADS" in env:
        return env
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = str(max(1, cores // jobs))  # the cores this process may use, not the machine's
    return dict(env, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)


def _tail(path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def run(todo: list[Cell], trainer: list[str], flags: list[str], extra: list[str], env: dict,
        dry_run: bool, jobs: int = 1) -> list[Cell]:
    """Run (or print) each cell's command, `jobs` at a time; returns the cells that failed. A failure does not
    stop the rest."""
    if dry_run:
        for cell in todo:
            print(shlex.join(cell.command(trainer, flags, extra)))
        return []
    env = _threads_env(env, jobs)
    failed: list[Cell] = []
    running: list[tuple[int, Cell, subprocess.Popen, object, float]] = []
    queue = list(enumerate(todo, 1))

    def finish(i, cell, proc, log, t0) -> None:
        rc = proc.wait()
        if log is not None:
            log.close()
        if rc != 0 or not cell.done:
            why = f"exit status {rc}" if rc != 0 else "no results.json written"
            print(f"[{i}/{len(todo)}] FAILED {cell.out}: {why}", file=sys.stderr, flush=True)
            if log is not None:
                print(_tail(cell.out / LOG_NAME), file=sys.stderr, flush=True)
            failed.append(cell)
        elif jobs > 1:
            print(f"[{i}/{len(todo)}] done in {time.time() - t0:.0f} s: {cell.out}", file=sys.stderr, flush=True)

    while queue or running:
        while queue and len(running) < jobs:
            i, cell = queue.pop(0)
            cell.out.mkdir(parents=True, exist_ok=True)
            print(f"[{i}/{len(todo)}] {cell.out}", file=sys.stderr, flush=True)
            log = open(cell.out / LOG_NAME, "a") if jobs > 1 else None
            proc = subprocess.Popen(cell.command(trainer, flags, extra), env=env, stdout=log,
                                    stderr=subprocess.STDOUT if log is not None else None)
            running.append((i, cell, proc, log, time.time()))
        # wait for whichever cell ends first
        while all(r[2].poll() is None for r in running):
            time.sleep(0.2)
        for r in [r for r in running if r[2].poll() is not None]:
            running.remove(r)
            finish(*r)
    return failed
