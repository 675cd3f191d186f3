"""What a Program's steps cost by their arithmetic: FLOPs and bytes per step, and the modelled time
of a step run on the host (the chip file's `host` section).

A host step takes max(FLOPs / the host's FLOP/s, bytes / its memory bandwidth) plus its dispatch
overhead. FLOPs are those the op's kernel template counts (the same count the roofline uses); an
op with no template (a gather, a host call of an aten op) is charged for its bytes only.
"""
from __future__ import annotations

import math
from typing import Any

from ops.kernel import KernelCall, Placement, kernel_for
from ops.registry import numpy_dtype

_ISA_OF = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}


def step_call(program: Any, step: dict[str, Any]) -> KernelCall:
    """A KernelCall with the step's operand shapes (addresses do not matter for FLOPs)."""
    def place(t):
        if t is None:
            return None
        entry = program.tensors[t]
        dt = entry.get("isa_dtype") or _ISA_OF.get(entry["dtype"], "fp32")
        return Placement(entry.get("space", "dram"), 0, tuple(entry["shape"]), dt)
    attrs = {k: tuple(v) if isinstance(v, list) else v for k, v in step["attrs"].items()}
    return KernelCall(step["op"], tuple(place(t) for t in step["operands"]), place(step["results"][0]), attrs)


def step_flops(program: Any, step: dict[str, Any]) -> int:
    """FLOPs of one step: the kernel's own count, or for a host step the count its op's kernel
    template would give (0 for ops without one, such as an embedding gather)."""
    if step["kind"] == "kernel":
        return int(step.get("flops", 0))
    if step["kind"] != "host" or step["op"].startswith("host:"):
        return 0
    template = kernel_for(step["op"])
    if template is None:
        if step["op"] == "convolution":   # 2 * outputs * (input channels per group * kernel)
            w = program.tensors[step["operands"][1]]["shape"]
            out = program.tensors[step["results"][0]]["shape"]
            return 2 * math.prod(out) * math.prod(w[1:])
        return 0
    try:
        return int(template.flops(step_call(program, step)))
    except Exception:       # a template that cannot read this instance's shapes
        return 0


def step_bytes(program: Any, step: dict[str, Any]) -> int:
    """Bytes a step reads and writes, each tensor once, as the host holds them (its torch dtype)."""
    tensors = program.tensors
    return sum(math.prod(tensors[t]["shape"]) * numpy_dtype(tensors[t]["dtype"]).itemsize
               for t in [*step["operands"], *step["results"]] if t is not None)


def host_step_seconds(program: Any, step: dict[str, Any], chip: Any) -> float:
    """Modelled seconds of a host step on the chip's host."""
    return chip.host.step_seconds(step_flops(program, step), step_bytes(program, step))
