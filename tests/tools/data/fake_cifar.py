"""A tools.data.cifar10-shaped tree for tests: CIFAR-10 class folders of 32 px PNGs, each image distinct."""
from pathlib import Path

import numpy as np
from PIL import Image

from tools.data.scenes import CLASSES


def fake_cifar(root: Path, train=8, test=6):
    """A tools.data.cifar10-shaped tree: CIFAR-10 class folders of 32 px PNGs, each image distinct."""
    rng = np.random.default_rng(0)
    for split, n in (("train", train), ("test", test)):
        for c, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                px = rng.integers(0, 60, (32, 32, 3)) + np.array([c * 20, 250 - c * 20, 100])  # class tint
                img = Image.fromarray(px.clip(0, 255).astype(np.uint8))
                img.save(root / split / name / f"{c * n + i:05d}.png")
    return root
