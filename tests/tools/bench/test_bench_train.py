"""python -m tools.bench.train: the machine line its figures are printed and saved with."""
from __future__ import annotations

import torch

from pretrain import precision
from tools.bench.train import describe_machine


def test_the_machine_line_names_the_cpu_and_its_bf16_units():
    """A speed ratio moves with the CPU, so every figure carries the model name and whether bf16 is native."""
    line = describe_machine(torch.device("cpu"))
    assert line.startswith(precision.cpu_name() + ", ")
    assert ("native bf16: " in line) == bool(precision.cpu_bf16_flags())
    assert f"{torch.get_num_threads()} torch threads" in line
