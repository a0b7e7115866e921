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
    """

    def __init__(self, blur: bool = True, mean=IMAGENET_MEAN, std=IMAGENET_STD, cpu_chunk: int = 4):
        self.blur = blur
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(v) for v in std)
        self.cpu_chunk = cpu_chunk

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
        out = torch.empty(x.shape, dtype=torch.float32, device=x.device)  # B x 3 x S x S
        step = self.cpu_chunk if x.device.type == "cpu" else x.shape[0]
        for i in range(0, x.shape[0], step):
            sl = slice(i, i + step)
            self._augment_(out[sl], x[sl], {k: v[sl].cpu() for k, v in params.items()}, normalize)
        return out

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
