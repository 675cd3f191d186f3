"""Device backends, one module each (`runtime/devices/<name>.py`), found by name.

Each module exposes `run(compiled, inputs, **options) -> list[torch.Tensor]`.
"""
from __future__ import annotations

import importlib
from types import ModuleType

DEVICES = ("reference", "sim", "cpu", "cuda")


def get_device(name: str) -> ModuleType:
    if name not in DEVICES:
        raise ValueError(f"unknown device '{name}'; choose one of: {', '.join(DEVICES)}")
    try:
        return importlib.import_module(f"runtime.devices.{name}")
    except ModuleNotFoundError as e:
        if e.name == f"runtime.devices.{name}":
            raise NotImplementedError(f"device '{name}' is not available in this build of Ember") from e
        raise


def phase_for(device: str, dtype: str) -> str:
    """The compile phase `device` needs: the simulator runs a Program; the torch devices run the
    graph as it is in fp32, and the Program's steps otherwise (values rounded and quantized as
    the chip holds them); the reference device, the graph."""
    if device == "sim" or (device in ("cpu", "cuda") and dtype != "fp32"):
        return "program"
    return "graph"
