"""The pretraining loop: data, model, SGD with per-iteration cosine lr, AMP, DDP, logs, checkpoints, guards.

log.jsonl, one JSON object per line (appended on resume):
  every `log_every` iterations: epoch (0-based index of the running epoch), iteration (global iterations
    done), loss (this iteration, mean over ranks), lr, views_per_s (all ranks), data_wait (share of wall time
    spent waiting for the loader), z_std (mean per-dimension std of L2-normalised z; ~1/sqrt(dim) healthy,
    0 collapsed)
  the last iteration of an epoch instead gets one line with the same keys plus "epoch_end": true, loss_avg
    (mean over the epoch), skipped_images (unreadable files so far), time_s and, with the kNN monitor,
    knn_top1.
  when a signal stops the run (SIGTERM, Ctrl-C): a line for the iterations since the last one, with the same
    keys plus "stopped" (the signal's name) and "checkpoint" (where the run resumes from).
Two epoch counts, two names: log.jsonl's `epoch` is the 0-based index of the epoch running; the checkpoint's
`epochs_done` is the number of completed epochs (its `epoch` holds the same count, for older readers).
Progress on the console: a tqdm bar on a terminal; when stderr is redirected, one line per logging step.
Resume is exact on CPU: the data order and every random draw come from (seed, epoch, index or iteration)
(pretrain/data.py), and checkpoint.pth holds the model, optimizer, scaler and the running sums of the epoch.
"""
from __future__ import annotations

import contextlib
import json
import math
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from pretrain import augment, checkpoint, data, distributed, precision
from pretrain.config import Config, ConfigError, base_lr, to_yaml
from pretrain.loss import fastsiam_loss
from pretrain.model import SiameseNet
from pretrain.schedule import cosine_schedule


class RunError(RuntimeError):
    """The run cannot go on (non-finite loss, unwritable checkpoint); the message says what and where."""


def git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, text=True,
                             capture_output=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.TimeoutExpired):
        return ""


def sgd_step(net, opt, scaler, xs: list[torch.Tensor], autocast) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Forward the V views (xs: V x (N x 3 x S x S)), the Eq. 5 loss, backward and update; returns (loss, z).

    The whole training step after the data: tools/bench/train.py times this same function. The network runs
    under `autocast`; the loss outside it, in float32 (bf16's 8-bit mantissa would round the cosines).
    """
    with autocast:
        p, z = net(xs)
    loss = fastsiam_loss([pi.float() for pi in p], [zi.float() for zi in z])
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    return loss, z


def z_std(z: list[torch.Tensor]) -> float:
    """Collapse monitor: std over the batch of L2-normalised z, averaged over dimensions and views."""
    return float(torch.stack([F.normalize(zi.detach().float(), dim=1).std(dim=0).mean() for zi in z]).mean())


class StopFlag:
    """SIGTERM / Ctrl-C ask the loop to write a checkpoint and exit; a second Ctrl-C interrupts at once."""

    def __init__(self):
        self.signal, self.previous = None, {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self.previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. inside a test runner thread): no handlers
                pass

    def _handle(self, signum, frame):
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name
        print(f"\nreceived {self.signal}: will write a checkpoint after this iteration and exit", flush=True)

    def restore(self):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


class Log:
    """log.jsonl (appended) and TensorBoard scalars, rank 0 only."""

    def __init__(self, out: Path, enabled: bool, tensorboard: bool):
        self.enabled, self.path, self.tb = enabled, out / "log.jsonl", None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out))
            except ImportError:
                data.warn("tensorboard is not installed: no TensorBoard events")

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        try:
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")
        except OSError as e:
            raise RunError(f"cannot append to {self.path}: {e.strerror}") from None
        if self.tb is not None:
            group = "epoch/" if row.get("epoch_end") else "train/"
            for k, v in row.items():
                if type(v) in (int, float) and k not in ("epoch", "iteration"):
                    self.tb.add_scalar(group + k, v, row["iteration"])

    def close(self):
        if self.tb is not None:
            self.tb.close()


@dataclass
class Run:
    """Everything the epoch loop needs, built once by `setup`."""
    cfg: Config
    d: distributed.Dist
    out: Path
    resolved: dict  # the config written to config.yaml and into every checkpoint
    model: SiameseNet  # the plain module: state_dict() without DDP/compile prefixes
    net: torch.nn.Module  # what the step calls: model, DDP(model) and/or torch.compile(...)
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    dataset: data.MultiViewDataset
    batches: data.EpochBatches
    loader: torch.utils.data.DataLoader
    lrs: np.ndarray
    lr: float
    start_iter: int
    scan_skipped: int
    memory_format: torch.memory_format = torch.contiguous_format
    autocast: contextlib.AbstractContextManager = field(default_factory=contextlib.nullcontext)
    device_aug: object = None
    meters: dict = field(default_factory=lambda: {"loss_sum": 0.0, "count": 0})
    runtime_bad: set = field(default_factory=set)

    @property
    def ckpt_path(self) -> Path:
        return self.out / "checkpoint.pth"

    def save(self, it_done: int, epoch_end: bool = False) -> None:
        if not self.d.is_main:
            return
        ipe = self.batches.iters_per_epoch
        state = {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                 "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
                 # epochs_done: completed epochs (log.jsonl's `epoch` is the 0-based running epoch instead);
                 # `epoch` is the same count under its old name, for readers written before (tools/demo.py)
                 "epochs_done": it_done // ipe, "epoch": it_done // ipe, "iteration": it_done,
                 "config": self.resolved,
                 "git": self.resolved["_run"]["git"],
                 "meters": {**self.meters, "bad": sorted(self.runtime_bad)}}
        try:
            checkpoint.save_checkpoint(state, self.ckpt_path)
            ep = it_done // ipe
            if epoch_end and (ep % self.cfg.save_every_epochs == 0 or ep == self.cfg.epochs):
                checkpoint.keep_copy(self.ckpt_path, self.out / f"checkpoint_{ep:04d}.pth")
        except checkpoint.CheckpointError as e:
            raise RunError(str(e)) from None


def train(cfg: Config) -> None:
    d = distributed.setup(cfg.device)
    try:
        run = setup(cfg, d)
        if run is not None:
            loop(run)
    finally:
        distributed.cleanup()


def say(d: distributed.Dist, *msg) -> None:
    if d.is_main:
        print(*msg, flush=True)


def check_output_dir(out: Path) -> None:
    """The output dir must be writable before any work: a read-only or full disk is found now, not at the
    first checkpoint hours later."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        checkpoint.remove_stale_temps(out)  # left by a process killed mid-write
        checkpoint.atomic_write(out / ".write_test", lambda f: f.write(b"ok"))
        (out / ".write_test").unlink()
    except (checkpoint.CheckpointError, OSError):
        raise ConfigError(f"output dir {out} is not writable (read-only or full)") from None


def setup(cfg: Config, d: distributed.Dist) -> Run | None:
    """Check the output dir, scan the data, resume, build model/optimizer/loader; None if nothing is left."""
    cuda = d.device.type == "cuda"
    prec = precision.resolve(cfg.amp, d.device, cfg.channels_last)  # a bad amp for this device: exit 2 now
    if cfg.batch_size % d.world:
        raise ConfigError(f"batch_size {cfg.batch_size} (global) is not divisible by the {d.world} processes")
    per_gpu = cfg.batch_size // d.world

    # ============ output dir and data, checked by rank 0 before anything is built ============
    out = Path(cfg.output_dir)
    scanned = None
    if d.is_main:
        try:
            check_output_dir(out)
            print(f"data: checking the image headers under {cfg.data} ...", flush=True)
            scanned = data.scan(cfg.data, cfg.max_image_pixels, cfg.max_images, cfg.workers)
        except (ConfigError, data.DataError) as e:
            scanned = e  # every rank raises it, rather than waiting for rank 0 forever
    scanned = distributed.broadcast_object(scanned, d)
    if isinstance(scanned, Exception):
        raise scanned
    files, bad = scanned
    for path, reason in bad:
        say(d, f"warning: skipping unreadable image {path}: {reason}")
    batches = data.EpochBatches(len(files), cfg.batch_size, d.rank, d.world, cfg.seed)
    ipe = batches.iters_per_epoch
    if ipe == 0:
        raise data.DataError(f"{len(files)} readable images under {cfg.data} are fewer than one batch "
                             f"({cfg.batch_size})")
    skipped = f" (skipped {len(bad)} unreadable images)" if bad else ""
    say(d, f"data: {len(files)} images under {cfg.data}{skipped}; {ipe} iterations per epoch")

    # ============ resume ============
    ckpt_path = out / "checkpoint.pth"
    ckpt = checkpoint.load_checkpoint(ckpt_path) if ckpt_path.exists() else None
    if ckpt is not None:  # the same trajectory or none: only workers, logging, cadence, kNN, amp may differ
        checkpoint.check_resume(ckpt, cfg, ckpt_path, iters_per_epoch=ipe)
    start_iter = ckpt["iteration"] if ckpt is not None else 0
    if start_iter >= cfg.epochs * ipe:
        say(d, f"{ckpt_path} has done {start_iter} of {cfg.epochs * ipe} iterations: nothing to do")
        return None

    # ============ config.yaml: the resolved config and what this run derived from it ============
    lr = base_lr(cfg)
    amp_name = str(prec.dtype).replace("torch.", "") if prec.dtype else None
    resolved = cfg.to_dict()
    resolved["_run"] = {
        "git": git_sha(), "world_size": d.world, "per_gpu_batch": per_gpu, "global_batch": cfg.batch_size,
        "lr": lr, "iters_per_epoch": ipe, "num_images": len(files), "skipped_images": len(bad),
        "device": str(d.device), "amp": prec.name, "amp_dtype": amp_name,
        "amp_reason": prec.reason, "channels_last": prec.channels_last, "torch": str(torch.__version__),
    }
    if d.is_main:
        checkpoint.atomic_write(out / "config.yaml", lambda f: f.write(to_yaml(resolved).encode()))
    how = "set" if cfg.lr is not None else f"{cfg.lr_rule} rule"
    amp_msg = f", amp {prec.name} ({prec.reason})" + (", channels_last" if prec.channels_last else "")
    unit = "GPU" if cuda else "process"
    if not cuda and cfg.augment == "fast":
        augment.keep_freed_memory()  # each batch of float views reuses mapped pages (pretrain/augment.py)
    say(d, f"batch: {per_gpu} per {unit} x {d.world} processes = {cfg.batch_size} global, {cfg.num_views} "
           f"views; lr {lr:g} ({how}); device {d.device}{amp_msg}; bn_mode {cfg.bn_mode}")

    # ============ model and optimizer ============
    torch.manual_seed(cfg.seed)  # initial weights only: every data-side draw has its own derived generator
    model = SiameseNet(cfg.arch, cfg.dim, cfg.pred_dim, cfg.cifar_stem, cfg.bn_mode)
    if cfg.sync_bn and d.enabled:
        if cuda:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        elif d.is_main:
            data.warn("sync_bn needs CUDA (torch's SyncBatchNorm is GPU-only): per-process BN on CPU")
    memory_format = prec.memory_format
    model = model.to(d.device, memory_format=memory_format)
    groups = [
        {"params": [*model.backbone.parameters(), *model.projector.parameters()], "fix_lr": False},
        # SimSiam's --fix-pred-lr (in its README command): the predictor keeps the initial lr, no decay
        {"params": list(model.predictor.parameters()), "fix_lr": cfg.fix_pred_lr},
    ]
    opt = torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                          **({"fused": True} if cuda else {"foreach": True}))
    scaler = torch.amp.GradScaler("cuda", enabled=prec.needs_scaler)  # bf16 needs no loss scaling
    meters, runtime_bad = {"loss_sum": 0.0, "count": 0}, set()
    if ckpt is not None:
        checkpoint.load_weights(model, ckpt, ckpt_path)  # strict; one line naming a mismatched tensor
        opt.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler") and scaler.is_enabled():
            scaler.load_state_dict(ckpt["scaler"])
        saved = dict(ckpt.get("meters") or {})
        runtime_bad = set(saved.pop("bad", []))
        meters.update(saved)
        say(d, f"resuming from {ckpt_path}: iteration {start_iter} (epoch {start_iter // ipe + 1})")
    net = model
    if d.enabled:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[d.local_rank] if cuda else None)
    if cfg.compile:
        net = torch.compile(net)

    # ============ data pipeline ============
    dataset = data.MultiViewDataset(cfg.data, files, cfg.num_views, cfg.image_size, (cfg.crop_scale_min, 1.0),
                                    cfg.augment, cfg.blur, cfg.seed, cfg.max_image_pixels)
    return Run(
        cfg=cfg, d=d, out=out, resolved=resolved, model=model, net=net, opt=opt, scaler=scaler,
        dataset=dataset,
        batches=batches, loader=data.build_loader(dataset, batches, cfg.workers, pin_memory=cuda),
        lrs=cosine_schedule(lr, cfg.epochs, ipe, cfg.warmup_epochs), lr=lr, start_iter=start_iter,
        scan_skipped=len(bad), memory_format=memory_format,
        autocast=prec.autocast(),
        device_aug=augment.DeviceAugment(blur=cfg.blur) if cfg.augment == "fast" else None,
        meters=meters, runtime_bad=runtime_bad,
    )


def loop(run: Run) -> None:
    cfg, d = run.cfg, run.d
    log = Log(run.out, d.is_main, cfg.tensorboard)
    stop = StopFlag()
    it = run.start_iter
    try:
        for epoch in range(it // run.batches.iters_per_epoch, cfg.epochs):
            it, stopped = train_one_epoch(run, epoch, it, log, stop)
            if stopped:
                say(d, f"stopped at iteration {it}; checkpoint written to {run.ckpt_path}. "
                       "Rerun the same command to resume.")
                return
    finally:
        stop.restore()
        log.close()
    say(d, f"done: {cfg.epochs} epochs, {it} iterations; weights in {run.ckpt_path}")


def train_one_epoch(run: Run, epoch: int, it: int, log: Log, stop: StopFlag) -> tuple[int, bool]:
    """Run the rest of `epoch` from global iteration `it`; returns (iterations done, stopped by a signal)."""
    cfg, d, ipe = run.cfg, run.d, run.batches.iters_per_epoch
    skip = it - epoch * ipe  # > 0 when resuming mid-epoch: those batches are not drawn again
    if skip == 0:
        run.meters.update(loss_sum=0.0, count=0)
    run.batches.set_epoch(epoch, skip)
    run.model.train()
    t_epoch = t_mark = t_prev = time.perf_counter()
    wait = wait_mark = 0.0
    it_mark = it
    collapse_level = cfg.collapse_threshold / math.sqrt(cfg.dim)
    # a live bar on a terminal; redirected to a file its \r updates would pile up on one line, so there the
    # progress is one printed line per logging step instead
    tty = sys.stderr.isatty()
    bar = tqdm(total=ipe, initial=skip, desc=f"epoch {epoch + 1}/{cfg.epochs}",
               disable=not (d.is_main and tty), dynamic_ncols=True, leave=False)
    for views, bad_idx, reasons in run.loader:
        wait += time.perf_counter() - t_prev
        for i, reason in zip(bad_idx.tolist(), reasons, strict=True):
            if i >= 0 and i not in run.runtime_bad:
                run.runtime_bad.add(i)
                data.warn(f"skipping unreadable image {run.dataset.path(i)}: {reason}")

        # ---- one step ----
        for g in run.opt.param_groups:
            g["lr"] = run.lr if g["fix_lr"] else float(run.lrs[it])
        x = views.to(d.device, non_blocking=True)  # N x V x 3 x S x S (uint8, or float for augment=reference)
        n, v = x.shape[:2]
        if run.device_aug is not None:  # colour ops, drawn from (seed, epoch, iteration, rank)
            x = run.device_aug(x.flatten(0, 1), data.generator(cfg.seed, epoch, it, d.rank))
            x = x.view(n, v, *x.shape[1:])
        xs = [x[:, i].contiguous(memory_format=run.memory_format) for i in range(v)]  # V x (N x 3 x S x S)
        loss, z = sgd_step(run.net, run.opt, run.scaler, xs, run.autocast)

        # ---- ranks agree on the loss and on stopping: one small all-reduce ----
        flags = torch.stack([loss.detach().float(), loss.new_tensor(float(stop.signal is not None))])
        if d.enabled:
            torch.distributed.all_reduce(flags)
            flags[0] /= d.world
        loss_val, stop_now = flags[0].item(), flags[1].item() > 0
        if not math.isfinite(loss_val):
            bar.close()
            last_good = run.ckpt_path if run.ckpt_path.exists() else "none written yet"
            raise RunError(f"loss is {loss_val} at iteration {it + 1} (epoch {epoch + 1}); stopping. "
                           f"The last good checkpoint is {last_good}")
        it += 1
        run.meters["loss_sum"] += loss_val
        run.meters["count"] += 1
        bar.set_postfix(loss=f"{loss_val:.4f}", refresh=False)
        bar.update(1)

        # ---- log (also when stopping: a row for the iterations since the last one, marked "stopped") ----
        last = it == (epoch + 1) * ipe
        if it % cfg.log_every == 0 or last or stop_now:
            now = time.perf_counter()
            zs = z_std(z)
            row = {"epoch": epoch, "iteration": it, "loss": loss_val, "lr": float(run.lrs[it - 1]),
                   "views_per_s": (it - it_mark) * cfg.batch_size * v / (now - t_mark),
                   "data_wait": (wait - wait_mark) / (now - t_mark), "z_std": zs}
            it_mark, t_mark, wait_mark = it, now, wait
            if stop_now:
                row.update(stopped=stop.signal or "signal on another rank", checkpoint=str(run.ckpt_path))
            if not last:  # the epoch's last iteration goes into the epoch_end line below
                log.write(row)
                if not tty:
                    say(d, f"epoch {epoch + 1}/{cfg.epochs} iteration {it - epoch * ipe}/{ipe}: loss "
                           f"{loss_val:.4f}, lr {row['lr']:.4g}, {row['views_per_s']:.0f} views/s, data wait "
                           f"{row['data_wait']:.0%}, z_std {zs:.4f}")
            if zs < collapse_level:
                data.warn(f"z_std {zs:.4g} at iteration {it} is below collapse_threshold / sqrt(dim) = "
                          f"{collapse_level:.3g}: the representation may be collapsing")

        # ---- end of epoch / checkpoints / stop ----
        if last:
            bar.close()
            elapsed = time.perf_counter() - t_epoch
            row.update(epoch_end=True, loss_avg=run.meters["loss_sum"] / max(run.meters["count"], 1),
                       skipped_images=run.scan_skipped + _sum_over_ranks(len(run.runtime_bad), d),
                       time_s=elapsed, views_per_s=(ipe - skip) * cfg.batch_size * v / elapsed,
                       data_wait=wait / elapsed)
            if cfg.knn_train and (epoch + 1) % cfg.knn_every == 0:
                row["knn_top1"] = _knn(run)
            log.write(row)
            knn = f", kNN top-1 {row['knn_top1']:.2%}" if "knn_top1" in row else ""
            n_bad = row["skipped_images"]
            say(d, f"epoch {epoch + 1}/{cfg.epochs}: loss {row['loss_avg']:.4f} (last {loss_val:.4f}), "
                   f"z_std {zs:.4f}, {row['views_per_s']:.0f} views/s, data wait {row['data_wait']:.0%}{knn}"
                   + (f", skipped {n_bad} unreadable images" if n_bad else ""))
            run.save(it, epoch_end=True)
        elif stop_now or (cfg.checkpoint_every and it % cfg.checkpoint_every == 0):
            run.save(it)
        if stop_now:
            bar.close()
            return it, True
        t_prev = time.perf_counter()
    return it, False


def _sum_over_ranks(n: int, d: distributed.Dist) -> int:
    if not d.enabled:
        return n
    t = torch.tensor([float(n)], device=d.device)
    torch.distributed.all_reduce(t)
    return int(t.item())


def _knn(run: Run) -> float | None:
    """Weighted kNN top-1 (k=200, cosine, t=0.1) of the backbone on the labelled folders; rank 0 computes."""
    cfg, acc = run.cfg, None
    if run.d.is_main:
        from pretrain.knn import evaluate_knn  # lazy: only runs that ask for the monitor need it

        acc = evaluate_knn(run.model.backbone, cfg.knn_train, cfg.knn_val, cfg.image_size, run.d.device,
                           k=cfg.knn_k, t=cfg.knn_t, workers=min(cfg.workers, 4))
        run.model.train()
    return distributed.broadcast_object(acc, run.d)
