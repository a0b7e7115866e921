"""The labelled train and val folders (ImageFolder layout ROOT/<class>/**/<image>), checked before compute.

Both folders must hold the same class folders, each with at least one image: a val class the train set lacks
could never be predicted, and a train class missing from val would shift every label if the folders were
indexed separately, so either is an error rather than a silently lower score. Labels are the index of the
class folder in sorted order, as torchvision's ImageFolder assigns them; files are listed by pretrain/knn.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from pretrain import knn
from tools.evaluate import EvalError


@dataclass
class Split:
    name: str  # "train" or "val"
    root: Path
    paths: list[Path]
    labels: Tensor  # int64 N
    classes: list[str]

    def relative(self) -> list[str]:
        """Image paths relative to the root: the image list of the cache key (the tree may move)."""
        return [p.relative_to(self.root).as_posix() for p in self.paths]

    def summary(self) -> dict:
        counts = self.labels.bincount(minlength=len(self.classes)).tolist()
        return {"dir": str(self.root), "images": len(self.paths), "per_class_min": min(counts),
                "per_class_max": max(counts)}


def _class_folders(root: Path, name: str) -> list[str]:
    if not root.exists():
        raise EvalError(f"--{name} {root}: no such folder")
    if not root.is_dir():
        raise EvalError(f"--{name} {root} is not a folder")
    found = sorted(d.name for d in root.iterdir() if d.is_dir())
    if not found:
        raise EvalError(f"--{name} {root} has no class folders (ImageFolder layout: {root}/<class>/<image>)")
    return found


def labelled_splits(train: str | Path, val: str | Path) -> tuple[Split, Split]:
    """(train, val) with one label order; EvalError (one line) for a folder that cannot be evaluated."""
    train, val = Path(train), Path(val)
    classes = _class_folders(train, "train")
    val_classes = _class_folders(val, "val")
    if classes != val_classes:
        only_train = sorted(set(classes) - set(val_classes))
        only_val = sorted(set(val_classes) - set(classes))
        parts = [f"only in train: {_short(only_train)}" if only_train else "",
                 f"only in val: {_short(only_val)}" if only_val else ""]
        raise EvalError(f"train and val have different classes ({'; '.join(p for p in parts if p)})")
    splits = []
    for name, root in (("train", train), ("val", val)):
        try:
            paths, labels, _ = knn.list_labelled(root, classes)
        except (FileNotFoundError, ValueError) as e:
            raise EvalError(f"--{name} {e}") from None
        counts = labels.bincount(minlength=len(classes)).tolist()
        empty = [c for c, n in zip(classes, counts, strict=True) if not n]
        if empty:
            raise EvalError(f"--{name} {root}: class folders without images: {_short(empty)}")
        splits.append(Split(name, root, paths, labels, classes))
    return splits[0], splits[1]


def _short(names: list[str], n: int = 5) -> str:
    more = f" ... ({len(names)} in all)" if len(names) > n else ""
    return ", ".join(names[:n]) + more
