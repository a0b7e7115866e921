"""CIFAR-10 proxy: FastSiam (4 views) vs SimSiam (2 views) for the same views: kNN accuracy along the way.

    python -m tools.get_cifar10                                      # once: data/cifar10/{train,test}
    python -m tools.proxy_benchmark --out runs/proxy_cifar10         # CPU setting (idle 2 cores: about 1 h)
    python -m tools.proxy_benchmark --out runs/proxy_gpu --preset gpu  # lightly's CIFAR-10 benchmark settings

Each method is a normal pretraining run (`python -m pretrain`, one subprocess per method and seed, in
OUT/seed<k>/<name>) from the same seed, keeping checkpoint_XXXX.pth at every evaluation point. Every kept
checkpoint, and the random init of the same network, gets a weighted kNN top-1 (k=200, cosine, t=0.1;
pretrain/knn.py) on CIFAR-10 test images with the pretraining images as the bank. Outputs in OUT: results.json
(machine-readable), table.md, plot.png, rewritten after every evaluation, so a partial run always shows its
points so far. Run the same command again to resume: the pretraining runs continue from their checkpoint.pth
and finished evaluations are skipped. --seeds 0 1 adds a seed. Precision: the engine's `amp` (auto: bf16 on a
CPU with AMX/AVX512-BF16, pretrain/precision.py); --amp off bf16 runs each method at both precisions, e.g.

    python -m tools.proxy_benchmark --out runs/proxy_amp --methods fastsiam --amp off bf16 --seeds 0 1

Same compute = same views: SimSiam gets V_fastsiam / V_simsiam = 2x the epochs of FastSiam on the same images
(--equal epochs follows lightly's protocol instead: the same epochs each). On CPU the methods run side by
side, one thread each (OMP_NUM_THREADS=1): on 2 cores two 1-thread processes gave ~55 views/s each against ~67
for one 2-thread process (issue 9), and the pair shares the machine's slowdowns alike.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from pretrain import knn
from pretrain.checkpoint import CheckpointError, load_checkpoint, load_model
from pretrain.config import ConfigError, load_config
from pretrain.model import SiameseNet

ROOT = Path(__file__).resolve().parent.parent
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


class BenchError(Exception):
    """Bad input or a failed run: one line, exit status 2."""


# ============ data ============

def balanced_subset(split_dir: Path, n: int, seed: int) -> tuple[list[Path], torch.Tensor, list[str]]:
    """n images, n/10 per class, a seeded random choice (n = 0: all); labels follow the sorted class names."""
    paths, labels, classes = knn.list_labelled(split_dir)
    if n == 0 or n >= len(paths):
        return paths, labels, classes
    if n % len(classes):
        raise BenchError(f"subset size {n} is not a multiple of the {len(classes)} classes")
    rng = np.random.default_rng(seed)
    keep = []
    for c in range(len(classes)):
        idx = np.flatnonzero(labels.numpy() == c)
        if len(idx) < n // len(classes):
            raise BenchError(f"{split_dir}/{classes[c]} has fewer than {n // len(classes)} images")
        keep += sorted(rng.permutation(idx)[: n // len(classes)].tolist())
    return [paths[i] for i in keep], labels[keep], classes


def link_tree(paths: list[Path], src_root: Path, dst: Path) -> None:
    """The pretraining subset as its own folder (hard links, else copies), built in dst.partial then renamed.

    A folder, not the engine's max_images: that takes the first N sorted files, the first classes only."""
    if dst.exists():
        return
    partial = dst.with_name(dst.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    for p in paths:
        target = partial / p.relative_to(src_root)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(p, target)
        except OSError:
            target.write_bytes(p.read_bytes())
    os.replace(partial, dst)


# ============ runs ============

def run_name(method: str, amp: str, args) -> str:
    """The method's name, with the precision appended when several are compared (--amp off bf16)."""
    return method if len(args.amp) == 1 else f"{method}_{amp}"


def plan_runs(args, num_images: int) -> list[dict]:
    """One dict per (seed, method, amp): the engine command's overrides and the epochs for equal views."""
    cfgs = {name: load_config(getattr(args, f"{name}_config"), args.set, data=".", output_dir=".")
            for name in ("fastsiam", "simsiam")}
    fast = cfgs["fastsiam"]
    if args.batch_size:
        for c in cfgs.values():
            c.batch_size = args.batch_size
    views_per_epoch = {n: (num_images // c.batch_size) * c.batch_size * c.num_views for n, c in cfgs.items()}
    if views_per_epoch["fastsiam"] == 0:
        raise BenchError(f"{num_images} images are fewer than one batch of {fast.batch_size}")
    fast_epochs = max(1, round(args.views / views_per_epoch["fastsiam"]))
    fast_every = max(1, round(args.eval_every_views / views_per_epoch["fastsiam"]))
    runs = []
    for seed in args.seeds:
        for method in args.methods:
            c = cfgs[method]
            ratio = 1 if args.equal == "epochs" else views_per_epoch["fastsiam"] / views_per_epoch[method]
            if ratio != int(ratio):
                raise BenchError(f"{method}: views per epoch {views_per_epoch[method]} do not divide "
                                 f"FastSiam's {views_per_epoch['fastsiam']}; use one batch size or "
                                 "--equal epochs")
            epochs, every = fast_epochs * int(ratio), fast_every * int(ratio)
            for amp in args.amp:
                name = run_name(method, amp, args)
                runs.append(dict(name=name, seed=seed, config=getattr(args, f"{method}_config"),
                                 epochs=epochs, out=args.out / f"seed{seed}" / name, cfg=c,
                                 overrides=[f"epochs={epochs}", f"save_every_epochs={every}", f"seed={seed}",
                                            f"batch_size={c.batch_size}", f"workers={args.workers}",
                                            f"device={args.device}", "max_images=0", f"amp={amp}",
                                            *args.set]))
    return runs


def finished(run: dict) -> bool:
    try:
        ckpt = load_checkpoint(run["out"] / "checkpoint.pth")
    except CheckpointError:
        return False
    return epochs_done(ckpt) >= run["epochs"]


def epochs_done(ckpt: dict) -> int:
    """Completed epochs of a checkpoint: `epochs_done`, or `epoch` in checkpoints written before it had a name
    (log.jsonl's `epoch` is another count, the 0-based running epoch)."""
    return ckpt["epochs_done"] if "epochs_done" in ckpt else ckpt["epoch"]


def _own_session() -> None:
    """In the child: its own session, because Linux autogroup scheduling shares the CPU per session (each
    method then gets a share of its own on a busy machine, as plain processes do without autogroups); and
    SIGTERM when the tool dies (PR_SET_PDEATHSIG), on which the engine writes a checkpoint and exits."""
    os.setsid()
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def wait_for_previous(run: dict) -> None:
    """A run left by a killed tool may still be writing its last checkpoint: wait until it is gone."""
    pid_file = run["out"] / "engine.pid"
    try:
        pid = int(pid_file.read_text())
    except (OSError, ValueError):
        return
    while True:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
        except OSError:
            return  # gone (or not Linux)
        if str(run["out"]) not in cmdline:
            return  # the pid now belongs to something else
        time.sleep(0.2)


def launch(run: dict, data_dir: Path, threads: int) -> subprocess.Popen:
    env = dict(os.environ)
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    run["out"].mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pretrain", "--config", str(run["config"]), "--data", str(data_dir),
           "--output-dir", str(run["out"]), *run["overrides"]]
    log = open(run["out"].parent / f"{run['name']}.log", "a")
    print(f"start seed {run['seed']} {run['name']}: {' '.join(cmd)}", flush=True)
    log.write(f"\n$ {' '.join(cmd)}\n")
    log.flush()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            preexec_fn=_own_session)
    (run["out"] / "engine.pid").write_text(str(proc.pid))
    return proc


# ============ evaluation ============

class Evaluator:
    """Decodes the bank (pretraining images) and the test images once; kNN top-1 of a backbone."""

    def __init__(self, bank_paths, bank_labels, test_paths, test_labels, num_classes, image_size, device, k,
                 t):
        self.bank_images = knn.load_images(bank_paths, image_size)  # M x 3 x S x S uint8
        self.test_images = knn.load_images(test_paths, image_size)  # N x 3 x S x S uint8
        self.bank_labels, self.test_labels = bank_labels, test_labels
        self.num_classes, self.device, self.k, self.t = num_classes, device, k, t
        self.signature = dict(bank=len(bank_paths), test=len(test_paths), k=k, t=t, image_size=image_size)

    def __call__(self, backbone) -> float:
        backbone = backbone.to(self.device)
        bank = knn.extract_features(backbone, self.bank_images, self.device)
        test = knn.extract_features(backbone, self.test_images, self.device)
        pred = knn.knn_predict(test, bank, self.bank_labels, self.num_classes, self.k, self.t)
        return (pred.cpu() == self.test_labels).float().mean().item()


def load_results(path: Path) -> dict:
    if not path.exists():
        return {"evaluations": {}}
    try:
        return json.loads(path.read_text())
    except ValueError:
        raise BenchError(f"{path} is not valid JSON; move it away to start the evaluations afresh") from None


def save_results(results: dict, out: Path) -> None:
    tmp = out / ".results.json.tmp"
    tmp.write_text(json.dumps(results, indent=1, sort_keys=True))
    os.replace(tmp, out / "results.json")
    write_table(results, out / "table.md")
    write_plot(results, out / "plot.png")


def evaluate_pending(runs, results, evaluator, out: Path, random_cfg) -> int:
    """Evaluate the random init (per seed) and every kept checkpoint not yet in results; returns the count."""
    evals, done = results["evaluations"], 0
    for seed in sorted({r["seed"] for r in runs}):
        key = f"seed{seed}/random"
        if evals.get(key, {}).get("knn") != evaluator.signature:
            torch.manual_seed(seed)  # as the engine does before building the model
            model = SiameseNet(random_cfg.arch, random_cfg.dim, random_cfg.pred_dim, random_cfg.cifar_stem)
            evals[key] = dict(method="random", seed=seed, epoch=0, iteration=0, views=0,
                              knn_top1=evaluator(model.backbone), knn=evaluator.signature)
            done += 1
            save_results(results, out)
            print(f"seed {seed} random init: kNN top-1 {evals[key]['knn_top1']:.2%}", flush=True)
    for run in runs:
        for path in sorted(run["out"].glob("checkpoint_[0-9]*.pth")):
            key = f"seed{run['seed']}/{run['name']}/{path.stem}"
            try:
                ckpt = load_checkpoint(path)
            except CheckpointError:
                continue  # being replaced right now: next round
            old = evals.get(key, {})
            if old.get("knn") == evaluator.signature and old.get("iteration") == ckpt["iteration"]:
                continue
            c = ckpt["config"]
            model = load_model(path)
            evals[key] = dict(method=run["name"], seed=run["seed"], epoch=epochs_done(ckpt),
                              amp=c.get("_run", {}).get("amp"),
                              iteration=ckpt["iteration"],
                              views=ckpt["iteration"] * c["batch_size"] * c["num_views"],
                              knn_top1=evaluator(model.backbone), knn=evaluator.signature)
            done += 1
            save_results(results, out)
            e = evals[key]
            print(f"seed {run['seed']} {run['name']} epoch {e['epoch']} ({e['views']:,} views): "
                  f"kNN top-1 {e['knn_top1']:.2%}", flush=True)
    return done


# ============ report: table.md and plot.png from results.json alone ============

LABELS = {"fastsiam": "FastSiam (4 views)", "simsiam": "SimSiam (2 views)", "random": "random init"}


def label(name: str) -> str:
    """fastsiam -> FastSiam (4 views); fastsiam_bf16 -> FastSiam (4 views), amp=bf16."""
    method, _, amp = name.partition("_")
    return LABELS.get(method, method) + (f", amp={amp}" if amp else "")


def grouped(results: dict) -> dict[str, dict[int, list[dict]]]:
    """method -> views -> evaluations (one per seed)."""
    groups: dict[str, dict[int, list[dict]]] = {}
    for e in results["evaluations"].values():
        groups.setdefault(e["method"], {}).setdefault(e["views"], []).append(e)
    return groups


def cell(evals: list[dict]) -> str:
    acc = np.array([e["knn_top1"] for e in evals]) * 100
    if len(acc) == 1:
        return f"{acc[0]:.2f}"
    return f"{acc.mean():.2f} ± {acc.std(ddof=1):.2f} (n={len(acc)}: {', '.join(f'{a:.2f}' for a in acc)})"


def write_table(results: dict, path: Path) -> None:
    groups = grouped(results)
    methods = sorted(set(groups) - {"random"}, key=lambda m: (m.split("_")[0] != "fastsiam", m))
    heads = [f"{label(m)} kNN top-1 % (epoch)" for m in methods]
    lines = ["| views per method | " + " | ".join(heads) + " |",
             "|---:|" + "---:|" * len(methods)]
    if "random" in groups:
        lines.append("| 0 (random init) | " + " | ".join(cell(groups["random"][0]) for _ in methods) + " |")
    for views in sorted({v for m in methods for v in groups[m]}):
        row = []
        for m in methods:
            evals = groups[m].get(views)
            row.append(f"{cell(evals)} ({evals[0]['epoch']})" if evals else "")
        lines.append(f"| {views:,} | " + " | ".join(row) + " |")
    sig = next(iter(results["evaluations"].values()), {}).get("knn", {})
    lines.append("")
    lines.append(f"kNN: k={sig.get('k')}, cosine, t={sig.get('t')}; bank {sig.get('bank', 0):,} pretraining "
                 f"images, {sig.get('test', 0):,} test images. Several seeds: mean ± sample std.")
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)


def write_plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    groups = grouped(results)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    # both methods start from the random init (same seed, same network): it is the 0-views point of each curve
    start = groups.get("random", {}).get(0, [])
    methods = sorted(set(groups) - {"random"}, key=lambda m: (m.split("_")[0] != "fastsiam", m))
    for m, colour in zip(methods, [f"C{i}" for i in range(10)]):
        points = {0: start, **groups[m]} if start else groups[m]
        views = sorted(points)
        ax.plot(views, [100 * np.mean([e["knn_top1"] for e in points[v]]) for v in views], "o-", color=colour,
                label=label(m))
        for v in views:
            if len(points[v]) > 1:  # several seeds: the mean is the line, each seed a faint dot
                accs = [100 * e["knn_top1"] for e in points[v]]
                ax.plot([v] * len(accs), accs, ".", color=colour, alpha=0.4)
    if start:
        random_acc = 100 * np.mean([e["knn_top1"] for e in start])
        ax.axhline(random_acc, color="grey", ls="--", label=LABELS["random"])
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x / 1000:g}k"))
    ax.set_xlim(left=0)
    sig = next(iter(results["evaluations"].values()), {}).get("knn", {})
    ax.set(xlabel="views processed per method", ylabel="kNN top-1 (%)",
           title=f"CIFAR-10, ResNet-18: kNN (k={sig.get('k')}) on {sig.get('test', 0):,} test images")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name("." + path.name + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


# ============ main ============

def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="output folder (outside the repo or under runs/)")
    p.add_argument("--data", type=Path, default=Path("data/cifar10"), help="get_cifar10 cache: train/, test/")
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
            raise BenchError(f"{args.data / split} not found: run tools.get_cifar10 --out {args.data}")
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
    except (BenchError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
