"""`ember.expect` on the vector core: the data's size check of a Program compiled for the sizes of
its example (`ops/data_dependent.py`), one row per vector-core loop iteration.

The kernel copies its integer rows (the count the data gave) to its result and stops the run at
the first element that differs from the value the Program was compiled for; the fault names
the op, its source line and the size it expected.
"""
from __future__ import annotations

from llvmlite import ir

from ops.kernel import register_kernel
from ops.kernels.vector_ir import I32, I64, KernelIR, const
from ops.kernels.vector_rows import VectorRowKernel
from simulator.isa.vector import Region, VectorKernel


def expect_kernel(cols: int, equals: int, what: str, vlen_bytes: int) -> VectorKernel:
    """Rows of ``cols`` int32 values copied from region 0 to region 1, stopping at the first
    value other than ``equals``."""
    regions = (Region("in", cols * 4), Region("out", cols * 4))
    kir = KernelIR(f"expect_{cols}_{equals}", regions, vlen_bytes)
    n, b = kir.lanes, kir.builder
    row0 = b.mul(kir.row, const(I64, cols))
    lb, j, live = kir.lanes_loop(b, cols)
    at = lb.add(row0, lb.sext(j, I64))
    v = kir.load_vec(lb, 0, "int32", at, mask=live, fill=equals)
    other = lb.icmp_signed("!=", v, ir.Constant(kir.vec(I32), [equals] * n))
    ok = kir.fail_where(lb, lb.and_(live, other), at, -(-cols // n), "same")
    kir.store_masked(ok, 1, "int32", at, v, live)
    end = kir.end_lanes_loop(ok, j, cols)
    return kir.finish(end, fault=what)


class ExpectKernel(VectorRowKernel):
    """The size check of a data-dependent size, on integer (int32 on the chip) rows."""
    ops = ("expect",)

    def accepts(self, op, operands, result, attrs, chip=None) -> bool:
        x = operands[0]
        return x is not None and x.rank >= 1 and x.numel > 0 and x.dtype in ("i64", "i32")

    def vector_kernel(self, call, chip) -> VectorKernel:
        if call.inputs[0].dtype != "int32":
            raise ValueError(f"ember.expect checks int32 values on the chip, not {call.inputs[0].dtype}")
        _, cols = self.matrix(call)
        return expect_kernel(cols, call.attrs["equals"], call.attrs["what"], chip.vector_core.vlen_bytes)

    def flops(self, call):
        return call.output.nbytes // 4


register_kernel(ExpectKernel())
