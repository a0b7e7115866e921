"""pretrain/augment.py: crops as torchvision draws them, the batched device stage exact to torchvision's
functional ops per sample, the p-rates of the recipe, determinism, and the PIL reference recipe."""

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms as T
import torchvision.transforms.v2 as T2
import torchvision.transforms.v2.functional as TF
from PIL import Image, ImageFilter

from pretrain import augment
from pretrain.augment import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DeviceAugment,
    _blur,
    _pil_blur_radius,
    cpu_views,
    crop_params,
    reference_views,
)


def photo(n, h, w, seed=0):
    """uint8 n x 3 x h x w: smooth colour fields plus texture, so every op has something to change."""
    g = torch.Generator().manual_seed(seed)
    x = F.interpolate(torch.rand(n, 3, 6, 8, generator=g), size=(h, w), mode="bicubic", align_corners=False)
    x = x * 255 + 12 * torch.randn(n, 3, h, w, generator=g)
    return x.clamp(0, 255).to(torch.uint8)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def tv_reference(x, p, b):
    """One sample through torchvision.transforms.v2.functional on float [0, 1], in recipe order; 0..255."""
    y = x[b].float() / 255
    if p["jitter"][b]:
        for op in p["order"][b].tolist():  # torchvision ColorJitter: for fn_id in randperm(4)
            if op == 0:
                y = TF.adjust_brightness(y, float(p["factors"][b, 0]))
            elif op == 1:
                y = TF.adjust_contrast(y, float(p["factors"][b, 1]))
            elif op == 2:
                y = TF.adjust_saturation(y, float(p["factors"][b, 2]))
            else:
                y = TF.adjust_hue(y, float(p["hue"][b]))
    if p["gray"][b]:
        y = TF.rgb_to_grayscale(y, num_output_channels=3)
    if p["blur"][b]:
        # torchvision's kernel with PIL's support radius; edge pixels repeated as in PIL (pad, blur, crop: the
        # reflect padding inside gaussian_blur then only touches the border that is cropped away)
        r = int(_pil_blur_radius(p["sigma"][b : b + 1]))
        yp = F.pad(y[None], (r, r, r, r), mode="replicate")[0]
        y = TF.gaussian_blur(yp, [2 * r + 1, 2 * r + 1], [float(p["sigma"][b])])[:, r:-r, r:-r]
    if p["flip"][b]:
        y = TF.horizontal_flip(y)
    return y * 255


# ------------------------------------------------------------------------------------------------- CPU stage
def test_crop_params_match_torchvision_draw_for_draw():
    img = Image.new("RGB", (500, 375))
    for seed in range(200):
        torch.manual_seed(seed)
        expected = T.RandomResizedCrop.get_params(img, (0.2, 1.0), (3 / 4, 4 / 3))
        assert crop_params(375, 500, (0.2, 1.0), generator=gen(seed)) == expected


def test_crop_params_fallback_is_central_crop_clamped_to_ratio():
    # 10 x 1000: every try needs h >= 38, so all 10 fail and the fallback cuts a central 10 x 13 crop
    assert crop_params(10, 1000, generator=gen(0)) == (0, (1000 - 13) // 2, 10, 13)
    assert crop_params(1000, 10, generator=gen(0)) == ((1000 - 13) // 2, 0, 13, 10)


def test_cpu_views_equal_torchvision_random_resized_crop():
    img = photo(1, 75, 100)[0]
    views = cpu_views(img, 4, 32, generator=gen(3))
    assert views.shape == (4, 3, 32, 32) and views.dtype == torch.uint8
    torch.manual_seed(3)
    rrc = T2.RandomResizedCrop(32, scale=(0.2, 1.0), antialias=True)
    expected = torch.stack([rrc(img) for _ in range(4)])
    assert torch.equal(views, expected)
    assert not torch.equal(views[0], views[1])  # different crops per view


def test_cpu_views_channels_last_input_and_determinism():
    img = photo(1, 60, 90)[0]
    hwc = img.permute(1, 2, 0).contiguous().permute(2, 0, 1)  # decode_jpeg's strides
    a = cpu_views(img, 3, 24, generator=gen(1))
    assert torch.equal(a, cpu_views(hwc, 3, 24, generator=gen(1)))
    assert not torch.equal(a, cpu_views(img, 3, 24, generator=gen(2)))


def test_cpu_views_rejects_bad_input():
    with pytest.raises(ValueError, match="uint8 3 x H x W"):
        cpu_views(torch.zeros(3, 10, 10), 2, 8, generator=gen(0))
    with pytest.raises(ValueError, match="uint8 3 x H x W"):
        cpu_views(torch.zeros(1, 10, 10, dtype=torch.uint8), 2, 8, generator=gen(0))


# ---------------------------------------------------------------------------------------------- device stage
# fused: the torch.compile'd stage (`_colour`, `_blur_pass`); the tests below use one shape (4 x 3 x 40 x 40
# chunks), so it compiles once per test session (less with Inductor's on-disk cache)
@pytest.mark.parametrize("fused", [False, True], ids=["eager", "compiled"])
def test_device_stage_matches_torchvision_functional_per_sample(fused):
    n = 96
    x = photo(n, 40, 40, seed=1)
    aug = DeviceAugment(fused=fused)
    p = aug.draw(n, gen(0))
    # the batch covers every branch: jitter on/off, each op at each position, gray, blur with both radii, flip
    jit = p["jitter"]
    for pos, op in itertools.product(range(4), range(4)):
        assert ((p["order"][:, pos] == op) & jit).any()
    assert (~jit).any() and p["gray"].any() and p["flip"].any() and (~p["flip"]).any()
    assert set(_pil_blur_radius(p["sigma"][p["blur"]]).tolist()) == {3, 6}
    out = aug.apply(x, p, normalize=False)
    assert out.dtype == torch.float32 and out.shape == x.shape
    expected = torch.stack([tv_reference(x, p, b) for b in range(n)])
    assert (out - expected).abs().max() <= 1.0
    assert (out - expected).abs().mean() < 0.01  # float vs float: differences are rounding, not semantics


@pytest.mark.parametrize("fused", [False, True], ids=["eager", "compiled"])
def test_device_stage_extreme_parameters(fused):
    x = photo(4, 40, 40, seed=2)
    aug = DeviceAugment(fused=fused)
    p = aug.draw(4, gen(0))
    p["jitter"][:] = True
    p["factors"] = torch.tensor([[0.6, 1.4, 0.6], [1.4, 0.6, 1.4], [1.4, 1.4, 1.4], [0.6, 0.6, 0.6]])
    p["hue"] = torch.tensor([0.1, -0.1, 0.1, -0.1])
    p["blur"][:] = True
    p["sigma"] = torch.tensor([0.1, 2.0, 1.0, 1.5])
    out = aug.apply(x, p, normalize=False)
    expected = torch.stack([tv_reference(x, p, b) for b in range(4)])
    assert (out - expected).abs().max() <= 1.0


def test_compiled_stage_equals_eager_normalised():
    x = photo(8, 40, 40, seed=6)
    p = DeviceAugment().draw(8, gen(5))
    a = DeviceAugment(fused=True).apply(x, p)
    b = DeviceAugment(fused=False).apply(x, p)
    assert (a - b).abs().max() * 255 * max(IMAGENET_STD) < 1e-2  # grey levels: float rounding only


def test_fused_default_by_view_size_and_fallback(monkeypatch):
    calls = []

    def colour(*args):
        calls.append(args[0].shape)
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(augment, "_compiled_colour", (colour, colour))
    aug = DeviceAugment()  # fused=None: compiled from FUSED_MIN_PIXELS up
    small = photo(4, 32, 32)
    eager = DeviceAugment(fused=False).apply(small, aug.draw(4, gen(0)))
    assert torch.equal(aug.apply(small, aug.draw(4, gen(0))), eager) and calls == []  # 32 px: eager
    big = photo(4, 96, 96)
    p = aug.draw(4, gen(1))
    with pytest.warns(UserWarning, match="torch.compile of the colour stage failed .*no compiler here"):
        out = aug.apply(big, p)
    assert calls == [(4, 3, 96, 96)]  # it tried the compiled stage at 96 px
    assert torch.equal(out, DeviceAugment(fused=False).apply(big, p))  # ...and fell back to the eager ops
    assert augment._compiled_colour is False  # not retried
    aug.apply(big, p)
    assert len(calls) == 1


def test_keep_freed_memory_on_glibc():
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc only")
    assert augment.keep_freed_memory() is True


def test_identity_and_flip():
    x = photo(3, 16, 20)
    aug = DeviceAugment()
    p = aug.draw(3, gen(0))
    for k in ("jitter", "gray", "blur", "flip"):
        p[k][:] = False
    assert torch.equal(aug.apply(x, p, normalize=False), x.float())
    p["flip"][1] = True
    out = aug.apply(x, p, normalize=False)
    assert torch.equal(out[1], x[1].flip(-1).float()) and torch.equal(out[0], x[0].float())
    assert not torch.equal(out[1], x[1].float())


def test_normalisation_and_output():
    x = photo(8, 16, 16)
    aug = DeviceAugment()
    p = aug.draw(8, gen(5))
    raw = aug.apply(x, p, normalize=False)
    assert raw.min() >= 0 and raw.max() <= 255
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    out = aug(x, gen(5))  # __call__ draws the same parameters from the same seed
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, (raw / 255 - mean) / std, atol=1e-5, rtol=0)


def test_device_stage_deterministic_per_seed():
    x = photo(16, 16, 16)
    aug = DeviceAugment()
    assert torch.equal(aug(x, gen(7)), aug(x, gen(7)))
    assert not torch.equal(aug(x, gen(7)), aug(x, gen(8)))


def test_parameter_rates_and_ranges():
    n = 20000
    p = DeviceAugment().draw(n, gen(0))
    # binomial std <= 0.0036 at n = 20000; +-0.015 is > 4 sigma yet catches p off by 0.05
    for key, rate in (("jitter", 0.8), ("gray", 0.2), ("blur", 0.5), ("flip", 0.5)):
        assert abs(p[key].float().mean().item() - rate) < 0.015, key
    f = p["factors"]
    assert f.min() >= 0.6 and f.max() <= 1.4 and (f.mean(0) - 1).abs().max() < 0.01
    assert f.min() < 0.61 and f.max() > 1.39
    assert p["hue"].abs().max() <= 0.1 and p["hue"].abs().max() > 0.099
    assert p["sigma"].min() >= 0.1 and p["sigma"].max() <= 2.0 and abs(p["sigma"].mean() - 1.05) < 0.02
    # the op order is a uniform random permutation per sample: each of the 24 about 1/24 of the time
    perms = {tuple(o) for o in p["order"].tolist()}
    assert len(perms) == 24
    counts = torch.unique(p["order"], dim=0, return_counts=True)[1].float()
    assert (counts / (n / 24) - 1).abs().max() < 0.2
    assert not DeviceAugment(blur=False).draw(1000, gen(0))["blur"].any()


def test_grayscale_rate_in_outputs():
    x = photo(400, 8, 8, seed=3)
    aug = DeviceAugment(cpu_chunk=400)  # one chunk: 100 chunks of 8 x 8 px views only add Python overhead
    raw = aug.apply(x, aug.draw(400, gen(1)), normalize=False)
    gray = (raw.amax(1) - raw.amin(1)).amax((1, 2)) < 1e-3  # all channels equal
    assert 0.12 < gray.float().mean() < 0.28  # 0.2 expected, binomial std 0.02


def test_blur_close_to_pil():
    img = photo(1, 64, 64, seed=4)[0]
    pil = Image.fromarray(img.permute(1, 2, 0).numpy())
    for sigma in (0.5, 1.0, 1.4, 2.0):
        sig = torch.tensor([sigma])
        ours = _blur(img[None].float(), sig, int(_pil_blur_radius(sig)))[0]
        theirs = torch.from_numpy(np.array(pil.filter(ImageFilter.GaussianBlur(radius=sigma))))
        d = (ours - theirs.permute(2, 0, 1).float()).abs()
        # PIL's box approximation + per-pass uint8 rounding; measured on 64 and 224 px: max 4.8, mean 0.2-0.6
        assert d.mean() < 0.8 and d.max() <= 6, (sigma, d.mean(), d.max())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    x = photo(32, 32, 32)
    aug = DeviceAugment()
    cpu = aug(x, gen(0))
    gpu = aug(x.cuda(), gen(0))
    assert (cpu - gpu.cpu()).abs().max() * 255 * max(IMAGENET_STD) <= 1.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_compiled_matches_cpu_eager():
    import warnings

    x = photo(16, 40, 40)
    p = DeviceAugment().draw(16, gen(0))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a compile failure would warn and fall back to eager ops
        gpu = DeviceAugment(fused=True).apply(x.cuda(), p)
    cpu = DeviceAugment(fused=False).apply(x, p)
    assert (cpu - gpu.cpu()).abs().max() * 255 * max(IMAGENET_STD) <= 0.01  # grey levels


# --------------------------------------------------------------------------------------------- PIL reference
def test_reference_views():
    img = Image.fromarray(photo(1, 50, 60)[0].permute(1, 2, 0).numpy())
    state = torch.get_rng_state()
    a = reference_views(img, 4, 32, generator=gen(0))
    assert torch.equal(state, torch.get_rng_state())  # global RNG untouched
    assert a.shape == (4, 3, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, reference_views(img, 4, 32, generator=gen(0)))
    assert not torch.equal(a, reference_views(img, 4, 32, generator=gen(1)))
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    assert (a >= -mean / std - 1e-5).all() and (a <= (1 - mean) / std + 1e-5).all()


def test_reference_and_fast_pipelines_agree_in_distribution():
    """Same recipe, two implementations: per-channel mean and spread of many views agree."""
    img = photo(1, 48, 64, seed=5)[0]
    pil = Image.fromarray(img.permute(1, 2, 0).numpy())
    n = 160
    ref = reference_views(pil, n, 24, generator=gen(0))
    fast = DeviceAugment()(cpu_views(img, n, 24, generator=gen(1)), gen(2))
    for stat in (lambda v: v.mean((0, 2, 3)), lambda v: v.std((2, 3)).mean(0)):
        assert (stat(ref) - stat(fast)).abs().max() < 0.15


def test_blur_conv_path_equals_slice_path():
    # CUDA uses the depthwise-conv path, the CPU the shifted-slice sum: both must be the same blur
    x = photo(3, 20, 24).float()
    sigma = torch.tensor([0.3, 1.2, 1.9])
    for r in (3, 6):
        a = _blur(x, sigma, r, conv=True)
        b = _blur(x, sigma, r, conv=False)
        assert (a - b).abs().max() < 1e-3
        assert (a - x).abs().max() > 1  # it does blur


def test_close_to_pil_ops_with_same_parameters():
    """The PIL recipe's own ops (uint8 at every step, uint8 HSV for hue, box-blur Gaussian) with the drawn
    parameters: on average within ~1.4 grey levels (docs/benchmarks.md); a wrong range, order or op would be
    tens of levels off."""
    import torchvision.transforms.functional as F1

    n = 32
    x = photo(n, 48, 48, seed=7)
    aug = DeviceAugment(cpu_chunk=n)
    p = aug.draw(n, gen(3))
    out = aug.apply(x, p, normalize=False)
    ops = (F1.adjust_brightness, F1.adjust_contrast, F1.adjust_saturation)
    worst = 0.0
    for b in range(n):
        im = Image.fromarray(x[b].permute(1, 2, 0).numpy())
        if p["jitter"][b]:
            for op in p["order"][b].tolist():
                factor = p["hue"][b] if op == 3 else p["factors"][b, op]
                im = (ops[op] if op < 3 else F1.adjust_hue)(im, float(factor))
        if p["gray"][b]:
            im = F1.to_grayscale(im, 3)
        if p["blur"][b]:
            im = im.filter(ImageFilter.GaussianBlur(radius=float(p["sigma"][b])))
        if p["flip"][b]:
            im = F1.hflip(im)
        d = (out[b] - torch.from_numpy(np.array(im)).permute(2, 0, 1).float()).abs()
        worst = max(worst, float(d.mean()))
        assert d.max() < 40, (b, d.max())
    assert worst < 3.0
