"""The launch options python -m tools.launch and tools/benchmark share: the trainer, the launcher (local with
--jobs, Slurm or submitit-local with their resources), --dry-run and --status; their checks; the status
report."""
from __future__ import annotations

import argparse
import shlex
import sys

from pretrain.request import Resources, UsageError, add_resource_arguments, resources_from_args
from tools.launch import slurm
from tools.launch.cell import Cell


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--num-gpus", type=int, help="passed to the trainer (local launcher)")
    ap.add_argument("--trainer", default=f"{shlex.quote(sys.executable)} -m transfer.train_net",
                    help="trainer command line (default: this Python's -m transfer.train_net)")
    ap.add_argument("--jobs", type=int, default=1, metavar="N",
                    help="local launcher: N cells side by side, each with cores/N threads and its output in "
                         "OUTPUT_DIR/train_net.log (default 1: one after another, output here)")
    ap.add_argument("--dry-run", action="store_true", help="print what would run or be submitted for each "
                    "cell left to run (with --launcher slurm: resources, command, output folder)")
    ap.add_argument("--status", action="store_true", help="print one line per cell and exit")
    ap.add_argument("--launcher", choices=("local", "slurm", slurm.LOCAL), default="local",
                    help="local: one after another here (default); slurm: one Slurm job per cell (submitit); "
                         f"{slurm.LOCAL}: the Slurm path through submitit's LocalExecutor, here")
    slurm_opts = ap.add_argument_group("Slurm jobs (--launcher slurm or submitit-local)")
    add_resource_arguments(slurm_opts, "CPUs per job and machine (default: 6 per GPU: detectron2's 4 data "
                                       "workers per GPU process and the process itself, with room)")


def resources(args) -> Resources | None:
    """The checked launch options: the Slurm job's resources (None for the local launcher or --status);
    raises UsageError."""
    if args.jobs < 1:
        raise UsageError(f"--jobs must be at least 1, got {args.jobs}")
    if args.launcher != "local" and args.jobs != 1:
        raise UsageError("--jobs is for the local launcher; Slurm runs every cell as its own job")
    if args.launcher != "local" and args.num_gpus is not None:
        raise UsageError("--num-gpus is for the local launcher; Slurm jobs take --gpus-per-node")
    if args.launcher == "local" or args.status:
        return None
    return resources_from_args(args, tasks_per_node=1, cpus_per_task=6 * max(args.gpus_per_node, 1))


def print_status(cells: list[Cell]) -> None:
    """One line per cell on stdout (done, pending, queued, running, failed), the counts on stderr."""
    lines = slurm.status_lines(cells)
    print("\n".join(lines))
    states = [line.split()[0] for line in lines]
    print(f"{len(cells)} cells: " + ", ".join(f"{states.count(s)} {s}" for s in dict.fromkeys(states)),
          file=sys.stderr)
