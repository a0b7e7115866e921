"""The `amp` key: resolution per device (CPU flags mocked), old config values, bf16 step, fp32 loss."""
import contextlib
import platform

import pytest
import torch

from pretrain import engine, precision
from pretrain.config import Config, ConfigError, apply
from pretrain.loss import fastsiam_loss
from pretrain.model import SiameseNet

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize("flags", [["amx_bf16"], ["avx512_bf16"], ["amx_bf16", "avx512_bf16"]])
def test_auto_on_a_cpu_with_bf16_units_is_bf16_channels_last(flags):
    p = precision.resolve("auto", CPU, channels_last=True, cpu_flags=flags)
    assert (p.name, p.dtype, p.channels_last) == ("bf16", torch.bfloat16, True)
    assert p.memory_format == torch.channels_last and not p.needs_scaler
    assert flags[0] in p.reason
    assert not precision.resolve("auto", CPU, channels_last=False, cpu_flags=flags).channels_last


def test_auto_on_a_cpu_without_bf16_units_is_fp32():
    p = precision.resolve("auto", CPU, cpu_flags=[])
    assert (p.name, p.dtype, p.channels_last) == ("off", None, False)
    assert isinstance(p.autocast(), contextlib.nullcontext)
    assert "no native bf16" in p.reason


def test_forced_values_on_the_cpu():
    assert precision.resolve("bf16", CPU, cpu_flags=[]).dtype == torch.bfloat16  # forced even if emulated
    for off in ("off", "fp32"):
        assert precision.resolve(off, CPU, cpu_flags=["amx_bf16"]).dtype is None
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        precision.resolve("fp16", CPU)
    with pytest.raises(ConfigError, match="must be one of"):
        precision.resolve("half", CPU)


@pytest.mark.parametrize("bf16_ok, want", [(True, torch.bfloat16), (False, torch.float16),
                                           ("emulated", torch.float16)])
def test_cuda_auto_keeps_the_previous_behaviour(monkeypatch, bf16_ok, want):
    # before `amp` had values, amp=true on CUDA meant bf16 where supported, else fp16 with a GradScaler;
    # "supported" means native: torch's default also says True for GPUs that only emulate bf16 (V100, T4)
    def is_bf16_supported(including_emulation=True):
        return bf16_ok is True or (bf16_ok == "emulated" and including_emulation)

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    p = precision.resolve("auto", CUDA, channels_last=True)
    assert p.dtype == want and p.channels_last and p.needs_scaler == (want == torch.float16)
    assert precision.resolve("off", CUDA).dtype is None
    assert precision.resolve("fp16", CUDA).needs_scaler


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16 amx_tile amx_bf16\n\n"
                    "processor\t: 1\nflags\t\t: fpu\n")
    assert precision.cpu_bf16_flags(str(info)) == ["amx_bf16", "avx512_bf16"]
    info.write_text("flags\t\t: fpu sse avx2\n")
    assert precision.cpu_bf16_flags(str(info)) == []
    assert precision.cpu_bf16_flags(str(tmp_path / "missing")) == []


def test_cpu_name_is_the_model_name_line_else_the_platform(tmp_path):
    """Every tool that prints a figure with its CPU reads the name here (evaluate, demo, bench, study)."""
    info = tmp_path / "cpuinfo"
    name = "AMD EPYC 9454 48-Core Processor"
    info.write_text(f"processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: {name}\nflags\t\t: fpu\n\n"
                    f"processor\t: 1\nmodel name\t: {name}\n")
    assert precision.cpu_name(str(info)) == name
    info.write_text("processor\t: 0\nflags\t\t: fpu\n")  # no model name line (some ARM kernels)
    fallback = platform.processor() or platform.machine() or "unknown CPU"
    assert precision.cpu_name(str(info)) == fallback != ""
    assert precision.cpu_name(str(tmp_path / "missing")) == fallback


def test_config_amp_values_and_old_booleans():
    cfg = Config()
    assert cfg.amp == "auto"
    assert apply(cfg, {"amp": True}, "x").amp == "auto"  # old config.yaml files and YAMLs say amp: true
    assert apply(cfg, {"amp": False}, "x").amp == "off"
    assert apply(cfg, {"amp": "bf16"}, "x").amp == "bf16"
    with pytest.raises(ConfigError, match="'amp' must be one of"):
        apply(cfg, {"amp": "int8"}, "x")


def test_bf16_step_is_finite_and_the_loss_sees_float32(monkeypatch):
    seen = []

    def spy(p, z):
        seen.append({t.dtype for t in [*p, *z]})
        return fastsiam_loss(p, z)

    monkeypatch.setattr(engine, "fastsiam_loss", spy)
    torch.manual_seed(0)
    prec = precision.resolve("bf16", CPU)
    model = SiameseNet("resnet18", dim=64, pred_dim=16, cifar_stem=True).to(memory_format=prec.memory_format)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    xs = [torch.randn(4, 3, 16, 16).contiguous(memory_format=prec.memory_format) for _ in range(4)]
    before = model.predictor[-1].weight.detach().clone()
    for _ in range(2):
        loss, z = engine.sgd_step(model, opt, scaler, xs, prec.autocast())
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert z[0].dtype == torch.bfloat16  # the network did run in bf16
    assert seen == [{torch.float32}] * 2  # ...and the loss got float32 inputs
    assert model.predictor[-1].weight.dtype == torch.float32  # master weights stay fp32
    assert not torch.equal(model.predictor[-1].weight, before)
