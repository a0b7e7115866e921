"""Session fixtures for the transfer tests: synthetic detection data, converted weights, a train_net
runner."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def detection_data(tmp_path_factory) -> dict:
    """tools/data/detection.py output: a DETECTRON2_DATASETS root with COCO (instances, keypoints) and
    Cityscapes trees, 10 images per split."""
    from tools.data import detection as make_detection_data

    root = tmp_path_factory.mktemp("detection_data")
    return {"root": str(root), **make_detection_data.make_all(str(root), num_images=10, seed=0)}


@pytest.fixture(scope="session")
def converted_weights(tmp_path_factory) -> dict:
    """torchvision ResNets (random init, seed 0) converted by transfer.convert: ResNet-18 to .pth (for the
    FPN instant configs) and ResNet-50 to .pkl (for the C4 one)."""
    import torch
    import torchvision

    from transfer.convert import convert

    out = tmp_path_factory.mktemp("weights")
    paths = {}
    for arch, ext in (("resnet18", "pth"), ("resnet50", "pkl")):
        torch.manual_seed(0)
        torch.save(getattr(torchvision.models, arch)().state_dict(), out / f"torchvision_{arch}.pth")
        paths[arch] = str(out / f"{arch}_d2.{ext}")
        convert(str(out / f"torchvision_{arch}.pth"), paths[arch])
    return paths


@pytest.fixture(scope="session")
def train_net(detection_data):
    """Run ``python -m transfer.train_net ARGS`` with DETECTRON2_DATASETS set to the synthetic data."""

    def run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        env = {**os.environ, "DETECTRON2_DATASETS": detection_data["root"]}
        command = [sys.executable, "-m", "transfer.train_net", *map(str, args)]
        return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)

    return run
