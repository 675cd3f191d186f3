"""Grouped matmul kernel (`ember.grouped_matmul`, a mixture-of-experts layer's experts): one
GEMM per expert that received rows, their sizes read at run time.

The group ends are data: the router's choices, counted on the chip. So the kernel is made for
the sizes when it runs, as the PEs' control cores would walk the table of group ends:

* PE 0 first reads the group ends from device memory into its local memory (one DMA) and every
  PE waits for that (a barrier): no GEMM starts before the sizes are known.
* Each expert e with rows [s, t) is then a GEMM of its rows by weight[e], tiled and scheduled
  by the GEMM template (`matmul.py`: its plan search, multicast sharing and double buffering),
  on rows s..t-1 of the input and output in place (no copies) and on weight[e] where it lies.
  Experts that received no rows cost nothing: their weights are never read.
* A barrier between two experts' GEMMs lets the next reuse the PEs' local buffers.

`sized_by` tells the runtime which operand holds the sizes: it reads them from the run's values,
or, in a timing-only run, takes them from the run's routing (runtime/routing.py), and emits the
kernel of `plan_for(sizes)` (runtime/sized_kernels.py). `emit` makes the kernel for the compile-time
assumption, the uniform routing; `predict` is that kernel's cost, the GEMMs' predictions summed.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import accumulate
from typing import Any, Iterator, Sequence

from ops.grouped_matmul import group_bounds
from ops.kernel import ISA_ITEMSIZE, KernelCall, KernelTemplate, Placement, kernel_for, register_kernel
from simulator.isa import Space

FLOATS = ("fp32", "bf16", "fp16")


@dataclass(frozen=True)
class GroupedPlan:
    """The rows per group the kernel is made for (at compile time, the uniform routing's)."""
    sizes: tuple[int, ...]


def expert_call(call: KernelCall, expert: int, start: int, end: int) -> KernelCall:
    """The GEMM of rows [start, end) of the input by weight[expert], in place in the operands."""
    x, w, _ = call.inputs
    out = call.output
    transposed = bool(call.attrs["transposed"])
    E, N = w.shape[0], out.shape[1]
    K = x.shape[1]
    es, oes = ISA_ITEMSIZE[x.dtype], ISA_ITEMSIZE[out.dtype]
    w_shape = (N, K) if transposed else (K, N)
    rows = Placement(x.space, x.addr + start * K * es, (end - start, K), x.dtype)
    weight = Placement(w.space, w.addr + expert * K * N * ISA_ITEMSIZE[w.dtype], w_shape, w.dtype)
    result = Placement(out.space, out.addr + start * N * oes, (end - start, N), out.dtype)
    if transposed:
        return KernelCall("linear", (rows, weight, None), result)
    return KernelCall("matmul", (rows, weight), result)


class GroupedMatmulTemplate(KernelTemplate):
    ops = ("grouped_matmul",)
    integer_operands = True      # the group ends (int32)
    #: the operand whose values set the kernel's work: the runtime emits `plan_for(sizes)` for them
    sized_by = 2

    def __init__(self):
        self._plans: dict[tuple, Any] = {}

    def accepts(self, op, operands, result, attrs, chip=None) -> bool:
        x, w, offsets = operands
        return x.is_float and x.dtype in ("f32", "bf16", "f16") and offsets.dtype in ("i32", "i64")

    @staticmethod
    def uniform_sizes(call: KernelCall) -> tuple[int, ...]:
        """The rows spread evenly over the groups, the first ones taking the remainder (the
        runtime's uniform routing, runtime/routing.py)."""
        rows, groups = call.inputs[0].shape[0], call.inputs[1].shape[0]
        return tuple(rows // groups + (e < rows % groups) for e in range(groups))

    def plans(self, call: KernelCall, chip: Any) -> Iterator[GroupedPlan]:
        if call.compute_dtype in FLOATS:
            yield GroupedPlan(self.uniform_sizes(call))

    @staticmethod
    def plan_for(sizes: Sequence[int]) -> GroupedPlan:
        return GroupedPlan(tuple(sizes))

    def _gemms(self, call: KernelCall, sizes: Sequence[int], chip: Any):
        """(GEMM call, its plan) per expert with rows."""
        gemm = kernel_for("matmul")
        out = []
        for e, s, t in group_bounds(list(accumulate(sizes)), call.inputs[0].shape[0]):
            sub = expert_call(call, e, s, t)
            key = (sub.op, sub.inputs[0].shape, sub.inputs[1].shape, sub.inputs[0].dtype, sub.output.dtype,
                   sub.inputs[0].space, sub.inputs[1].space, sub.output.space, chip.fingerprint())
            if key not in self._plans:
                self._plans[key] = gemm.choose(sub, chip)
            out.append((sub, self._plans[key]))
        return out

    def predict(self, call: KernelCall, plan: GroupedPlan, chip: Any) -> int:
        gemm = kernel_for("matmul")
        return sum(int(gemm.predict(sub, p, chip)) for sub, p in self._gemms(call, plan.sizes, chip))

    def emit(self, call: KernelCall, plan: GroupedPlan, chip: Any, builder: Any) -> None:
        """The kernel for the plan's group sizes (rows per expert, in expert order)."""
        gemm = kernel_for("matmul")
        ends = call.inputs[2]
        builder.pe(0).dma(Space[ends.space.upper()], ends.addr, Space.LOCAL, 0, ends.nbytes)
        for sub, plan in self._gemms(call, plan.sizes, chip):
            builder.barrier()
            gemm.emit(sub, plan, chip, builder)

    def flops(self, call: KernelCall) -> int:
        x, out = call.inputs[0], call.output
        return 2 * x.shape[0] * x.shape[1] * out.shape[1]

    def bytes_moved_for(self, call: KernelCall, sizes: Sequence[int]) -> dict[str, int]:
        """The least bytes per memory level: the rows in, the results out, and the weights of
        the experts that received rows (each read once)."""
        x, w, ends = call.inputs
        moved: dict[str, int] = {}
        per_expert = w.nbytes // w.shape[0]
        for p, n in ((x, x.nbytes), (call.output, call.output.nbytes), (ends, ends.nbytes),
                     (w, per_expert * sum(1 for s in sizes if s))):
            moved[p.space] = moved.get(p.space, 0) + n
        return moved

    def bytes_moved(self, call: KernelCall) -> dict[str, int]:
        return self.bytes_moved_for(call, self.uniform_sizes(call))


register_kernel(GroupedMatmulTemplate())
