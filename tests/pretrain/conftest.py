"""Shared fixtures for the pretraining tests: tiny image folders made with PIL, a tiny-run command line."""
from __future__ import annotations

import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]

# ResNet-18 on 32 px crops with narrow heads: an iteration takes a fraction of a second on one CPU core
TINY = ["arch=resnet18", "dim=64", "pred_dim=16", "image_size=32", "batch_size=4", "num_views=4", "workers=0",
        "device=cpu", "log_every=1", "tensorboard=false"]


def write_images(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """n random RGB images of 64-96 px, JPEG and PNG mixed, in two sub-folders (an ImageNet-like tree)."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        h, w = (int(v) for v in rng.integers(64, 97, 2))
        # smooth random colours so crops differ in colour statistics, not only noise
        base = rng.integers(0, 256, (4, 4, 3)).astype(np.uint8)
        img = Image.fromarray(base).resize((w, h), Image.BILINEAR)
        sub = folder / f"class{i % 2}"
        sub.mkdir(parents=True, exist_ok=True)
        p = sub / (f"{i:03d}.JPEG" if i % 3 else f"{i:03d}.png")
        img.save(p, "JPEG" if i % 3 else "PNG")
        paths.append(p)
    return paths


def png_bomb(path: Path, width: int = 100_000, height: int = 100_000) -> None:
    """A valid PNG header declaring width x height pixels (10 G) with almost no data: a decompression bomb."""
    def chunk(tag: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)
        return struct.pack(">I", len(body)) + tag + body + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def write_bad_files(folder: Path) -> dict[str, str]:
    """One of each kind of bad file; returns {relative path: kind}."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("this is not an image\n")  # wrong extension: a text file named .jpg
    good = folder / "tmp.jpg"
    Image.fromarray(np.full((80, 80, 3), 128, np.uint8)).save(good, "JPEG")
    data = good.read_bytes()
    good.unlink()
    (folder / "truncated.jpg").write_bytes(data[: len(data) * 2 // 3])
    png_bomb(folder / "bomb.png")
    return {"empty.jpg": "empty", "text.jpg": "not an image", "truncated.jpg": "truncated",
            "bomb.png": "bomb"}


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a shared 2-core machine OpenMP threads that
    spin while descheduled make each op 10-100x slower. Subprocess runs get OMP_NUM_THREADS=1 likewise."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def image_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    write_images(folder, 16)
    return folder


def pretrain_cmd(data: Path, out: Path, *overrides: str, config: str | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "pretrain", "--data", str(data), "--output-dir", str(out)]
    if config:
        cmd += ["--config", config]
    return cmd + TINY + list(overrides)


def run_pretrain(data: Path, out: Path, *overrides: str, timeout: float = 300,
                 **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(pretrain_cmd(data, out, *overrides, **kw), cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def epoch_losses(out: Path) -> dict[int, tuple[float, float]]:
    """{epoch: (last loss, mean loss)} from the epoch_end lines of log.jsonl (the last one wins)."""
    import json

    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return {r["epoch"]: (r["loss"], r["loss_avg"]) for r in rows if r.get("epoch_end")}
