"""The study's supervised row: cross-entropy on the CIFAR-10 labels, trained on exactly the pretraining views.

    python -m tools.study.supervised --config configs/pretrain/cifar10_simsiam_bs32.yaml \\
        --data runs/study/data/pretrain --output-dir runs/study/pretrain/supervised [key=value ...]

The small-scale analogue of Table 1's ImageNet row. Everything but the loss is pretraining's own code and
config: the same config file and overrides (`pretrain/config.py`, strict), the same image scan, deterministic
batches and multi-view crops (`pretrain/data.py`), the same colour augmentation (`pretrain/augment.py`), the
same ResNet backbone and initial weights (`pretrain/model.py` after `torch.manual_seed(seed)`), the same SGD,
lr rule and per-iteration cosine schedule, the same checkpoints (`checkpoint.pth`, `checkpoint_XXXX.pth`)
and SIGTERM handling. Each of the V views of an image is classified (backbone + a linear layer on the
pooled features, torchvision's `fc`) and the loss is the mean cross-entropy over the views, so the row
sees the same number of views through forward and backward as a V-view self-supervised run of the same
epochs. Labels are the class folders of the data (`<class>/<image>`, sorted names). One process, no DDP.

The checkpoint's `model` holds `backbone.*` (with the classifier as `backbone.fc.*`), so
`python -m transfer.convert` reads it as a FastSiam checkpoint and drops the classifier.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from pretrain import augment, checkpoint, data, engine, precision
from pretrain.__main__ import run as run_cli
from pretrain.config import ConfigError, base_lr, to_yaml
from pretrain.model import resnet_backbone
from pretrain.schedule import cosine_schedule


class Classifier(nn.Module):
    """pretrain's ResNet backbone with a linear classifier as its `fc` (keys `backbone.*`)."""

    def __init__(self, arch: str, cifar_stem: bool, num_classes: int):
        super().__init__()
        self.backbone, feat_dim = resnet_backbone(arch, cifar_stem)
        self.backbone.fc = nn.Linear(feat_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)  # N x classes


def labels_of(files: list[str]) -> tuple[torch.Tensor, list[str]]:
    """Class index of every relative path `<class>/...`, classes in sorted order."""
    names = [f.replace("\\", "/").split("/")[0] for f in files]
    if any("/" not in f.replace("\\", "/") for f in files):
        raise ConfigError("the supervised row needs labelled data: images in class folders <class>/<image>")
    classes = sorted(set(names))
    index = {c: i for i, c in enumerate(classes)}
    return torch.tensor([index[n] for n in names]), classes


class LabelledViews(torch.utils.data.Dataset):
    """pretrain's MultiViewDataset, each item with its label: (views, label, bad_index, reason)."""

    def __init__(self, views: data.MultiViewDataset, labels: torch.Tensor):
        self.views, self.labels = views, labels

    def __len__(self) -> int:
        return len(self.views)

    def __getitem__(self, key: tuple[int, int]):
        v, bad, reason = self.views[key]
        # an unreadable image is replaced by a later one (data.py); its label is then not the one read here,
        # but the header scan already removed every unreadable file, so this only matters if one goes bad
        return v, self.labels[key[1]], bad, reason


def train(cfg) -> None:
    use_cuda = torch.cuda.is_available() if cfg.device == "auto" else cfg.device == "cuda"
    device = torch.device("cuda" if use_cuda else "cpu")
    prec = precision.resolve(cfg.amp, device, cfg.channels_last)  # the pretraining runs' own precision
    out = Path(cfg.output_dir)
    engine.check_output_dir(out)
    files, bad = data.scan(cfg.data, cfg.max_image_pixels, cfg.max_images)
    for path, reason in bad:
        data.warn(f"skipping unreadable image {path}: {reason}")
    labels, classes = labels_of(files)
    batches = data.EpochBatches(len(files), cfg.batch_size, seed=cfg.seed)
    ipe = batches.iters_per_epoch
    if ipe == 0:
        raise data.DataError(f"{len(files)} images under {cfg.data} are fewer than one batch "
                             f"({cfg.batch_size})")
    total = cfg.epochs * ipe

    ckpt_path = out / "checkpoint.pth"
    ckpt = checkpoint.load_checkpoint(ckpt_path) if ckpt_path.exists() else None
    start = ckpt["iteration"] if ckpt else 0
    if start >= total:
        print(f"{ckpt_path} has done {start} of {total} iterations: nothing to do")
        return
    lr = base_lr(cfg)
    resolved = cfg.to_dict()
    resolved["_run"] = {"method": "supervised", "git": engine.git_sha(), "lr": lr, "iters_per_epoch": ipe,
                        "num_images": len(files), "classes": classes, "device": str(device), "amp": prec.name,
                        "amp_reason": prec.reason, "channels_last": prec.channels_last,
                        "torch": str(torch.__version__)}
    checkpoint.atomic_write(out / "config.yaml", lambda f: f.write(to_yaml(resolved).encode()))
    print(f"supervised: {len(files)} images, {len(classes)} classes, "
          f"batch {cfg.batch_size} x {cfg.num_views} views, {ipe} iterations per epoch, lr {lr:g}, "
          f"device {device}, amp {prec.name} ({prec.reason})",
          flush=True)

    torch.manual_seed(cfg.seed)  # the same initial backbone as a pretraining run of this seed
    model = Classifier(cfg.arch, cfg.cifar_stem, len(classes)).to(device, memory_format=prec.memory_format)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if ckpt:
        model.load_state_dict(ckpt["model"], strict=True)
        opt.load_state_dict(ckpt["optimizer"])
        print(f"resuming from {ckpt_path}: iteration {start}", flush=True)
    lrs = cosine_schedule(lr, cfg.epochs, ipe, cfg.warmup_epochs)
    dataset = data.MultiViewDataset(cfg.data, files, cfg.num_views, cfg.image_size, (cfg.crop_scale_min, 1.0),
                                    cfg.augment, cfg.blur, cfg.seed, cfg.max_image_pixels)
    loader = data.build_loader(LabelledViews(dataset, labels), batches, cfg.workers, pin_memory=use_cuda)
    device_aug = augment.DeviceAugment(blur=cfg.blur) if cfg.augment == "fast" else None
    log = engine.Log(out, True, cfg.tensorboard)
    stop = engine.StopFlag()

    def save(it: int, epoch_end: bool) -> None:
        state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": it // ipe,
                 "iteration": it, "config": resolved, "git": resolved["_run"]["git"]}
        checkpoint.save_checkpoint(state, ckpt_path)
        ep = it // ipe
        if epoch_end and (ep % cfg.save_every_epochs == 0 or ep == cfg.epochs):
            checkpoint.keep_copy(ckpt_path, out / f"checkpoint_{ep:04d}.pth")

    it = start
    model.train()
    try:
        for epoch in range(start // ipe, cfg.epochs):
            batches.set_epoch(epoch, it - epoch * ipe)
            t0, seen, loss_sum, correct, n_seen = time.perf_counter(), 0, 0.0, 0, 0
            for views, y, _, _ in loader:
                # ---- the same views as pretraining: uint8 crops -> device colour ops (seed, epoch, it) ----
                x = views.to(device)  # N x V x 3 x S x S
                n, v = x.shape[:2]
                if device_aug is not None:
                    x = device_aug(x.flatten(0, 1), data.generator(cfg.seed, epoch, it, 0))
                    x = x.view(n, v, *x.shape[1:])
                y = y.to(device)
                for g in opt.param_groups:
                    g["lr"] = float(lrs[it])
                # ---- one step: each view its own forward (BN per view, as bn_mode per_view) ----
                with prec.autocast():
                    logits = [model(x[:, i].contiguous(memory_format=prec.memory_format)).float()
                              for i in range(v)]
                loss = torch.stack([F.cross_entropy(lg, y) for lg in logits]).mean()  # fp32, as pretraining
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if not math.isfinite(loss.item()):
                    raise engine.RunError(f"loss is {loss.item()} at iteration {it + 1}; stopping")
                it += 1
                seen += n * v
                loss_sum += loss.item() * n
                correct += sum(int((lg.argmax(1) == y).sum()) for lg in logits)
                n_seen += n
                if it % cfg.log_every == 0 or it % ipe == 0:
                    log.write({"epoch": epoch, "iteration": it, "loss": loss.item(), "lr": float(lrs[it - 1]),
                               "views_per_s": seen / (time.perf_counter() - t0),
                               "train_top1": correct / (n_seen * v), "epoch_end": it % ipe == 0})
                if it % ipe == 0:
                    save(it, epoch_end=True)
                    print(f"epoch {epoch + 1}/{cfg.epochs}: loss {loss_sum / n_seen:.4f}, train top-1 "
                          f"{correct / (n_seen * v):.2%}, {seen / (time.perf_counter() - t0):.0f} views/s",
                          flush=True)
                elif stop.signal or (cfg.checkpoint_every and it % cfg.checkpoint_every == 0):
                    save(it, epoch_end=False)
                if stop.signal:
                    print(f"stopped at iteration {it}; rerun the same command to resume", flush=True)
                    return
    finally:
        stop.restore()
        log.close()
    print(f"done: {cfg.epochs} epochs, {it} iterations; weights in {ckpt_path}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.study.supervised", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="a pretraining YAML (configs/pretrain/*.yaml)")
    p.add_argument("--data", help="labelled image folder: <class>/<image>")
    p.add_argument("--output-dir")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    return run_cli(train, p.parse_args(argv))  # pretrain's config loading and one-line errors


if __name__ == "__main__":
    sys.exit(main())

