"""The `cpu` device: the compiled graph's `ember` ops through PyTorch's CPU kernels
(see `runtime/devices/torch_exec.py`)."""
from __future__ import annotations

from typing import Any, Sequence

import torch

from runtime.devices.torch_exec import TorchBackend, run_on

#: Where this device wants its inputs (checked before anything runs).
INPUT_DEVICE = "cpu"


def run(compiled: Any, inputs: Sequence[torch.Tensor], **options: Any) -> list[torch.Tensor]:
    if options:
        raise TypeError(f"the cpu device takes no options, got {sorted(options)}")
    return run_on(compiled, inputs, "cpu")


class Backend(TorchBackend):
    """Sessions on the CPU: device tensors are CPU tensors."""
    device = "cpu"
