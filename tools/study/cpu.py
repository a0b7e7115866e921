"""The label of a CPU model that the study's CPU seconds are recorded under, with its native bf16 units: a
leaf module, so that the report can read the labels without importing the scheduler."""
from __future__ import annotations

import functools

from pretrain import precision

NO_BF16 = "no bf16"  # cpu_model()'s mark of a CPU that pretrains in fp32; report_text reads it


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU model name and its native bf16 units, e.g. 'AMD EPYC (avx512_bf16)' or 'AMD EPYC (no bf16)'.

    The model name alone does not identify the kernels: a virtual machine reports 'AMD EPYC' for generations
    with and without AVX512-BF16, and `amp: auto` pretrains in bf16 on one and in fp32 on the other
    (pretrain/precision.py), at several times the CPU seconds."""
    name = precision.cpu_name(cpuinfo)
    units = precision.cpu_bf16_flags(cpuinfo)
    return f"{name} ({', '.join(units) if units else NO_BF16})"


@functools.cache
def this_cpu() -> str:
    """cpu_model() of this machine, read once."""
    return cpu_model()
