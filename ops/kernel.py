"""Kernel templates: how one graph-level `ember` op becomes per-PE commands on a chip.

A template is registered for one or more `ember` op names. For a `KernelCall` (the op, where
its operands and result live, its attributes and compute dtype) it proposes tilings (`plans`),
predicts the cycles of each on a chip spec (`predict`, the cost model), and emits the chosen
plan's commands into a `simulator.isa.ProgramBuilder` (`emit`). The compiler picks the plan with
the fewest predicted cycles among those that fit local memory.

Templates live in `ops/kernels/<name>.py` and are found automatically. A large one keeps its
plan search in `<name>.py` and splits the rest by what it is: `<name>_tiles.py` (the problem's
geometry, a plan's layout and buffers), `<name>_cost.py` (`predict`) and `<name>_emit.py` (the
commands), as the GEMM and the convolution do.
"""
from __future__ import annotations

import importlib
import math
import pkgutil
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import numpy as np

#: `ember` element types -> the ISA's dtype names.
ISA_DTYPE = {"f32": "fp32", "bf16": "bf16", "f16": "fp16", "i8": "int8", "i32": "int32", "f8E4M3FN": "fp8"}
#: Bytes per element; a value in an MX block format ("mxfp8", "mxfp4") is held as rows of bytes
#: (simulator/isa/mx.py), so its elements are bytes.
ISA_ITEMSIZE = {"fp32": 4, "bf16": 2, "fp16": 2, "int8": 1, "int32": 4, "fp8": 1, "mxfp8": 1, "mxfp4": 1}
#: Local memory per PE assumed when a template is asked whether it runs an op without being told
#: the chip: that of the smallest chip shipped ("tiny").
MIN_LOCAL_BYTES = 64 * 1024


def local_bytes(chip: Any) -> int:
    """A PE's local memory on `chip`, or MIN_LOCAL_BYTES when the chip is not known."""
    return MIN_LOCAL_BYTES if chip is None else chip.local_mem.bytes


@dataclass(frozen=True)
class Placement:
    """Where a tensor lives while a kernel runs: a contiguous row-major buffer."""
    space: str                  # "dram" | "sram"
    addr: int                   # byte address in that space
    shape: tuple[int, ...]
    dtype: str                  # ISA dtype name: "fp32" | "bf16" | "fp16" | "int8" | "int32" | "fp8"

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * ISA_ITEMSIZE[self.dtype]


class NoTilingError(ValueError):
    """No plan of a kernel fits the chip's local memory (the message names the op and the field)."""


@dataclass(frozen=True)
class KernelCall:
    """One graph-level op to run as a kernel."""
    op: str                                  # `ember` op name ("matmul", "linear", ...)
    inputs: tuple[Placement | None, ...]     # one per declared operand (None: absent optional)
    output: Placement
    attrs: Mapping[str, Any] = field(default_factory=dict)
    #: the op's further results, in order (a per-row quantization writes its int8 rows and
    #: their scales in one pass)
    extra_outputs: tuple[Placement, ...] = ()

    @property
    def compute_dtype(self) -> str:
        return next(p.dtype for p in self.inputs if p is not None)

    @property
    def outputs(self) -> tuple[Placement, ...]:
        """Every result the kernel writes: `output`, then `extra_outputs`."""
        return (self.output, *self.extra_outputs)


class KernelTemplate(ABC):
    """The tiling template and cost model of some `ember` ops."""
    ops: tuple[str, ...] = ()
    #: Whether the template takes integer or boolean operands and results (indices, masks,
    #: positions); when False, the partition pass keeps every instance with one on the host.
    #: A template that sets it checks the integer dtypes it runs in `accepts`.
    integer_operands: bool = False
    #: The operand this op can update in place (an index_put into a KV cache): when the memory
    #: plan gives the result that operand's placement, the kernel writes only what changes.
    updates_operand: int | None = None

    def accepts(self, op: str, operands: list[Any], result: Any, attrs: Mapping[str, Any], chip: Any = None) -> bool:
        """Whether this template runs this instance (operand/result TensorSpecs, attributes) on
        `chip` (None: on any chip, i.e. within MIN_LOCAL_BYTES of local memory); instances it
        refuses stay on the host."""
        return True

    @abstractmethod
    def plans(self, call: KernelCall, chip: Any) -> Iterable[Any]:
        """Candidate plans (tile shapes, PE grid partitions) that fit the chip's local memory."""

    @abstractmethod
    def predict(self, call: KernelCall, plan: Any, chip: Any) -> int:
        """Predicted cycles of `plan` on `chip` (the cost model)."""

    @abstractmethod
    def emit(self, call: KernelCall, plan: Any, chip: Any, builder: Any) -> None:
        """Append the plan's commands to `builder` (a simulator.isa.ProgramBuilder)."""

    def flops(self, call: KernelCall) -> int:
        """Arithmetic operations the op performs (for the roofline bound)."""
        return 0

    def bytes_moved(self, call: KernelCall) -> dict[str, int]:
        """Bytes the op must move at each memory level at the least (for the roofline bound):
        by default every operand read once and every result written once."""
        moved: dict[str, int] = {}
        for p in (*call.inputs, *call.outputs):
            if p is not None:
                moved[p.space] = moved.get(p.space, 0) + p.nbytes
        return moved

    def choose(self, call: KernelCall, chip: Any) -> Any:
        """The plan with the fewest predicted cycles."""
        best = min(self.plans(call, chip), key=lambda p: self.predict(call, p, chip), default=None)
        if best is None:
            raise NoTilingError(f"ember.{call.op}: no tiling of {[p.shape if p else None for p in call.inputs]} "
                                f"fits local memory of {chip.local_mem.bytes} bytes (the chip's local_mem.bytes)")
        return best


class LocalArena:
    """Bump allocation of one kernel's local-memory buffers: `take(nbytes)` returns an offset
    aligned to `align` bytes; `end` is the bytes used so far."""

    def __init__(self, align: int = 64):
        self.align, self.end = align, 0

    def take(self, nbytes: int) -> int:
        addr = self.end
        self.end += -(-nbytes // self.align) * self.align
        return addr


def hands_off(delegate: Any):
    """Class decorator for a template whose op some other engine's template also runs: the
    instances `delegate.accepts` are taken too, and the calls `delegate.handles` go to its
    plans, predict, emit and flops (the two must take disjoint instances)."""
    def wrap(cls):
        own_accepts = cls.accepts

        def accepts(self, op, operands, result, attrs, chip=None):
            return delegate.accepts(op, operands, result, attrs, chip) or own_accepts(self, op, operands, result,
                                                                                         attrs, chip)
        cls.accepts = accepts
        for name in ("plans", "predict", "emit", "flops"):
            def routed(self, call, *args, _own=getattr(cls, name), _name=name):
                if delegate.handles(call):
                    return getattr(delegate, _name)(call, *args)
                return _own(self, call, *args)
            routed.__name__ = name
            setattr(cls, name, routed)
        return cls
    return wrap


_KERNELS: dict[str, KernelTemplate] = {}


def register_kernel(template: KernelTemplate) -> KernelTemplate:
    for op in template.ops:
        if op in _KERNELS:
            raise ValueError(f"ember.{op} has two kernel templates: {type(_KERNELS[op]).__name__} "
                             f"and {type(template).__name__}")
        _KERNELS[op] = template
    return template


def kernel_for(op: str) -> KernelTemplate | None:
    """The kernel template of `ember.<op>`, or None when it has none."""
    _load_kernels()
    return _KERNELS.get(op)


def _load_kernels() -> None:
    import ops.kernels as pkg
    for m in pkgutil.iter_modules(pkg.__path__):
        importlib.import_module(f"ops.kernels.{m.name}")


#: The share of the wait behind other PEs' transfers that a streaming DMA sees on average
#: (fitted once against the simulator on row-wise and attention kernels).
QUEUE_SHARE = 0.8


def streaming_dma_cycles(nbytes: int, space: str, pes: int, chip: Any) -> float:
    """Cycles of one DMA of `nbytes` between `space` ("dram" | "sram") and a PE while `pes` PEs
    stream at once: its latency, its bytes at the rate one PE gets alone, and a share
    (QUEUE_SHARE) of the wait behind the others on the shared memory and the column's NoC port."""
    clk = chip.clock_hz
    mem = {"dram": chip.dram_bytes_per_s, "sram": chip.sram.bytes_per_s}[space] / clk
    link = chip.noc.link_bytes_per_s / clk
    alone = min(mem, link, chip.local_mem.bytes_per_s / clk)
    per_col = math.ceil(pes / chip.pe_grid.cols)
    lat = chip.dma.latency_cycles + chip.noc.hop_latency_cycles * chip.pe_grid.rows
    mine = nbytes / alone
    return lat + mine + QUEUE_SHARE * max(0.0, nbytes * max(pes / mem, per_col / link) - mine)


def roofline_cycles(call: KernelCall, template: KernelTemplate, chip: Any,
                    moved: dict[str, int] | None = None) -> float:
    """max(ops / peak, bytes / bandwidth) in cycles: no schedule can beat it.

    Each memory level moves its bytes (`moved`, by default `template.bytes_moved`) at its own
    bandwidth, and the levels work at the same time, so the memory bound is the slowest level's.
    """
    # int32 work (indices, masks) is SIMD work as fp32 elementwise work is: bound it alike
    dtype = "fp32" if call.compute_dtype == "int32" else call.compute_dtype
    peak_per_cycle = chip.peak_ops_per_s(dtype) / chip.clock_hz
    compute = template.flops(call) / peak_per_cycle
    bandwidth = {"dram": chip.dram_bytes_per_s, "sram": chip.sram.bytes_per_s}
    moved = template.bytes_moved(call) if moved is None else moved
    memory = max((n / bandwidth[space] for space, n in moved.items()), default=0.0)
    return max(compute, memory * chip.clock_hz)
