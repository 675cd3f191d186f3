"""The `cuda` device: the compiled graph's `ember` ops through PyTorch's CUDA kernels, a GPU
fallback for whole compiled graphs (see `runtime/devices/torch_exec.py`). Inputs must already be
on the GPU; outputs stay there."""
from __future__ import annotations

from typing import Any, Sequence

import torch

from runtime.devices.torch_exec import TorchBackend, run_on

INPUT_DEVICE = "cuda"


def run(compiled: Any, inputs: Sequence[torch.Tensor], **options: Any) -> list[torch.Tensor]:
    if options:
        raise TypeError(f"the cuda device takes no options, got {sorted(options)}")
    if not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' needs a CUDA GPU, and torch sees none on this machine")
    return run_on(compiled, inputs, "cuda")


class Backend(TorchBackend):
    """Sessions on the GPU: device tensors stay in GPU memory between runs."""
    device = "cuda"

    def __init__(self, compiled: Any, memory: Any):
        if not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' needs a CUDA GPU, and torch sees none on this machine")
        super().__init__(compiled, memory)
