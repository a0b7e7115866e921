"""Numeric precision of the training step: the `amp` config key, resolved once at start for the device.

    amp: auto (default) | off (= fp32) | bf16 | fp16

- CUDA: `auto` is bf16 autocast where the GPU supports it, else fp16 autocast with a GradScaler (the engine's
  behaviour before this key had values); `bf16` / `fp16` force one.
- CPU: `auto` is bf16 autocast when the CPU has native bf16 matrix instructions (Intel AMX-BF16 or
  AVX512-BF16, read from the /proc/cpuinfo flags; oneDNN runs the convolutions on them), else fp32: without
  them oneDNN emulates bf16, slower than fp32. `bf16` forces it anyway; `fp16` is refused (CUDA only).
- channels_last (NHWC) goes with it where it helps: on CUDA (cuDNN's tensor-core kernels want NHWC) and in
  CPU bf16 runs (oneDNN's AMX convolutions; measured in docs/benchmarks.md), unless `channels_last: false`.

The loss is always computed in float32, outside autocast (pretrain/engine.py sgd_step).
"""
from __future__ import annotations

import contextlib
import platform
from dataclasses import dataclass

import torch

from pretrain.config import ConfigError

BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo names of native bf16 matrix/dot instructions


@dataclass(frozen=True)
class Precision:
    """What `amp` resolved to: the autocast dtype (None = fp32), the memory format and why."""
    device_type: str
    dtype: torch.dtype | None
    channels_last: bool
    reason: str

    @property
    def name(self) -> str:  # the resolved value written to config.yaml: bf16, fp16 or off
        return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(self.dtype, "off")

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    @property
    def needs_scaler(self) -> bool:  # fp16 gradients underflow without loss scaling; bf16 has fp32's range
        return self.dtype == torch.float16

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)


def cpu_name(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's model name as /proc/cpuinfo gives it ('AMD EPYC'), else the platform's ('x86_64', 'arm'), for
    every figure that is reported with the CPU it was measured on."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_bf16_flags(cpuinfo: str = "/proc/cpuinfo") -> list[str]:
    """The native bf16 instruction flags this CPU reports ([] when there are none or no /proc/cpuinfo)."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return [f for f in BF16_CPU_FLAGS if f in flags]
    except OSError:
        pass
    return []


def resolve(amp: str, device: torch.device, channels_last: bool = True, cpu_flags: list[str] | None = None
            ) -> Precision:
    """Resolve `amp` (auto/off/fp32/bf16/fp16) for `device`; cpu_flags: as cpu_bf16_flags() (read if None)."""
    if amp not in ("auto", "off", "fp32", "bf16", "fp16"):
        raise ConfigError(f"config key 'amp' must be one of auto, off, fp32, bf16, fp16, got '{amp}'")
    if device.type == "cuda":
        if amp in ("off", "fp32"):
            return Precision("cuda", None, channels_last, f"amp={amp}")
        if amp == "auto":
            # native bf16 only: pre-Ampere GPUs (V100, T4) emulate it slowly and belong to fp16 + GradScaler
            bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
            why = "auto: the GPU supports bf16" if bf16 else "auto: no bf16 on this GPU, fp16 + GradScaler"
            return Precision("cuda", torch.bfloat16 if bf16 else torch.float16, channels_last, why)
        dtype = torch.bfloat16 if amp == "bf16" else torch.float16
        return Precision("cuda", dtype, channels_last, f"amp={amp}")
    if device.type != "cpu":
        raise ConfigError(f"amp is implemented for cpu and cuda devices, not {device.type}")
    if amp == "fp16":
        raise ConfigError("amp=fp16 needs a CUDA device; on the CPU use amp=bf16 or amp=off")
    if amp in ("off", "fp32"):
        return Precision("cpu", None, False, f"amp={amp}")
    if amp == "bf16":
        return Precision("cpu", torch.bfloat16, channels_last, "amp=bf16")
    flags = cpu_bf16_flags() if cpu_flags is None else cpu_flags
    if flags:
        return Precision("cpu", torch.bfloat16, channels_last, f"auto: the CPU has {'+'.join(flags)}")
    return Precision("cpu", None, False, "auto: no native bf16 on this CPU (no amx_bf16/avx512_bf16 flag)")
