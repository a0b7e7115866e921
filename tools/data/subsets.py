"""Class-balanced subsets of an ImageFolder tree, and a subset as a folder of its own.

Used by the CIFAR-10 proxy (tools/proxy/) and the study (tools/study/)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import torch

from pretrain import knn


class SubsetError(Exception):
    """A subset the folder cannot give: one line, exit status 2 in the tools that use it."""


def balanced_subset(split_dir: Path, n: int, seed: int) -> tuple[list[Path], torch.Tensor, list[str]]:
    """n images, n/10 per class, a seeded random choice (n = 0: all); labels follow the sorted class names."""
    paths, labels, classes = knn.list_labelled(split_dir)
    if n == 0 or n >= len(paths):
        return paths, labels, classes
    if n % len(classes):
        raise SubsetError(f"subset size {n} is not a multiple of the {len(classes)} classes")
    rng = np.random.default_rng(seed)
    keep = []
    for c in range(len(classes)):
        idx = np.flatnonzero(labels.numpy() == c)
        if len(idx) < n // len(classes):
            raise SubsetError(f"{split_dir}/{classes[c]} has fewer than {n // len(classes)} images")
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
