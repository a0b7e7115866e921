"""CIFAR-10 proxy: FastSiam (4 views) vs SimSiam (2 views) for the same views: kNN accuracy along the way.

    python -m tools.data.cifar10                                      # once: data/cifar10/{train,test}
    python -m tools.proxy --out runs/proxy_cifar10         # CPU setting (idle 2 cores: about 1 h)
    python -m tools.proxy --out runs/proxy_gpu --preset gpu  # lightly's CIFAR-10 benchmark settings

Each method is a normal pretraining run (`python -m pretrain`, one subprocess per method and seed, in
OUT/seed<k>/<name>) from the same seed, keeping checkpoint_XXXX.pth at every evaluation point. Every kept
checkpoint, and the random init of the same network, gets a weighted kNN top-1 (k=200, cosine, t=0.1;
pretrain/knn.py) on CIFAR-10 test images with the pretraining images as the bank. Outputs in OUT: results.json
(machine-readable), table.md, plot.png, rewritten after every evaluation, so a partial run always shows its
points so far. Run the same command again to resume: the pretraining runs continue from their checkpoint.pth
and finished evaluations are skipped. --seeds 0 1 adds a seed. Precision: the engine's `amp` (auto: bf16 on a
CPU with AMX/AVX512-BF16, pretrain/precision.py); --amp off bf16 runs each method at both precisions, e.g.

    python -m tools.proxy --out runs/proxy_amp --methods fastsiam --amp off bf16 --seeds 0 1

Same compute = same views: SimSiam gets V_fastsiam / V_simsiam = 2x the epochs of FastSiam on the same images
(--equal epochs follows lightly's protocol instead: the same epochs each). On CPU the methods run side by
side, one thread each (OMP_NUM_THREADS=1): on 2 cores two 1-thread processes gave ~55 views/s each against ~67
for one 2-thread process (issue 9), and the pair shares the machine's slowdowns alike.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from pretrain.config import ConfigError
from tools.data.subsets import SubsetError, balanced_subset, link_tree
from tools.proxy.evaluate import Evaluator, evaluate_pending, load_results, save_results
from tools.proxy.runs import BenchError, finished, launch, plan_runs, wait_for_previous

PRESETS = {
    # 2 CPU cores: 5,000 training images (500 per class), batch 32, ~160,000 views per method; at issue 9's
    # ~55
    # views/s per process about an hour when the machine is otherwise idle (docs/proxy.md ran 60,000 on a
    # shared one)
    "cpu": dict(fastsiam_config="configs/pretrain/cifar10_fastsiam_bs32.yaml",
                simsiam_config="configs/pretrain/cifar10_simsiam_bs32.yaml",
                train_subset=5000, knn_test=5000, views=160_000, eval_every_views=20_000, equal="views",
                device="cpu", parallel=True, threads=1, workers=0),
    # lightly@e8d317fc benchmarks.rst: batch 128, 200 epochs each, full train set as bank, full test set
    "gpu": dict(fastsiam_config="configs/pretrain/cifar10_fastsiam_bs128_lightly.yaml",
                simsiam_config="configs/pretrain/cifar10_simsiam_bs128_lightly.yaml",
                train_subset=0, knn_test=0, views=200 * 50_000 * 4, eval_every_views=20 * 50_000 * 4,
                equal="epochs", device="cuda", parallel=False, threads=0, workers=8),
}



def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m tools.proxy", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="output folder (outside the repo or under runs/)")
    p.add_argument("--data", type=Path, default=Path("data/cifar10"),
                   help="tools.data.cifar10 output: train/, test/")
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--fastsiam-config", help="engine YAML for FastSiam (preset's by default)")
    p.add_argument("--simsiam-config", help="engine YAML for SimSiam (preset's by default)")
    p.add_argument("--train-subset", type=int, help="pretraining images, class-balanced (0 = all 50,000)")
    p.add_argument("--knn-test", type=int, help="test images for kNN, class-balanced (0 = all 10,000)")
    p.add_argument("--views", type=int, help="views per method, rounded to whole FastSiam epochs")
    p.add_argument("--eval-every-views", type=int, help="views between evaluations (rounded)")
    p.add_argument("--equal", choices=("views", "epochs"), help="same views (SimSiam: 2x epochs) or epochs")
    p.add_argument("--methods", nargs="+", choices=("fastsiam", "simsiam"), default=["fastsiam", "simsiam"])
    p.add_argument("--amp", nargs="+", choices=("auto", "off", "fp32", "bf16", "fp16"), default=["auto"],
                   help="engine precision (pretrain/precision.py); several, e.g. --amp off bf16, run each "
                        "method once per value (runs named fastsiam_off, fastsiam_bf16, ...)")
    p.add_argument("--batch-size", type=int, default=0, help="override both configs' batch_size")
    p.add_argument("--device", choices=("cpu", "cuda"))
    p.add_argument("--threads", type=int, help="OMP_NUM_THREADS per training process (0 = leave unset)")
    p.add_argument("--workers", type=int, help="engine DataLoader workers")
    p.add_argument("--parallel", action=argparse.BooleanOptionalAction, help="methods side by side (CPU)")
    p.add_argument("--set", nargs="*", default=[], metavar="key=value", help="engine overrides for both runs")
    p.add_argument("--poll", type=float, default=10.0, help="seconds between looks for new checkpoints")
    args = p.parse_args(argv)
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.fastsiam_config, args.simsiam_config = Path(args.fastsiam_config), Path(args.simsiam_config)
    return args


def run_benchmark(args) -> int:
    for split in ("train", "test"):
        if not (args.data / split).is_dir():
            raise BenchError(f"{args.data / split} not found: run "
                             f"`python -m tools.data.cifar10 --out {args.data}`")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise BenchError("--device cuda but no CUDA device is available (use --preset cpu or --device cpu)")
    args.out.mkdir(parents=True, exist_ok=True)
    train_paths, train_labels, classes = balanced_subset(args.data / "train", args.train_subset, seed=0)
    test_paths, test_labels, _ = balanced_subset(args.data / "test", args.knn_test, seed=1)
    data_dir = args.data / "train"
    if args.train_subset:
        data_dir = args.out / f"data_train{args.train_subset}"
        link_tree(train_paths, args.data / "train", data_dir)
    runs = plan_runs(args, len(train_paths))
    for r in runs:
        print(f"plan: seed {r['seed']} {r['name']} {r['epochs']} epochs of {len(train_paths)} images, batch "
              f"{r['cfg'].batch_size}, {r['cfg'].num_views} views", flush=True)
    results = load_results(args.out / "results.json")
    for key in [k for k in results["evaluations"] if not k.endswith("/random")]:
        if not (args.out / f"{key}.pth").exists():  # its run was deleted or restarted with other settings
            del results["evaluations"][key]
    results["settings"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    results["settings"]["classes"] = classes
    results["machine"] = dict(platform=platform.platform(), cpus=os.cpu_count(), torch=torch.__version__,
                              cuda=torch.cuda.get_device_name() if args.device == "cuda" else None)

    fast_cfg = runs[0]["cfg"]
    torch.set_num_threads(1 if args.device == "cpu" and args.parallel else torch.get_num_threads())
    evaluator = Evaluator(train_paths, train_labels, test_paths, test_labels, len(classes),
                          fast_cfg.image_size, args.device, fast_cfg.knn_k, fast_cfg.knn_t)
    for r in runs:
        wait_for_previous(r)
    pending = [r for r in runs if not finished(r)]
    active: list[tuple[dict, subprocess.Popen]] = []
    failed = []

    def stop_children(signum, frame):  # the engine checkpoints on SIGTERM; forward it and wait
        for _, proc in active:
            proc.send_signal(signal.SIGTERM)
        for _, proc in active:
            proc.wait()
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, stop_children) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        while pending or active:
            slots = len(pending) if args.parallel else 1 - len(active)
            while pending and slots > 0:
                run = pending.pop(0)
                active.append((run, launch(run, data_dir, args.threads)))
                slots -= 1
            if evaluate_pending(runs, results, evaluator, args.out, fast_cfg) == 0:
                time.sleep(args.poll)
            for item in list(active):
                run, proc = item
                if proc.poll() is not None:
                    active.remove(item)
                    print(f"seed {run['seed']} {run['name']} exited, status {proc.returncode}", flush=True)
                    if proc.returncode != 0:
                        failed.append(run)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if args.device == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    evaluate_pending(runs, results, evaluator, args.out, fast_cfg)
    save_results(results, args.out)
    print(f"results: {args.out / 'results.json'}, {args.out / 'table.md'}, {args.out / 'plot.png'}")
    for r in failed:
        log = r["out"].parent / f"{r['name']}.log"
        tail = "\n".join(log.read_text().splitlines()[-5:])
        print(f"--- last lines of {log} ---\n{tail}", file=sys.stderr)
    if failed:
        raise BenchError(f"{len(failed)} pretraining run(s) failed (logs above); rerun to resume")
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        return run_benchmark(parse_args(argv))
    except (BenchError, SubsetError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
