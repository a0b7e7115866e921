"""The local launcher: the cells one after another, each as a subprocess of this machine."""
from __future__ import annotations

import shlex
import subprocess
import sys

from tools.launch.cell import Cell


def run(todo: list[Cell], trainer: list[str], flags: list[str], extra: list[str], env: dict,
        dry_run: bool) -> list[Cell]:
    """Run (or print) each cell's command; returns the cells that failed. A failure does not stop the rest."""
    failed = []
    for i, cell in enumerate(todo, 1):
        cmd = cell.command(trainer, flags, extra)
        if dry_run:
            print(shlex.join(cmd))
            continue
        print(f"[{i}/{len(todo)}] {cell.out}", file=sys.stderr, flush=True)
        cell.out.mkdir(parents=True, exist_ok=True)
        rc = subprocess.run(cmd, env=env).returncode
        if rc != 0 or not cell.done:
            why = f"exit status {rc}" if rc != 0 else "no results.json written"
            print(f"[{i}/{len(todo)}] FAILED {cell.out}: {why}", file=sys.stderr, flush=True)
            failed.append(cell)
    return failed
