"""Views/s of the FastSiam training step, per-view BN vs one joint batch, and the share of step time spent
waiting for data behind a real DataLoader (pretrain.data) over generated photo-like JPEGs.

    python tools/bench_train.py          # CPU default: ResNet-18, 64 px, batch 8 x 4 views (~2 min)
    python tools/bench_train.py --arch resnet50 --size 224 --batch 32 --workers 16 --steps 50   # one GPU

The step is the engine's (pretrain/engine.py): uint8 views to the device, DeviceAugment there (augment=fast)
or the PIL recipe in the workers (augment=reference), SiameseNet forward, fastsiam_loss, backward, SGD (fused
on CUDA), loss.item(). On CUDA: AMP (bf16 where supported, else fp16 with a GradScaler) and channels_last
unless disabled.
Two measurements per BN mode:
  compute    the step on one batch held in memory (device stage included, loader excluded): the upper bound
  loader     the step fed by the DataLoader; data_wait = time blocked on the next batch / total time
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from pretrain import data  # noqa: E402
from pretrain.augment import DeviceAugment  # noqa: E402
from pretrain.engine import sgd_step  # noqa: E402
from pretrain.model import SiameseNet  # noqa: E402
from tools.bench_augment import make_jpegs  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class Step:
    """One training step, as the engine runs it."""

    def __init__(self, args, bn_mode: str, device: torch.device):
        cuda = device.type == "cuda"
        self.device = device
        self.memory_format = torch.channels_last if cuda and args.channels_last else torch.contiguous_format
        self.amp_dtype = None
        if cuda and args.amp:
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        torch.manual_seed(0)
        self.model = SiameseNet(args.arch, args.dim, args.pred_dim, bn_mode=bn_mode)
        self.model = self.model.to(device, memory_format=self.memory_format).train()
        self.net = torch.compile(self.model) if args.compile else self.model
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4,
                                   **({"fused": True} if cuda else {"foreach": True}))
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.aug = DeviceAugment() if args.augment == "fast" else None
        self.gen = torch.Generator().manual_seed(0)

    def __call__(self, views: torch.Tensor) -> float:
        x = views.to(self.device, non_blocking=True)  # N x V x 3 x S x S
        n, v = x.shape[:2]
        if self.aug is not None:
            x = self.aug(x.flatten(0, 1), self.gen).view(n, v, *x.shape[2:])
        xs = [x[:, i].contiguous(memory_format=self.memory_format) for i in range(v)]  # V x (N x 3 x S x S)
        autocast = torch.autocast("cuda", self.amp_dtype) if self.amp_dtype else contextlib.nullcontext()
        loss, _ = sgd_step(self.net, self.opt, self.scaler, xs, autocast)
        return loss.item()  # the engine reads the loss every step: a sync, as here


def run_compute(step: Step, views: torch.Tensor, warmup: int, steps: int) -> float:
    for _ in range(warmup):
        step(views)
    sync(step.device)
    t = time.perf_counter()
    for _ in range(steps):
        step(views)
    sync(step.device)
    return steps * views.shape[0] * views.shape[1] / (time.perf_counter() - t)


def run_loader(step: Step, loader, batches, warmup: int, steps: int) -> tuple[float, float]:
    """(views/s, data-wait share) over `steps` steps after `warmup`, epochs repeated as needed."""
    done, wait, epoch, t0 = 0, 0.0, 0, None
    n_views = 0
    while done < warmup + steps:
        batches.set_epoch(epoch)
        t_prev = time.perf_counter()
        for views, _, _ in loader:
            t_data = time.perf_counter()
            if done == warmup:  # start the clock after warm-up (workers running, first batches prefetched)
                t0, wait, n_views = t_data, 0.0, 0
            elif t0 is not None:
                wait += t_data - t_prev
            step(views)
            done += 1
            if t0 is not None:
                n_views += views.shape[0] * views.shape[1]
            t_prev = time.perf_counter()
            if done == warmup + steps:
                break
        epoch += 1
    total = time.perf_counter() - t0
    return n_views / total, wait / total


def main(argv=None) -> int:
    cuda = torch.cuda.is_available()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", help="image folder (default: generate photo-like 500x375 JPEGs)")
    ap.add_argument("--arch", default="resnet50" if cuda else "resnet18")
    ap.add_argument("--size", type=int, default=224 if cuda else 64)
    ap.add_argument("--batch", type=int, default=32 if cuda else 8, help="images per step (x views)")
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--dim", type=int, default=2048 if cuda else 512)
    ap.add_argument("--pred-dim", type=int, default=512 if cuda else 128)
    ap.add_argument("--steps", type=int, default=50 if cuda else 3)
    ap.add_argument("--warmup", type=int, default=10 if cuda else 1)
    ap.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1) if cuda else 1)
    ap.add_argument("--images", type=int, default=0, help="JPEGs to generate (default: 4 batches' worth)")
    ap.add_argument("--augment", choices=("fast", "reference"), default="fast")
    ap.add_argument("--bn-modes", default="per_view,joint")
    ap.add_argument("--no-amp", dest="amp", action="store_false")
    ap.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    bad = set(args.bn_modes.split(",")) - {"per_view", "joint"}
    if bad:
        print(f"error: unknown bn mode(s) {sorted(bad)}; use per_view and/or joint", file=sys.stderr)
        return 2
    device = torch.device("cuda" if cuda else "cpu")
    if cuda:
        torch.backends.cudnn.benchmark = True

    if args.data is not None:
        return bench(args, args.data, device)
    with tempfile.TemporaryDirectory(prefix="bench_train_") as root:
        make_jpegs(root, args.images or 4 * args.batch)
        return bench(args, root, device)


def bench(args, root: str, device: torch.device) -> int:
    cuda = device.type == "cuda"
    try:
        files, _ = data.scan(root, 89_478_485)
    except data.DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if len(files) < args.batch:
        print(f"error: {len(files)} images under {root} are fewer than one batch of {args.batch}",
              file=sys.stderr)
        return 2
    dataset = data.MultiViewDataset(root, files, args.views, args.size, (0.2, 1.0), args.augment)
    batches = data.EpochBatches(len(files), args.batch)
    loader = data.build_loader(dataset, batches, args.workers, pin_memory=cuda)
    held = next(iter(loader))[0]  # one batch kept in memory for the compute-only figure
    where = (torch.cuda.get_device_name() if cuda else
             f"CPU ({os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}), "
             f"{torch.get_num_threads()} threads")
    print(f"{args.arch} at {args.size} px, batch {args.batch} x {args.views} views, augment={args.augment}, "
          f"{args.workers} workers, {where}; {len(files)} images under {root}", flush=True)

    results = {}
    print(f"{'bn_mode':<10}{'compute views/s':>17}{'loader views/s':>16}{'data wait':>11}")
    for bn_mode in args.bn_modes.split(","):
        step = Step(args, bn_mode, device)
        compute = run_compute(step, held, args.warmup, args.steps)
        fed, wait = run_loader(step, loader, batches, args.warmup, args.steps)
        results[bn_mode] = {"compute_views_per_s": compute, "loader_views_per_s": fed, "data_wait": wait}
        print(f"{bn_mode:<10}{compute:>17.1f}{fed:>16.1f}{wait:>10.1%}", flush=True)
    if args.json:
        with open(args.json + ".tmp", "w") as f:
            json.dump({"args": vars(args), "device": where, "results": results}, f, indent=1)
        os.replace(args.json + ".tmp", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
