"""Multi-view augmentation for FastSiam, split where the work becomes batchable.

The recipe is SimSiam's (MoCo v2 augmentation, identical for every view):
RandomResizedCrop(224, scale=(0.2, 1)), ColorJitter(0.4, 0.4, 0.4, 0.1) with p=0.8, RandomGrayscale(p=0.2),
GaussianBlur(sigma in [0.1, 2]) with p=0.5, RandomHorizontalFlip, ToTensor, Normalize(ImageNet).

- `cpu_views` (data-loader workers): from one decoded uint8 image cut V RandomResizedCrops and resize them
  with torchvision's antialiased uint8 resize. Nothing but uint8 crops crosses the process boundary.
- `DeviceAugment` (GPU, or CPU when there is none): everything else, batched over all N*V views with
  per-sample parameters drawn on the CPU from a torch.Generator (so CPU and GPU runs see the same parameters).
- `reference_views`: the plain torchvision PIL recipe, the correctness baseline (`augment=reference`).

The device stage works in float32 on the 0..255 scale and reproduces torchvision's float kernels
(`torchvision.transforms.v2.functional` on a float image) per sample; tests/pretrain/test_augment.py checks
agreement within one grey level. PIL's kernels round to uint8 after every op and its hue op goes through a
uint8 HSV image (a zero hue shift alone moves pixels by up to 6 levels), so with identical parameters the PIL
recipe differs from this float pipeline by about 1.4 grey levels on average (docs/benchmarks.md); the blur
kernel is the other deliberate difference (see `_blur`).
"""

from __future__ import annotations

import functools
import math
import warnings

import PIL.Image
import torch
import torch.nn.functional as F
import torchvision.transforms as T
import torchvision.transforms.v2.functional as TF
from PIL import ImageFilter
from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RATIO = (3 / 4, 4 / 3)
JITTER = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue
P_JITTER, P_GRAY, P_BLUR, P_FLIP = 0.8, 0.2, 0.5, 0.5
SIGMA = (0.1, 2.0)
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale (PIL's "L" uses 0.299/0.587/0.114)
MAX_BLUR_RADIUS = 6  # PIL's support for sigma <= 2, see _pil_blur_radius
FUSED_MIN_PIXELS = 96 * 96  # DeviceAugment(fused=None) compiles its stage for views of this size and up


# ------------------------------------------------------------------------------------------ CPU stage
def crop_params(height: int, width: int, scale=(0.2, 1.0), ratio=RATIO, *,
                generator: torch.Generator) -> tuple[int, int, int, int]:
    """torchvision RandomResizedCrop.get_params, drawing from `generator` draw for draw: 10 tries of an area
    in `scale` x image area and a log-uniform aspect ratio, then the fallback (central crop clamped to
    `ratio`). Returns (top, left, h, w)."""
    area = height * width
    log_ratio = torch.log(torch.tensor(ratio)).tolist()  # float32 as in torchvision: draws match bit for bit
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
        aspect = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=generator)).item()
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, size=(1,), generator=generator))
            left = int(torch.randint(0, width - w + 1, size=(1,), generator=generator))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def cpu_views(img: Tensor, num_views: int, size: int, scale=(0.2, 1.0), *,
              generator: torch.Generator) -> Tensor:
    """V RandomResizedCrops of one decoded image, resized with antialiased bilinear uint8 resize.

    img: uint8 3 x H x W (channels-last strides, as decode_jpeg returns them, take the fastest resize path).
    Returns uint8 V x 3 x size x size.
    """
    if img.dtype != torch.uint8 or img.ndim != 3 or img.shape[0] != 3:
        raise ValueError(f"cpu_views expects a uint8 3 x H x W image, got {img.dtype} {tuple(img.shape)}")
    _, height, width = img.shape
    out = torch.empty(num_views, 3, size, size, dtype=torch.uint8)  # V x 3 x S x S
    for v in range(num_views):
        top, left, h, w = crop_params(height, width, scale, generator=generator)
        out[v] = TF.resized_crop(img, top, left, h, w, [size, size], antialias=True)
    return out


# --------------------------------------------------------------------------------------- device stage
def _pil_blur_radius(sigma: Tensor) -> Tensor:
    """Support radius of PIL's ImageFilter.GaussianBlur(radius=sigma): three extended box blurs of integer
    radius l = floor((sqrt(12 sigma^2 / 3 + 1) - 1) / 2) plus a fractional tap, so 3 (l + 1) pixels (Pillow
    BoxBlur.c): 3 px for sigma < sqrt(2), 6 px up to sigma = 2."""
    box = torch.floor((torch.sqrt(4 * sigma**2 + 1) - 1) / 2)  # l
    return (3 * (box + 1)).long()


def _gray(x: Tensor) -> Tensor:  # B x 3 x H x W -> B x 1 x H x W
    r, g, b = x.unbind(1)
    return (r * GRAY_WEIGHTS[0]).add_(g, alpha=GRAY_WEIGHTS[1]).add_(b, alpha=GRAY_WEIGHTS[2]).unsqueeze(1)


def _hue(x: Tensor, shift: Tensor) -> Tensor:
    """torchvision adjust_hue (RGB -> HSV, h += shift mod 1, HSV -> RGB) in closed form, for any value scale.

    HSV -> RGB with v = max, chroma c = max - min and hue h6 in [0, 6) gives channel n the value
    v - c * w_n, w_n = clamp(2 - d_n, 0, 1), d_n the circular distance of h6 from 3 (R), 5 (G), 1 (B): no
    gather over the six sectors. x: B x 3 x H x W, shift: B (fraction of a turn).
    """
    r, g, b = x.unbind(1)
    maxc = x.amax(1)  # B x H x W
    chroma = maxc - x.amin(1)
    # sector masks as floats (torch.where on images is slow on the CPU), torchvision's precedence: r, g, b
    mr = (maxc == r).float()
    mg = (maxc == g).float().mul_(1 - mr)
    mb = (1 - mr).sub_(mg)
    # chroma = 0 means g - b = b - r = r - g = 0, so h6 = offset and the output is max, as in torchvision
    h6 = (g - b).mul_(mr).addcmul_(b - r, mg).addcmul_(r - g, mb).div_(chroma.clamp(min=1e-12))
    h6.add_(mr, alpha=6.0).add_(mg, alpha=2.0).add_(mb, alpha=4.0)  # [1, 7]: r sector shifted by a turn
    h6.add_((6 * shift).view(-1, 1, 1))  # [-2, 10] for |shift| <= 0.5, so no remainder is needed below
    centres = torch.arange(3, device=x.device, dtype=x.dtype).mul_(2).add_(3).remainder_(6)  # 3, 5, 1
    d = (h6.unsqueeze(1) - centres.view(1, 3, 1, 1)).abs_()  # B x 3 x H x W, < 12
    torch.minimum(d, (6.0 - d).abs_(), out=d)  # circular distance on [0, 6)
    w = d.neg_().add_(2.0).clamp_(0.0, 1.0)
    return torch.addcmul(maxc.unsqueeze(1), chroma.unsqueeze(1), w, value=-1.0)


def _blur(x: Tensor, sigma: Tensor, radius: int = MAX_BLUR_RADIUS, conv: bool | None = None) -> Tensor:
    """Separable Gaussian blur, per-sample sigma, one support radius for the batch. x: B x 3 x H x W float.

    Kernel: torchvision's (exp(-t^2 / 2 sigma^2) on integer taps |t| <= radius, normalised); the caller passes
    the support radius of the reference recipe's PIL GaussianBlur(radius=sigma) (`_pil_blur_radius`), and
    edges repeat the border pixel as PIL's do. Where PIL differs: it approximates the Gaussian with three
    extended box blurs (a piecewise-quadratic kernel of the same variance) and rounds to uint8 after each
    pass: 0.3-0.6 grey levels from this blur on average, 5 at most (tests/pretrain/test_augment.py).
    torchvision's GaussianBlur would instead take one fixed kernel size and reflect at the edges (further
    from PIL's output).
    conv: depthwise conv2d (fast on CUDA) or a sum over shifted slices (faster on the CPU); default by device.
    """
    bsz, ch, h, w = x.shape
    taps = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)  # K
    kernel = torch.exp(-0.5 * (taps / sigma.to(x).view(-1, 1)) ** 2)  # B x K
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(ch, 0)  # (B*3) x K
    y = F.pad(x, (radius,) * 4, mode="replicate")  # B x 3 x (H+2r) x (W+2r)
    if conv if conv is not None else x.device.type != "cpu":
        y = y.view(1, bsz * ch, h + 2 * radius, w + 2 * radius)
        y = F.conv2d(y, kernel.view(bsz * ch, 1, 1, -1), groups=bsz * ch)  # horizontal
        y = F.conv2d(y, kernel.view(bsz * ch, 1, -1, 1), groups=bsz * ch)  # vertical
        return y.view(bsz, ch, h, w)
    k = kernel.view(bsz, ch, -1, 1, 1)
    tmp = y[..., :w] * k[:, :, 0]  # B x 3 x (H+2r) x W
    for i in range(1, 2 * radius + 1):
        tmp.addcmul_(y[..., i : i + w], k[:, :, i])
    out = tmp[:, :, :h] * k[:, :, 0]  # B x 3 x H x W
    for i in range(1, 2 * radius + 1):
        out.addcmul_(tmp[:, :, i : i + h], k[:, :, i])
    return out


def _hue_planes(r: Tensor, g: Tensor, b: Tensor, shift: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """`_hue` on separate R, G, B planes (B x H x W each; shift B x 1 x 1), written so that a compiler
    computes max, min and the hue once per pixel for all three outputs (one loop, three stores)."""
    maxc = torch.maximum(torch.maximum(r, g), b)
    chroma = maxc - torch.minimum(torch.minimum(r, g), b)
    inv = 1.0 / chroma.clamp(min=1e-12)
    # torchvision's sector precedence r, g, b; chroma = 0 gives h6 = the sector offset and output = max
    h6 = torch.where(maxc == r, (g - b) * inv + 6.0, torch.where(maxc == g, (b - r) * inv + 2.0,
                                                                  (r - g) * inv + 4.0))
    h6 = h6 + 6.0 * shift  # [-2, 10] for |shift| <= 0.5
    out = []
    for centre in (3.0, 5.0, 1.0):  # R, G, B
        d = (h6 - centre).abs()
        d = torch.minimum(d, (6.0 - d).abs())  # circular distance on [0, 6)
        out.append(maxc - chroma * (2.0 - d).clamp(0.0, 1.0))
    return out[0], out[1], out[2]


def _colour(x: Tensor, coef: Tensor, scale: Tensor, bias: Tensor) -> Tensor:
    """Jitter (4 positions), grayscale and normalisation of uint8 x (B x 3 x H x W) as one function of
    per-sample coefficients, without a branch on the data, so that torch.compile fuses it into a few loops.

    coef: B x 21 float, for positions j = 0..3: f_j (blend factor), s_j (weight of the grey image), c_j
    (weight of its mean), h_j (1: hue op), u_j (hue shift); then g (1: grayscale). Each position computes
    torchvision's _blend, clamp(f x + (1 - f) d, 0, 255) with d the grey image (saturation), its mean
    (contrast) or 0 (brightness), as clamp(f x + s gray + c mean) (f = 1, s = c = 0: no op), then
    where(h, hue(y), y): the hue is computed for every sample and kept where drawn, which costs arithmetic
    but no pass over memory.
    The channels are separate planes so that per-pixel work (grey level, hue) is done once for all three.
    Then y * scale + bias per channel (scale, bias: 3 values each). The blur follows (`_blur_pass`).
    """
    r, g, b = x.float().unbind(1)  # B x H x W each, 0..255
    c = coef.view(-1, 21, 1, 1)
    wr, wg, wb = GRAY_WEIGHTS
    for j in range(4):
        gray = r * wr + g * wg + b * wb
        d = gray * c[:, 4 + j] + gray.mean((1, 2), keepdim=True) * c[:, 8 + j]
        r, g, b = ((ch * c[:, j] + d).clamp(0.0, 255.0) for ch in (r, g, b))
        hr, hg, hb = _hue_planes(r, g, b, c[:, 16 + j])
        on = c[:, 12 + j] > 0
        r, g, b = torch.where(on, hr, r), torch.where(on, hg, g), torch.where(on, hb, b)
    gray = r * wr + g * wg + b * wb
    on = c[:, 20] > 0
    planes = [torch.where(on, gray, ch) * s + o for ch, s, o in zip((r, g, b), scale, bias, strict=True)]
    return torch.stack(planes, 1)  # B x 3 x H x W


def _blur_pass(y: Tensor, kernel: Tensor, dim: int) -> Tensor:
    """One direction of the per-sample blur (dim 3: horizontal, 2: vertical) on B x 3 x H x W whose `dim` was
    padded by MAX_BLUR_RADIUS with edge replication: a sum of 2r+1 shifted slices. Compiled on its own, so
    that the compiler reads a materialised input (inlined into one kernel, the colour work would be recomputed
    for each tap); the padding is done before (eager F.pad: inside the compiled code its clamped indices cost
    the vectorisation), and slices, not a transpose, keep the innermost loop contiguous."""
    rad = MAX_BLUR_RADIUS
    n = y.shape[dim] - 2 * rad
    k = kernel.view(-1, 1, 1, 1, 2 * rad + 1)  # B x 1 x 1 x 1 x K
    return sum(y.narrow(dim, i, n) * k[..., i] for i in range(2 * rad + 1))


def _coefficients(p: dict[str, Tensor]) -> Tensor:
    """The per-sample coefficients of `_colour` (B x 21) from DeviceAugment.draw's parameters."""
    n = p["jitter"].shape[0]
    coef = torch.zeros(n, 21)
    coef[:, :4] = 1.0
    rows = torch.arange(n)
    for j in range(4):
        op = torch.where(p["jitter"], p["order"][:, j], -1)  # B, -1 = no jitter
        blend = (op >= 0) & (op <= 2)
        f = torch.where(blend, p["factors"][rows, op.clamp(0, 2)], 1.0)
        coef[:, j] = f
        coef[:, 4 + j] = (1 - f) * (op == 2)
        coef[:, 8 + j] = (1 - f) * (op == 1)
        coef[:, 12 + j] = (op == 3).float()
        coef[:, 16 + j] = p["hue"]
    coef[:, 20] = p["gray"].float()
    return coef


def _blur_taps(p: dict[str, Tensor]) -> Tensor:
    """Per-sample blur taps for `_colour` (B x 2 MAX_BLUR_RADIUS + 1): `_blur`'s kernel within the PIL radius
    of each sigma, zero beyond it; the unit tap where no blur is drawn."""
    taps = torch.arange(-MAX_BLUR_RADIUS, MAX_BLUR_RADIUS + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (taps / p["sigma"].view(-1, 1)) ** 2)
    k = k * (taps.abs() <= _pil_blur_radius(p["sigma"]).view(-1, 1))
    k = k / k.sum(1, keepdim=True)
    return torch.where(p["blur"].view(-1, 1), k, (taps == 0).float())


_compiled_colour = None  # (compiled _colour, compiled _blur_pass) once built; False once compiling failed


def _fused_colour():
    """torch.compile(_colour) (Inductor: C++/OpenMP loops on the CPU, Triton on CUDA), or None when compiling
    fails (no C compiler, unsupported platform): the caller then takes the eager path. The first call per
    input shape compiles (tens of seconds on a busy CPU); Inductor's on-disk cache (TORCHINDUCTOR_CACHE_DIR,
    default /tmp/torchinductor_$USER) makes later processes reuse the kernels (docs/benchmarks.md)."""
    global _compiled_colour
    if _compiled_colour is None:
        # dynamic=None: static kernels for the first shape (a training run has one), symbolic after a second
        _compiled_colour = torch.compile(_colour), torch.compile(_blur_pass)
    return _compiled_colour or None


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep large freed blocks in the process (no mmap per block, no trimming) so that a
    fresh batch of views reuses pages already mapped: by default every block over 32 MiB is a new mmap whose
    pages fault on first touch, ~0.8 ms per 224 px float view on the busy dev VM (half of the compiled device
    stage). Process-wide, the malloc tuning Intel's PyTorch CPU guide gets from jemalloc/tcmalloc; the cost is
    that peak memory stays reserved. Returns False where there is no glibc."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4  # <malloc.h>
        return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 1 << 30))
    except (OSError, AttributeError):
        return False


def _to(t: Tensor, device: torch.device) -> Tensor:
    """A small CPU tensor to `device` without stalling a CUDA stream: pinned staging, asynchronous copy."""
    if device.type == "cuda":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


class DeviceAugment:
    """Colour jitter, grayscale, blur, flip and normalisation, batched over views with per-sample parameters.

    Per sample, as torchvision's RandomApply(ColorJitter(0.4, 0.4, 0.4, 0.1), p=0.8): brightness, contrast
    and saturation factors U[0.6, 1.4], hue shift U[-0.1, 0.1], applied in a random order (one of 24, per
    sample); RandomGrayscale(p=0.2); GaussianBlur sigma U[0.1, 2] with p=0.5 (see `_blur`); horizontal flip
    p=0.5. The flip is done first: every later op is pointwise, global or a symmetric filter with symmetric
    edge handling, so it commutes. On the CPU the batch is processed `cpu_chunk` views at a time so that the
    working set stays in cache (about 1.5x faster at 224 px than 128 views at once on the 2-core dev machine).
    Two implementations of the same ops: the torch.compile'd `_colour` + `_blur_pass` (a few fused loops over
    memory; ~2x the eager ops' views/s on the dev CPUs, docs/benchmarks.md) and the eager ops (`_augment_`,
    dozens of passes); both are tested against torchvision.
    """

    def __init__(self, blur: bool = True, mean=IMAGENET_MEAN, std=IMAGENET_STD, cpu_chunk: int = 4,
                 fused: bool | None = None):
        self.blur = blur
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(v) for v in std)
        self.cpu_chunk = cpu_chunk
        # True: the torch.compile'd stage (`_colour`, `_blur_pass`); False: the eager ops (`_augment_`); None:
        # compiled from FUSED_MIN_PIXELS up. Below (32 px CIFAR views, the 64 px demo, tests) the stage is a
        # sliver of a step and the first compile (20 s cached, up to 160 s cold on the busy dev CPU,
        # docs/benchmarks.md) would not pay for itself.
        self.fused = fused

    def draw(self, n: int, generator: torch.Generator) -> dict[str, Tensor]:
        """Per-sample parameters for n views, drawn on the CPU: a dict of CPU tensors with n rows each."""
        u = torch.rand(n, 13, generator=generator)
        lo = torch.tensor([max(0.0, 1 - s) for s in JITTER[:3]])  # ColorJitter: U[max(0, 1 - s), 1 + s]
        hi = torch.tensor([1 + s for s in JITTER[:3]])
        return {
            "jitter": u[:, 3] < P_JITTER,  # n
            "factors": lo + (hi - lo) * u[:, :3],  # n x 3: brightness, contrast, saturation
            "hue": (2 * u[:, 4] - 1) * JITTER[3],  # n
            "order": torch.argsort(u[:, 5:9], dim=1),  # n x 4: op at each position (b 0, c 1, s 2, h 3)
            "gray": u[:, 9] < P_GRAY,
            "blur": (u[:, 10] < P_BLUR) & self.blur,
            "sigma": SIGMA[0] + (SIGMA[1] - SIGMA[0]) * u[:, 11],
            "flip": u[:, 12] < P_FLIP,
        }

    def apply(self, x: Tensor, params: dict[str, Tensor], normalize: bool = True) -> Tensor:
        """x: uint8 B x 3 x S x S. Returns float32 B x 3 x S x S, normalised, or on the 0..255 scale."""
        if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"DeviceAugment expects uint8 B x 3 x H x W, got {x.dtype} {tuple(x.shape)}")
        fused = self.fused if self.fused is not None else x.shape[2] * x.shape[3] >= FUSED_MIN_PIXELS
        if fused and _fused_colour() is not None:
            try:
                return self._apply_fused(x, params, normalize)
            except Exception as e:  # noqa: BLE001 - any compiler failure: warn once, run the eager ops
                global _compiled_colour
                _compiled_colour = False
                first = str(e).splitlines()[0] if str(e) else ""
                warnings.warn(f"torch.compile of the colour stage failed ({type(e).__name__}: {first}); "
                              "using the eager ops", stacklevel=2)
        out = torch.empty(x.shape, dtype=torch.float32, device=x.device)  # B x 3 x S x S
        step = self.cpu_chunk if x.device.type == "cpu" else x.shape[0]
        for i in range(0, x.shape[0], step):
            sl = slice(i, i + step)
            self._augment_(out[sl], x[sl], {k: v[sl].cpu() for k, v in params.items()}, normalize)
        return out

    def _apply_fused(self, x: Tensor, params: dict[str, Tensor], normalize: bool) -> Tensor:
        """Flip the uint8 input, then per chunk the compiled stage: jitter, grayscale, normalise, blur."""
        dev, p = x.device, {k: v.cpu() for k, v in params.items()}
        idx = p["flip"].nonzero().squeeze(1)
        if idx.numel():  # on uint8: a quarter of the bytes of a float flip
            idx = _to(idx, dev)
            x = x.index_copy(0, idx, x.index_select(0, idx).flip(-1))
        if normalize:  # (y / 255 - mean) / std
            scale = [1 / (255 * s) for s in self.std]
            bias = [-m / s for m, s in zip(self.mean, self.std, strict=True)]
        else:
            scale, bias = [1.0] * 3, [0.0] * 3
        affine = torch.tensor([scale + bias]).expand(x.shape[0], 6)  # tensors, so one graph serves both
        packed = torch.cat([_coefficients(p), _blur_taps(p), affine], 1)  # one host-to-device copy
        coef, kernel, affine = _to(packed, dev).split([21, 13, 6], 1)
        scale, bias = affine[0, :3], affine[0, 3:]
        colour, blur = _fused_colour()
        step = self.cpu_chunk if dev.type == "cpu" else x.shape[0]
        out = []
        for i in range(0, x.shape[0], step):
            y = colour(x[i : i + step], coef[i : i + step], scale, bias)  # chunk x 3 x S x S float32
            # every sample is blurred with its own taps: a unit tap (exact identity) where no blur is drawn,
            # zeros beyond the PIL radius (`_blur_taps`). Linear with taps summing to 1, so blurring after the
            # normalisation equals blurring before it, up to float rounding.
            k = kernel[i : i + step]
            r = MAX_BLUR_RADIUS
            y = blur(F.pad(y, (r, r, 0, 0), mode="replicate"), k, 3)
            out.append(blur(F.pad(y, (0, 0, r, r), mode="replicate"), k, 2))
        return out[0] if len(out) == 1 else torch.cat(out)

    def _augment_(self, y: Tensor, x: Tensor, p: dict[str, Tensor], normalize: bool) -> None:
        """Fill y (float32, B x 3 x S x S) with the augmented x (uint8). The parameters `p` stay on the CPU:
        every branch and subset is decided there, so a CUDA run never waits on the device. In place where
        possible (fresh large tensors cost page faults on the CPU); subsets via index_select / index_copy_
        (advanced indexing stalled for milliseconds in OpenMP on the busy dev machine)."""
        dev = y.device
        y.copy_(x)  # 0..255
        idx = p["flip"].nonzero().squeeze(1)
        if idx.numel():
            idx = _to(idx, dev)
            y.index_copy_(0, idx, x.index_select(0, idx).flip(-1).to(y.dtype))

        # Colour jitter: at each of the 4 positions every jittered sample runs one op. Brightness, contrast
        # and saturation are blends f * x + (1 - f) * d with d = 0, the mean grey level or the grey image
        # (torchvision _blend): one in-place pass per position covers all three (f = 1 and d = 0 leave a
        # sample unchanged exactly); hue runs on its subset.
        for pos in range(4):
            op = torch.where(p["jitter"], p["order"][:, pos], -1)  # B, -1 = no jitter
            blend, is_c, is_s = (op >= 0) & (op <= 2), op == 1, op == 2
            if blend.any():
                factor = p["factors"].gather(1, op.clamp(0, 2).view(-1, 1)).squeeze(1)  # B
                f = torch.where(blend, factor, 1.0)
                gray = _gray(y) if (is_c | is_s).any() else None  # B x 1 x S x S, of the input to this op
                if is_c.any():
                    mean = gray.mean((1, 2, 3), keepdim=True)  # B x 1 x 1 x 1
                y.mul_(_to(f, dev).view(-1, 1, 1, 1))
                if is_s.any():
                    y.addcmul_(gray, _to((1 - f) * is_s, dev).view(-1, 1, 1, 1))
                if is_c.any():
                    y.addcmul_(mean, _to((1 - f) * is_c, dev).view(-1, 1, 1, 1))
                y.clamp_(0.0, 255.0)
            idx = (op == 3).nonzero().squeeze(1)
            if idx.numel():
                d_idx = _to(idx, dev)
                y.index_copy_(0, d_idx, _hue(y.index_select(0, d_idx), _to(p["hue"][idx], dev)))

        idx = p["gray"].nonzero().squeeze(1)
        if idx.numel():
            d_idx = _to(idx, dev)
            y.index_copy_(0, d_idx, _gray(y.index_select(0, d_idx)).expand(-1, 3, -1, -1))
        radius = _pil_blur_radius(p["sigma"])
        for r in radius[p["blur"]].unique().tolist():  # at most two radii: 3 and 6
            idx = (p["blur"] & (radius == r)).nonzero().squeeze(1)
            d_idx = _to(idx, dev)
            y.index_copy_(0, d_idx, _blur(y.index_select(0, d_idx), _to(p["sigma"][idx], dev), r))
        if normalize:  # (y / 255 - mean) / std, per channel with Python scalars: nothing to copy to a GPU
            for c in range(3):
                y[:, c].mul_(1 / (255 * self.std[c])).sub_(self.mean[c] / self.std[c])

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        return self.apply(x, self.draw(x.shape[0], generator))


# -------------------------------------------------------------------------------------- PIL reference
class _PILGaussianBlur:
    """SimSiam's GaussianBlur: PIL ImageFilter.GaussianBlur(radius=sigma), sigma from torch's RNG (SimSiam's
    uses Python's `random`, which reference_views could not seed from a generator)."""

    def __call__(self, img):
        sigma = SIGMA[0] + (SIGMA[1] - SIGMA[0]) * float(torch.rand(()))
        return img.filter(ImageFilter.GaussianBlur(radius=sigma))


@functools.lru_cache(maxsize=8)
def reference_transform(size: int, scale=(0.2, 1.0), blur: bool = True, mean=IMAGENET_MEAN,
                        std=IMAGENET_STD) -> T.Compose:
    """SimSiam's augmentation (main_simsiam.py) as a torchvision Compose."""
    ops = [
        T.RandomResizedCrop(size, scale=tuple(scale)),
        T.RandomApply([T.ColorJitter(*JITTER)], p=P_JITTER),
        T.RandomGrayscale(p=P_GRAY),
    ]
    if blur:
        ops.append(T.RandomApply([_PILGaussianBlur()], p=P_BLUR))
    ops += [T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(ops)


def reference_views(img: PIL.Image.Image, num_views: int, size: int, scale=(0.2, 1.0), blur: bool = True,
                    *, generator: torch.Generator) -> Tensor:
    """The plain torchvision PIL recipe. Returns float32 V x 3 x size x size, normalised.

    torchvision's transforms draw from torch's global RNG, so it is forked and seeded from `generator`: the
    result is a function of the generator state, and the caller's global RNG is left untouched.
    """
    transform = reference_transform(size, tuple(scale), blur)
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    img = img if img.mode == "RGB" else img.convert("RGB")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torch.stack([transform(img) for _ in range(num_views)])  # V x 3 x S x S
