"""Run every (weights x protocol x seed) transfer cell into a runs tree that tools/tables.py reads.

    python -m tools.launch --weights-dir converted/ --random \\
        --configs configs/transfer/coco_R_50_FPN_1x.yaml configs/transfer/coco_R_50_C4_1x.yaml \\
        --seeds 0 1 2 --runs runs/
    python -m tools.launch --weights imagenet=r50_in1k.pkl fastsiam_r50_in1k_25ep=fs25.pkl \\
        --configs configs/transfer/cityscapes_R_50_FPN.yaml --seeds 0 --runs runs/ --dry-run
    python -m tools.launch ... -- SOLVER.IMS_PER_BATCH 8 SOLVER.BASE_LR 0.01   # extra KEY VALUE overrides
    python -m tools.launch ... --trainer "python -m transfer.train_net --ims-per-gpu 2"   # trainer flags
    python -m tools.launch ... --launcher slurm --partition gpu --gpus-per-node 8 [--nodes 2] [--dry-run]
    python -m tools.launch ... --status        # one line per cell: done, pending, queued, running, failed

Each cell runs
    python -m transfer.train_net --config-file CFG \
        OUTPUT_DIR RUNS/<name>/<stem>/seed<k> MODEL.WEIGHTS PATH SEED <k> [extra]
A cell whose results.json exists is skipped, so an interrupted matrix resumes where it stopped; a cell cut off
mid-training (OUTPUT_DIR/last_checkpoint exists) restarts with --resume. --launcher local (the default) runs
the cells one after another here (--jobs N: N side by side, e.g. one per CPU core); --launcher slurm submits
one Slurm job per cell through submitit and returns (a cell whose job Slurm still holds, pending, running,
requeued or held, is not submitted twice; a preempted or timed-out job is requeued and resumes; a request no
machine of the partition could run is refused before submission); --launcher submitit-local runs the same
jobs through submitit's LocalExecutor here (tools/launch/).
The `random` row trains from scratch with each protocol's `_random` config and MODEL.WEIGHTS "" (an `_instant`
config without a `_random` twin is itself random-init unless given weights, so it serves as its own twin). A
failed cell does not stop the others; the exit status is 1 if any failed.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from pretrain.request import UsageError
from tools.launch import options
from tools.launch.matrix import parse_weights, plan, run


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(prog="python -m tools.launch", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--weights", nargs="*", default=[], metavar="NAME=PATH", help="converted weights by name")
    ap.add_argument("--weights-dir", type=Path, help="folder of .pth/.pkl files, named by weights")
    ap.add_argument("--random", action="store_true", help="add the random-init row (_random configs)")
    ap.add_argument("--configs", nargs="+", type=Path, required=True, help="protocol configs")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0], help="seeds; one run each (default: 0)")
    ap.add_argument("--runs", type=Path, required=True, help="runs tree: RUNS/<name>/<config-stem>/seed<k>/")
    options.add_arguments(ap)
    args = ap.parse_args(argv)
    try:
        weights = parse_weights(args.weights, args.weights_dir, args.random)
        cells = plan(weights, args.configs, args.seeds, args.runs)
        res = options.resources(args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.status:
        options.print_status(cells)
        return 0
    trainer = shlex.split(args.trainer)
    todo = [c for c in cells if not c.done]
    print(f"{len(cells)} cells, {len(cells) - len(todo)} done, {len(todo)} to run", file=sys.stderr)
    failed = run(todo, args.launcher, trainer, extra, jobs=args.jobs, num_gpus=args.num_gpus, res=res,
                 dry_run=args.dry_run)
    if failed:
        lines = "\n".join(f"  {c.out}" for c in failed)
        print(f"{len(failed)} of {len(todo)} cells failed:\n{lines}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
