"""Prefix scans on the vector core: `ember.scan` (cumsum, cumprod) over the last dim, one row per
vector-core loop iteration (`vector_rows.VectorRowKernel` tiles them).

A scan is a chain: each element needs the one before, so the kernel walks the row on the scalar
core, one element per iteration. Integers accumulate in int32 (the chip's integers, wrapping as
int32 does); fp32 accumulates in fp64 and rounds each result to fp32, as PyTorch's CPU scan does,
so the results are bit-equal to it.
"""
from __future__ import annotations

from llvmlite import ir

from ops.kernel import register_kernel
from ops.kernels.vector_ir import F32, I64, KernelIR, const, is_int
from ops.kernels.vector_rows import VectorRowKernel
from simulator.isa.vector import Region, VectorKernel

F64 = ir.DoubleType()


def scan_kernel(dtype: str, cols: int, kind: str, vlen_bytes: int) -> VectorKernel:
    """Inclusive prefix ``kind`` ("sum", "prod") of each row of ``cols`` elements of ``dtype``
    (fp32 or int32); region 0 the rows, region 1 the results (the same dtype)."""
    if dtype not in ("fp32", "int32") or kind not in ("sum", "prod"):
        raise ValueError(f"the vector core scans fp32 or int32 by sum or prod, not {dtype} by {kind}")
    regions = (Region("in", cols * 4), Region("out", cols * 4))
    kir = KernelIR(f"scan_{kind}_{dtype}_{cols}", regions, vlen_bytes)
    integer = is_int(dtype)
    acc_t = ir.IntType(32) if integer else F64
    b = kir.builder
    base = b.mul(kir.row, const(I64, cols))
    loop = kir.block("elem", 0, cols)
    b.branch(loop)
    lb = ir.IRBuilder(loop)
    j = lb.phi(I64, "j")
    acc = lb.phi(acc_t, "acc")
    j.add_incoming(const(I64, 0), b.block)
    acc.add_incoming(const(acc_t, 0 if kind == "sum" else 1) if integer else const(F64, 0.0 if kind == "sum" else 1.0),
                     b.block)
    at = lb.add(base, j)
    v = kir.load(lb, 0, dtype, at)
    if integer:
        nxt = lb.add(acc, v) if kind == "sum" else lb.mul(acc, v)
        kir.store(lb, 1, dtype, at, nxt)
    else:
        v = lb.fpext(v, F64)
        nxt = lb.fadd(acc, v) if kind == "sum" else lb.fmul(acc, v)
        kir.store(lb, 1, dtype, at, lb.fptrunc(nxt, F32))
    j2 = lb.add(j, const(I64, 1))
    j.add_incoming(j2, loop)
    acc.add_incoming(nxt, loop)
    end = kir.block("row_end", 0, 1)
    lb.cbranch(lb.icmp_signed("<", j2, const(I64, cols)), loop, end)
    return kir.finish(ir.IRBuilder(end))


class ScanKernel(VectorRowKernel):
    """cumsum / cumprod over the last dim of fp32 or integer (int32 on the chip) tensors."""
    ops = ("scan",)

    def accepts(self, op, operands, result, attrs, chip=None) -> bool:
        x = operands[0]
        if x is None or x.rank < 1 or x.numel == 0 or attrs["dim"] != x.rank - 1:
            return False
        return attrs["kind"] in ("sum", "prod") and x.dtype in ("f32", "i64", "i32") and result.dtype == x.dtype

    def vector_kernel(self, call, chip) -> VectorKernel:
        _, cols = self.matrix(call)
        return scan_kernel(call.inputs[0].dtype, cols, call.attrs["kind"], chip.vector_core.vlen_bytes)

    def flops(self, call):
        return call.output.nbytes // 4


register_kernel(ScanKernel())
