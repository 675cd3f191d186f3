"""`ember.check`: does a model run on a chip, how fast, how accurately? (for model teams)"""
from __future__ import annotations

import html
import json
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from simulator.isa.mx import FORMATS as MX_FORMATS


@dataclass
class CheckReport:
    """A model's compatibility with a chip."""
    chip: str
    dtype: str
    ops_on_accelerator: dict[str, int] = field(default_factory=dict)
    ops_on_host: dict[str, int] = field(default_factory=dict)
    unsupported: list[str] = field(default_factory=list)      # aten ops with no lowering, with source lines
    reference_error: float | None = None                      # graph semantics vs PyTorch (fp32 reference)
    simulated_error: float | None = None                      # the simulated chip vs PyTorch
    latency_s: float | None = None                            # simulated, host ops excluded
    weight_bytes: int = 0
    sram_bytes: int = 0
    dram_bytes: int = 0

    @property
    def fits_sram(self) -> bool:
        return self.weight_bytes <= self.sram_bytes

    @property
    def fits_dram(self) -> bool:
        return self.weight_bytes <= self.dram_bytes

    @property
    def accelerator_fraction(self) -> float:
        on, off = sum(self.ops_on_accelerator.values()), sum(self.ops_on_host.values())
        return on / (on + off) if on + off else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "fits_sram": self.fits_sram, "fits_dram": self.fits_dram,
                "accelerator_fraction": self.accelerator_fraction}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def _lines(self) -> list[str]:
        def fmt(x: float | None, spec: str) -> str:
            return "not measured" if x is None else format(x, spec)
        lines = [f"chip {self.chip}, computing in {self.dtype}",
                 f"ops on the accelerator: {sum(self.ops_on_accelerator.values())} "
                 f"({100 * self.accelerator_fraction:.0f}%)  "
                 + ", ".join(f"{k} x{v}" for k, v in sorted(self.ops_on_accelerator.items(), key=lambda kv: -kv[1])),
                 f"ops on the host: {sum(self.ops_on_host.values())}  "
                 + ", ".join(f"{k} x{v}" for k, v in sorted(self.ops_on_host.items(), key=lambda kv: -kv[1]))]
        lines += [f"unsupported: {u}" for u in self.unsupported] or ["unsupported: none"]
        lines += [f"error vs PyTorch: reference {fmt(self.reference_error, '.2e')}, "
                  f"simulated chip {fmt(self.simulated_error, '.2e')}",
                  "estimated latency: " + ("not measured" if self.latency_s is None else
                                           f"{self.latency_s * 1e3:.3f} ms (accelerator kernels and host-link "
                                           "transfers; host ops not timed)"),
                  f"weights: {_size(self.weight_bytes)} in {self.dtype}; "
                  f"fit SRAM ({_size(self.sram_bytes)}): {'yes' if self.fits_sram else 'no'}, "
                  f"fit DRAM ({_size(self.dram_bytes)}): {'yes' if self.fits_dram else 'no'}"]
        return lines

    def __str__(self) -> str:
        return "\n".join(self._lines())

    def to_html(self) -> str:
        items = "".join(f"<li>{html.escape(line)}</li>" for line in self._lines())
        return f"<html><body><h1>Ember compatibility report</h1><ul>{items}</ul></body></html>"


def _size(n: int) -> str:
    for unit, div in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= div:
            return f"{n / div:,.1f} {unit}"
    return f"{n} B"


def _itemsize(dtype: str) -> float:
    """Bytes per weight in `dtype` (an MX format's per value: its block's bytes over 32)."""
    if dtype in MX_FORMATS:
        return MX_FORMATS[dtype].value_bytes
    return {"fp32": 4, "bf16": 2, "int8": 1, "fp8": 1}[dtype]


def check(model: torch.nn.Module, example_inputs: Any, *, chip: Any = "mtia2i", dtype: str = "bf16",
          simulate: bool = True) -> CheckReport:
    """Compile `model` for `chip` keeping unsupported ops on the host, and report what runs
    where, the numeric error against PyTorch, the simulated latency and whether the weights fit."""
    import ember
    from ember.demo import max_relative_error
    spec = ember.load_chip(chip)
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    cm = ember.compile(model, example_inputs, chip=spec, dtype=dtype, to="program", allow_unsupported=True)
    report = CheckReport(chip=spec.name, dtype=dtype, sram_bytes=spec.sram_bytes, dram_bytes=spec.dram.bytes)
    on_chip, on_host = Counter(), Counter()
    for step in cm.program.steps:
        if step["kind"] == "kernel":
            on_chip[step["op"]] += 1
        elif step["kind"] == "host":
            on_host[step["op"]] += 1
    report.ops_on_accelerator, report.ops_on_host = dict(on_chip), dict(on_host)
    report.unsupported = [str(u) for u in cm.unsupported]
    params = list(model.parameters()) + list(model.buffers())
    report.weight_bytes = sum(p.numel() for p in params if p.is_floating_point()) * _itemsize(dtype)
    meta = any(x.is_meta for x in example_inputs) or any(p.is_meta for p in params)
    if meta:
        if simulate:
            cm.run(*example_inputs, device="sim", timing_only=True)
            report.latency_s = cm.last_run.seconds
        return report
    with torch.no_grad():
        ref = model(*example_inputs)
    report.reference_error = _finite(max_relative_error(cm.run(*example_inputs, device="reference"), ref))
    if simulate:
        report.simulated_error = _finite(max_relative_error(cm.run(*example_inputs, device="sim"), ref))
        report.latency_s = cm.last_run.seconds
    return report


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None
