"""Checkpoints: atomic save, safe load (torch.load(weights_only=True)), model rebuild and backbone export.

checkpoint.pth = {"model": SiameseNet.state_dict(), "optimizer": ..., "scaler": ... or None, "epoch":
completed epochs, "iteration": global iterations done, "config": resolved config dict, "git": sha or "",
"meters": running sums of the current epoch}. A kill at any moment leaves the previous complete file: we write
a temp file in the same folder, fsync it, then os.replace() it over the old one (atomic on POSIX).
"""
from __future__ import annotations

import math
import os
import pickle
import shutil
from pathlib import Path
from types import SimpleNamespace

import torch

from pretrain.config import ConfigError, base_lr


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; the message names the file and the cause."""


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call write(file_object) on a temp file next to `path`, then rename it over `path`.

    Any failure (full disk, read-only folder, ...) removes the temp file, leaves `path` as it was and raises
    CheckpointError naming the file.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            tmp.unlink()
        except OSError:
            pass
        if not isinstance(e, (OSError, RuntimeError)):  # torch.save reports write failures as RuntimeError
            raise
        # Ctrl-C (or a signal handler's SystemExit) during torch.save surfaces as its RuntimeError
        # ("unexpected pos ...") with the interrupt only as __context__: re-raise the interrupt, it is no
        # write failure.
        if isinstance(e.__context__, (KeyboardInterrupt, SystemExit)):
            raise e.__context__ from None
        cause = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0]
        raise CheckpointError(f"could not write {path}: {cause}; the previous file is unchanged") from None
    _fsync_dir(path.parent)


def save_checkpoint(state: dict, path: str | os.PathLike) -> None:
    atomic_write(path, lambda f: torch.save(state, f))


def keep_copy(path: str | os.PathLike, copy_path: str | os.PathLike) -> None:
    """checkpoint_XXXX.pth: a hard link to the just-written checkpoint.pth (no second serialisation); a later
    os.replace of checkpoint.pth makes a new inode, so the copy keeps its content. Else a real copy."""
    copy_path = Path(copy_path)
    tmp = copy_path.with_name(f".{copy_path.name}.tmp.{os.getpid()}")
    try:
        try:
            os.link(path, tmp)
        except OSError:
            shutil.copyfile(path, tmp)
        os.replace(tmp, copy_path)
    except OSError as e:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise CheckpointError(f"could not write {copy_path}: {e.strerror}") from None


def remove_stale_temps(folder: str | os.PathLike) -> None:
    """Temp files left by a process killed mid-write are garbage (the real file was never replaced)."""
    for p in Path(folder).glob(".*.tmp.*"):
        try:
            p.unlink()
        except OSError:
            pass


def load_checkpoint(path: str | os.PathLike) -> dict:
    """torch.load(weights_only=True) onto the CPU: an untrusted file cannot run code. Clear error if bad."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {path} cannot be loaded safely (corrupt, truncated or not a "
                              f"weights-only file): {first}") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise CheckpointError(f"checkpoint {path} is not a pretraining checkpoint (no 'model' entry)")
    return ckpt


def load_model(path: str | os.PathLike):
    """The SiameseNet of a checkpoint.pth, built from its stored config, loaded strictly, in eval() mode."""
    from pretrain.model import SiameseNet

    ckpt = load_checkpoint(path)
    c = ckpt.get("config") or {}
    model = SiameseNet(arch=c.get("arch", "resnet50"), dim=c.get("dim", 2048),
                       pred_dim=c.get("pred_dim", 512), cifar_stem=c.get("cifar_stem", False),
                       bn_mode=c.get("bn_mode", "per_view"))
    load_weights(model, ckpt, path)
    return model.eval()


def load_weights(model, ckpt: dict, path: str | os.PathLike) -> None:
    """model.load_state_dict(ckpt["model"], strict=True), or CheckpointError naming the first mismatch.

    The model is built from the checkpoint's own config, so a mismatch means the file predates a change of the
    network: ResNet-18/34 checkpoints written before the projector's hidden layers followed SimSiam's builder
    (the backbone's width, not `dim`) hold 512 x dim where the network now has 512 x 512."""
    want, have = model.state_dict(), ckpt["model"]
    for key in [*want, *have]:
        a, b = _shape(have, key), _shape(want, key)
        if a != b:
            raise CheckpointError(f"checkpoint {path} does not fit the network its config describes: {key} "
                                  f"is {a} in the file, {b} in the network (written by an older version? "
                                  "ResNet-18/34 projectors are now as wide as the backbone, as SimSiam's)")
    model.load_state_dict(have, strict=True)


def _shape(sd: dict, key: str) -> str:
    return "missing" if key not in sd else "x".join(map(str, sd[key].shape)) or "a scalar"


def export_backbone(ckpt: dict) -> dict:
    """torchvision-layout ResNet state_dict (no fc) of a checkpoint dict: `backbone.` keys, prefix cut."""
    sd = ckpt["model"]
    return {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}


# ---- resume: which config keys a resumed run may change ----
# A resumed run must continue the checkpoint's trajectory: the same network, the same images, order, crops
# and random draws (pretrain/data.py derives them from seed, epoch and index), the same optimiser and the same
# lr at each iteration (the saved iteration count becomes an epoch and a cosine position through batch_size,
# the image count and epochs). Every Config key is in exactly one of the two sets below
# (tests/pretrain/test_checkpoint.py checks it); a key in neither is compared like a trajectory key.
TRAJECTORY_KEYS = frozenset({
    "arch", "cifar_stem", "dim", "pred_dim", "bn_mode", "sync_bn",  # the network; what BN normalises over
    "num_views", "image_size", "crop_scale_min", "blur", "augment",  # the views (augment: another sampler)
    "seed", "max_images", "max_image_pixels",  # which files, in which order, with which crops
    "epochs", "batch_size", "lr", "lr_rule", "warmup_epochs",  # the schedule (lr and lr_rule: via base_lr)
    "fix_pred_lr", "momentum", "weight_decay",  # the optimiser (its saved param groups carry fix_lr)
})
# Free keys change where, how fast or what is reported, not what is computed. `data` and `output_dir` are
# paths (a folder may be mounted elsewhere; a changed iteration count per epoch is refused separately).
# `amp`, `device`, `channels_last` and `compile` change only the precision, order or speed of the arithmetic,
# as another GPU model would: a bf16 run resumed on a GPU without bf16 (fp16 with a fresh GradScaler) or on
# the CPU follows the same schedule on the same data, and refusing it would strand a long run for nothing.
FREE_KEYS = frozenset({
    "data", "output_dir", "workers", "device", "amp", "channels_last", "compile",
    "checkpoint_every", "save_every_epochs", "log_every", "tensorboard", "collapse_threshold",
    "knn_train", "knn_val", "knn_every", "knn_k", "knn_t",
})


def resume_changes(saved: dict, cfg, iters_per_epoch: int | None = None) -> list[str]:
    """`key old -> new` for each trajectory setting of `cfg` (a Config) that differs from `saved`, the
    checkpoint's config (its `_run` section: the lr and iterations per epoch that run used). Keys an older
    checkpoint lacks are not compared."""
    current = cfg.to_dict()
    changes = [f"{k} {saved[k]!r} -> {v!r}" for k, v in current.items()
               if k not in FREE_KEYS and k not in ("lr", "lr_rule") and k in saved and saved[k] != v]
    run = saved.get("_run") or {}
    # lr and lr_rule matter only through the lr they give (lr 0.125 = lr null, fastsiam rule, batch 32)
    old_lr = run.get("lr")
    if old_lr is None and "lr" in saved:
        old = {k: saved.get(k, current[k]) for k in ("lr", "lr_rule", "batch_size")}
        old_lr = base_lr(SimpleNamespace(**old))
    if old_lr is not None and not math.isclose(old_lr, base_lr(cfg), rel_tol=1e-9):
        changes.append(f"lr {old_lr!r} -> {base_lr(cfg)!r}")
    old_ipe = run.get("iters_per_epoch")
    if iters_per_epoch is not None and old_ipe is not None and old_ipe != iters_per_epoch:
        changes.append(f"iterations per epoch (readable images // batch_size) {old_ipe} -> {iters_per_epoch}")
    return changes


def check_resume(ckpt: dict, cfg, path: str | os.PathLike, iters_per_epoch: int | None = None) -> None:
    """Raise ConfigError (one line) when `cfg` would continue checkpoint `ckpt` on another trajectory."""
    changes = resume_changes(ckpt.get("config") or {}, cfg, iters_per_epoch)
    if changes:
        raise ConfigError(f"{path} was trained with other settings: {', '.join(changes)}. A resumed run must "
                          "keep them: rerun with the checkpoint's values, or use another --output-dir")
