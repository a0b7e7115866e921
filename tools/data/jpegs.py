"""Photo-like synthetic JPEGs of ImageNet's average size, for the speed benchmarks (tools/bench/)."""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw


def photo_like(height: int, width: int, generator: torch.Generator) -> Image.Image:
    """A synthetic photograph: 1/f-like colour noise over 7 octaves, grain, and hard-edged shapes. At
    500 x 375 and JPEG quality 90 it compresses to about 95 kB, near an average ImageNet JPEG (~110 kB)."""
    x = 0.8 * torch.randn(3, height, width, generator=generator)  # sensor noise and fine texture
    for k in range(7):  # octaves from 3 x 4 up to 192 x 256
        coarse = torch.randn(1, 3, 3 * 2**k, 4 * 2**k, generator=generator)
        x += 0.97**k * F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)[0]
    x = 0.8 * x + 0.6 * x.mean(0, keepdim=True)  # correlated channels, as in natural colour
    x = ((x - x.mean()) / x.std() * 50 + 120).clamp(0, 255).to(torch.uint8)
    img = Image.fromarray(x.permute(1, 2, 0).numpy())
    draw = ImageDraw.Draw(img)
    for _ in range(12):
        top, left, side = (int(torch.randint(0, m, (1,), generator=generator)) for m in (height, width, 150))
        colour = tuple(torch.randint(0, 256, (3,), generator=generator).tolist())
        shape = draw.ellipse if side % 2 else draw.rectangle
        shape([left, top, left + side + 10, top + (side + 10) * 3 // 4], fill=colour)
    return img


def make_jpegs(out_dir: str, num: int, height: int = 375, width: int = 500, seed: int = 0) -> list[str]:
    """Write `num` photo-like JPEGs (quality 90) to out_dir; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    paths = []
    for i in range(num):
        path = os.path.join(out_dir, f"{i:05d}.jpg")
        photo_like(height, width, g).save(path, quality=90)
        paths.append(path)
    return paths
