"""Benchmark weights against ImageNet weights on your own COCO-format data: one table, mean ± std over seeds.

    python -m tools.benchmark --train ann/train.json:img/train --test ann/val.json:img/val \\
        --weights mine=weights/fs.pth --imagenet weights/imagenet_torchvision.pth --random \\
        --config configs/transfer/coco_R_50_FPN_1x.yaml --seeds 0 1 2 --runs runs/mine
    python -m tools.benchmark ... --dry-run     # the trainer command of every cell left to run
    python -m tools.benchmark ... --status      # one line per cell: done, pending, queued, running, failed
    python -m tools.benchmark ... --launcher slurm --partition gpu --gpus-per-node 1   # a Slurm job per cell
    python -m tools.benchmark ... -- SOLVER.IMS_PER_BATCH 8 SOLVER.BASE_LR 0.01   # extra KEY VALUE overrides

Rows: `imagenet` (--imagenet PATH, the reference of the Δ columns), each --weights NAME=PATH, and `random`
(--random: from scratch, with each config's _random twin). Each (row x --config x seed) cell is
tools/launch/matrix.py's, as for python -m tools.launch, with the data passed to the trainer:
    python -m transfer.train_net --dataset-train bench_train_0=JSON:DIR ... --dataset-test bench_test_0=...
        --config-file CFG OUTPUT_DIR RUNS/<row>/<config-stem>/seed<k> MODEL.WEIGHTS PATH SEED k [overrides]
(absolute paths; the trainer sizes the heads to the training json's classes and keypoints). A rerun skips the
cells whose results.json exists and resumes one cut off mid-training; RUNS/benchmark_data.json records the
data (json paths and sha256), and a rerun on other data is refused rather than answered with old cells.
ImageNet weights in MSRA's Caffe2 format (R-50.pkl, or transfer.imagenet_weights' .pth copy) train with the
config's twin in configs/transfer/msra/ (BGR input, Caffe mean: what they were trained on); torchvision's
(imagenet_torchvision.pth) with the config itself. Columns: AP^bb, and AP^mk / AP^kp where the results have
masks / keypoints. Output: the table on stdout, RUNS/benchmark.md and RUNS/benchmark.json (atomically). A
failed cell shows as '-' and the exit status is 1; bad input is one line on stderr and status 2, before any
training.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from pretrain.request import UsageError
from tools.benchmark import inputs, report
from tools.launch import matrix, options
from tools.results.output import write_atomic


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(prog="python -m tools.benchmark", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--train", action="append", required=True, metavar="JSON:IMAGE_DIR",
                    help="COCO-format training set (repeat for several)")
    ap.add_argument("--test", action="append", required=True, metavar="JSON:IMAGE_DIR",
                    help="COCO-format test set (repeat for several)")
    ap.add_argument("--weights", nargs="*", default=[], metavar="NAME=PATH", help="converted weights by name")
    ap.add_argument("--imagenet", metavar="PATH", help="the ImageNet weights: the reference row `imagenet`")
    ap.add_argument("--random", action="store_true", help="add the random-init row (_random configs)")
    ap.add_argument("--config", nargs="+", type=Path, required=True, help="protocol configs, one table each")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0], help="seeds; one cell each (default: 0)")
    ap.add_argument("--runs", type=Path, required=True, help="runs tree: RUNS/<row>/<config-stem>/seed<k>/")
    ap.add_argument("--decimals", type=int, default=1, help="digits after the point (default 1)")
    options.add_arguments(ap)
    return ap.parse_args(argv), extra


def plan(args) -> tuple[dict, dict[Path, dict[str, report.Row]]]:
    """Every check that needs no training: the data, the rows, their configs, the cells; raises UsageError."""
    data = inputs.parse_data(args.train, args.test)
    rows = inputs.weights_rows(args.weights, args.imagenet, args.random)
    caffe2 = inputs.IMAGENET in rows and inputs.is_caffe2(rows[inputs.IMAGENET])
    configs = inputs.configs_for(rows, args.config, caffe2)
    if len(set(args.seeds)) != len(args.seeds):
        raise UsageError(f"--seeds repeats a seed: {' '.join(map(str, args.seeds))}")
    inputs.check_runs_data(args.runs, data)
    tables: dict[Path, dict[str, report.Row]] = {}
    for i, config in enumerate(args.config):
        tables[config] = {}
        for name, weights in rows.items():
            # the random row: plan() picks the _random twin of the config (and refuses a config without one)
            cells = matrix.plan({name: weights}, [configs[name][i]], args.seeds, args.runs)
            tables[config][name] = report.Row(weights, cells[0].config, cells)
    return data, tables


def main(argv=None) -> int:
    args, extra = parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        data, tables = plan(args)
        res = options.resources(args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cells = [c for rows in tables.values() for row in rows.values() for c in row.cells]
    if args.status:
        options.print_status(cells)
        return 0
    todo = [c for c in cells if not c.done]
    print(f"{len(cells)} cells, {len(cells) - len(todo)} done, {len(todo)} to run", file=sys.stderr)
    if not args.dry_run:
        args.runs.mkdir(parents=True, exist_ok=True)
        write_atomic(args.runs / inputs.DATA_FILE, json.dumps(data, indent=2) + "\n")
    trainer = shlex.split(args.trainer) + inputs.trainer_flags(data)
    failed = matrix.run(todo, args.launcher, trainer, extra, jobs=args.jobs, num_gpus=args.num_gpus, res=res,
                        dry_run=args.dry_run)
    if args.dry_run:
        return 0
    sys.stdout.write(report.write(args.runs, tables, data, args.seeds, args.decimals))
    print(f"wrote {args.runs / 'benchmark.md'} and {args.runs / 'benchmark.json'}", file=sys.stderr)
    if failed:
        lines = "\n".join(f"  {c.out}" for c in failed)
        print(f"{len(failed)} of {len(todo)} cells failed (shown as '-'):\n{lines}", file=sys.stderr)
        return 1
    waiting = [c for c in cells if not c.done]
    if waiting:  # submitted to Slurm: the table fills in when they finish
        print(f"{len(waiting)} cells not finished yet (shown as '-'): rerun the same command when they are "
              "(--status shows them)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
