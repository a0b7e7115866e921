"""Views/s of the FastSiam training step in fp32, bf16 and channels_last, per-view vs joint BN, and the share
of time spent waiting for data behind a real DataLoader (pretrain.data) over generated photo-like JPEGs.

    python -m tools.bench.train                          # both settings below, defaults for this device
    python -m tools.bench.train --settings proxy --rounds 5
    python -m tools.bench.train --settings paper --steps 20 --workers 16    # one GPU

Settings: proxy = the CIFAR-10 proxy (ResNet-18 with the CIFAR stem, 32 px, batch 32 x 4 views, 32 x 32
JPEGs); paper = the paper's run (ResNet-50, 224 px, batch 32 x 4 views, 500 x 375 JPEGs).
Variants (one model each, same initial weights): fp32; fp32 + channels_last; bf16 autocast; bf16 +
channels_last (what amp=bf16, and amp=auto on a CPU with AMX/AVX512-BF16, runs); bn_mode joint with the
precision amp=auto resolves to here, against per-view BN at that precision.
The step is the engine's own (pretrain/engine.py sgd_step): uint8 views to the device, DeviceAugment there,
SiameseNet forward under autocast, the loss in fp32, backward, SGD, loss.item(). All variants draw batches
from one DataLoader and run interleaved (`--steps` steps each, `--rounds` rounds), so each ratio compares
variants measured under the same load. Per variant: step views/s (loader excluded), fed views/s (loader
included) and data wait = time blocked on the next batch / total time. Ratios are of step views/s.
The last line is `train step: bf16 X.Xx fp32 (resnet18 32px)`: bf16 + channels_last over fp32, proxy setting.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import torch

from pretrain import data, precision
from pretrain.augment import DeviceAugment, keep_freed_memory
from pretrain.engine import sgd_step
from pretrain.model import SiameseNet
from tools.data.jpegs import make_jpegs

SETTINGS = {  # arch, CIFAR stem, view size, generated image size (h, w)
    "proxy": dict(arch="resnet18", cifar_stem=True, size=32, image=(32, 32)),
    "paper": dict(arch="resnet50", cifar_stem=False, size=224, image=(375, 500)),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class Step:
    """One training step as the engine runs it, for one variant (precision, memory format, bn_mode)."""

    def __init__(self, setting: dict, prec: precision.Precision, bn_mode: str, device: torch.device):
        cuda = device.type == "cuda"
        self.device, self.prec = device, prec
        torch.manual_seed(0)
        model = SiameseNet(setting["arch"], cifar_stem=setting["cifar_stem"], bn_mode=bn_mode)
        self.model = model.to(device, memory_format=prec.memory_format).train()
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4,
                                   **({"fused": True} if cuda else {"foreach": True}))
        self.scaler = torch.amp.GradScaler("cuda", enabled=prec.needs_scaler)
        self.aug = DeviceAugment(blur=setting["size"] > 32)  # the CIFAR configs have no blur
        self.gen = torch.Generator().manual_seed(0)
        self.autocast = prec.autocast()

    def __call__(self, views: torch.Tensor) -> float:
        x = views.to(self.device, non_blocking=True)  # N x V x 3 x S x S uint8
        n, v = x.shape[:2]
        x = self.aug(x.flatten(0, 1), self.gen).view(n, v, *x.shape[2:])
        fmt = self.prec.memory_format
        xs = [x[:, i].contiguous(memory_format=fmt) for i in range(v)]  # V x (N x 3 x S x S)
        loss, _ = sgd_step(self.model, self.opt, self.scaler, xs, self.autocast)
        return loss.item()  # the engine reads the loss every step: a sync, as here


def variants(device: torch.device) -> tuple[dict[str, tuple[precision.Precision, str]], precision.Precision]:
    """name -> (precision, bn_mode); and what amp=auto resolves to on this device."""
    p = precision.Precision
    auto = precision.resolve("auto", device)
    out = {
        "fp32": (p(device.type, None, False, "off"), "per_view"),
        "fp32 + channels_last": (p(device.type, None, True, "off"), "per_view"),
        "bf16": (p(device.type, torch.bfloat16, False, "bf16"), "per_view"),
        "bf16 + channels_last": (p(device.type, torch.bfloat16, True, "bf16"), "per_view"),
        f"amp auto ({auto.name}) joint BN": (auto, "joint"),
    }
    return out, auto


def per_view_twin(name: str, auto: precision.Precision) -> str:
    """The per-view variant with the precision and memory format amp=auto resolves to."""
    base = "fp32" if auto.dtype is None else {torch.bfloat16: "bf16"}.get(auto.dtype, "fp32")
    return base + (" + channels_last" if auto.channels_last else "")


def bench_setting(name: str, args, device: torch.device, root: str) -> dict:
    setting = SETTINGS[name]
    files, _ = data.scan(root, 89_478_485)
    dataset = data.MultiViewDataset(root, files, args.views, setting["size"], (0.2, 1.0), "fast",
                                    blur=setting["size"] > 32)
    batches = data.EpochBatches(len(files), args.batch)
    loader = data.build_loader(dataset, batches, args.workers, pin_memory=device.type == "cuda")
    epoch, it = 0, None

    def next_batch():
        nonlocal epoch, it
        while True:
            if it is None:
                batches.set_epoch(epoch)
                it = iter(loader)
            try:
                return next(it)[0]
            except StopIteration:
                it, epoch = None, epoch + 1

    todo, auto = variants(device)
    steps = {k: Step(setting, prec, bn, device) for k, (prec, bn) in todo.items()}
    t = time.perf_counter()
    for step in steps.values():  # warm-up: first-call costs, the device stage's compile at 224 px
        for _ in range(args.warmup):
            step(next_batch())
    sync(device)
    print(f"[{name}] {setting['arch']} at {setting['size']} px, batch {args.batch} x {args.views} views, "
          f"{args.workers} loader workers; warm-up {time.perf_counter() - t:.0f} s", flush=True)
    times = {k: [] for k in steps}  # per round: (step seconds, wait seconds, views)
    for _ in range(args.rounds):
        for k, step in steps.items():
            busy = wait = 0.0
            views = 0
            for _ in range(args.steps):
                t0 = time.perf_counter()
                batch = next_batch()
                t1 = time.perf_counter()
                step(batch)
                sync(device)
                busy += time.perf_counter() - t1
                wait += t1 - t0
                views += batch.shape[0] * batch.shape[1]
            times[k].append((busy, wait, views))
    res = {}
    for k, rounds in times.items():
        step_rate = statistics.median(v / b for b, _, v in rounds)
        fed_rate = statistics.median(v / (b + w) for b, w, v in rounds)
        wait = statistics.median(w / (b + w) for b, w, _ in rounds)
        res[k] = {"step_views_per_s": step_rate, "fed_views_per_s": fed_rate, "data_wait": wait}
    base = res["fp32"]["step_views_per_s"]
    print(f"{'variant':<32}{'step views/s':>14}{'fed views/s':>13}{'data wait':>11}{'vs fp32':>9}")
    for k, r in res.items():
        r["vs_fp32"] = r["step_views_per_s"] / base
        print(f"{k:<32}{r['step_views_per_s']:>14.1f}{r['fed_views_per_s']:>13.1f}{r['data_wait']:>10.1%}"
              f"{r['vs_fp32']:>8.2f}x")
    joint = next(k for k in res if "joint" in k)
    twin = per_view_twin(joint, auto)
    res["joint_vs_per_view"] = res[joint]["step_views_per_s"] / res[twin]["step_views_per_s"]
    print(f"bn_mode joint {res['joint_vs_per_view']:.2f}x per_view ({twin})", flush=True)
    return res


def describe_machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name()
    flags = precision.cpu_bf16_flags()
    bf16 = (f"native bf16: {'+'.join(flags)}" if flags
            else "no native bf16 (no amx_bf16/avx512_bf16): bf16 emulated")
    return (f"{precision.cpu_name()}, {os.cpu_count()} CPUs, {bf16}, {torch.get_num_threads()} torch "
            f"threads, load average {os.getloadavg()[0]:.1f}")


def main(argv=None) -> int:
    cuda = torch.cuda.is_available()
    ap = argparse.ArgumentParser(prog="python -m tools.bench.train", description=__doc__.split("\n")[0])
    ap.add_argument("--settings", default="proxy,paper", help="comma-separated: proxy, paper")
    ap.add_argument("--batch", type=int, default=32, help="images per step (x views)")
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--steps", type=int, default=0, help="timed steps per variant and round (default by "
                                                          "setting: proxy 3, paper 1 on CPU; 10 on CUDA)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=2 if cuda else 1)
    ap.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1) if cuda else 1)
    ap.add_argument("--threads", type=int, default=0 if cuda else 1,
                    help="torch threads (default on the CPU: 1, so that a shared machine's other processes do "
                         "not leave OpenMP threads spinning; 0 = torch's default)")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [s for s in args.settings.split(",") if s]
    bad = sorted(set(names) - set(SETTINGS))
    if bad or not names:
        print(f"error: unknown setting(s) {bad}; use proxy and/or paper", file=sys.stderr)
        return 2
    device = torch.device("cuda" if cuda else "cpu")
    if cuda:
        torch.backends.cudnn.benchmark = True
    else:
        keep_freed_memory()  # as the engine does on the CPU
    print(f"device: {describe_machine(device)}; torch {torch.__version__}", flush=True)
    results = {}
    for name in names:
        a = argparse.Namespace(**vars(args))
        a.steps = args.steps or (10 if cuda else {"proxy": 3, "paper": 1}[name])
        h, w = SETTINGS[name]["image"]
        with tempfile.TemporaryDirectory(prefix="bench_train_") as root:
            make_jpegs(root, 4 * args.batch, height=h, width=w)
            results[name] = bench_setting(name, a, device, root)
    if args.json:
        with open(args.json + ".tmp", "w") as f:
            json.dump({"args": vars(args), "device": describe_machine(device), "results": results}, f,
                      indent=1)
        os.replace(args.json + ".tmp", args.json)
    if "proxy" in results:
        r = results["proxy"]
        ratio = r["bf16 + channels_last"]["step_views_per_s"] / r["fp32"]["step_views_per_s"]
        native = cuda or precision.cpu_bf16_flags()
        note = "" if native else "; no native bf16 on this CPU: amp auto runs fp32"
        print(f"train step: bf16 {ratio:.1f}x fp32 (resnet18 32px{note})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
