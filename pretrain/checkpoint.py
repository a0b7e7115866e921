"""Checkpoints: atomic save, safe load (torch.load(weights_only=True)), model rebuild and backbone export.

checkpoint.pth = {"model": SiameseNet.state_dict(), "optimizer": ..., "scaler": ... or None, "epoch":
completed epochs, "iteration": global iterations done, "config": resolved config dict, "git": sha or "",
"meters": running sums of the current epoch}. A kill at any moment leaves the previous complete file: we write
a temp file in the same folder, fsync it, then os.replace() it over the old one (atomic on POSIX).
"""
from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import torch


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
    model.load_state_dict(ckpt["model"], strict=True)
    return model.eval()


def export_backbone(ckpt: dict) -> dict:
    """torchvision-layout ResNet state_dict (no fc) of a checkpoint dict: `backbone.` keys, prefix cut."""
    sd = ckpt["model"]
    return {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
