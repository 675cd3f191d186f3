"""Row-wise reductions on the SIMD engines (`ember.reduce`: sum, mean, max, min over trailing
dims), on the row-wise framework (`rowwise.RowwiseKernel`): one row reduction per tile, and
rows too long for local memory reduced chunk by chunk into a running result. Reductions over
leading or middle dims run on the vector core (ops/kernels/vector_reduce.py).
"""
from __future__ import annotations

import math

from ops.kernel import ISA_ITEMSIZE, hands_off, register_kernel
from ops.kernels.rowwise import Job, RowwiseKernel, Simd, _float_rows
from ops.kernels.vector_reduce import VECTOR_REDUCE

REDUCE_FN = {"sum": "ADD", "mean": "ADD", "max": "MAX", "min": "MIN"}


def _first_reduced(rank: int, dims) -> int | None:
    """The first reduced dim when `dims` are the trailing dims (empty: all), else None."""
    dims = tuple(dims)
    if not dims:
        return 0
    return dims[0] if dims == tuple(range(dims[0], rank)) else None


@hands_off(VECTOR_REDUCE)
class ReduceKernel(RowwiseKernel):
    """sum / mean / max / min over trailing dims (all dims when `dims` is empty): one row
    reduction per tile, in fp32 inside."""
    ops = ("reduce",)

    def accepts(self, op, operands, result, attrs, chip=None) -> bool:
        x = operands[0]
        if not _float_rows(operands, result) or attrs["kind"] not in REDUCE_FN:
            return False
        return _first_reduced(x.rank, attrs["dims"]) is not None

    def matrix(self, call):
        shape = call.inputs[0].shape
        cols = math.prod(shape[_first_reduced(len(shape), call.attrs["dims"]):])
        return math.prod(shape) // cols, cols

    def out_cols(self, call):
        return 1

    def flops(self, call):
        return call.inputs[0].nbytes // ISA_ITEMSIZE[call.inputs[0].dtype]

    def tile(self, call, lay, slot, m, row0):
        _, c = self.matrix(call)
        kind, dt, odt = call.attrs["kind"], call.inputs[0].dtype, call.output.dtype
        x, out, acc = lay["x"][slot], lay["out"][slot], lay["vec"][0]
        if kind != "mean":
            return [Simd("reduce", REDUCE_FN[kind], (x, out), m, c, dtype=dt, out_dtype=odt)]
        return [Simd("reduce", "ADD", (x, acc), m, c, dtype=dt),
                Simd("scalar", "MUL", (acc, out), m, 1, imm=1.0 / c, out_dtype=odt)]

    def row_jobs(self, call, lay, row, chunks):
        kind, dt, odt = call.attrs["kind"], call.inputs[0].dtype, call.output.dtype
        _, cols = self.matrix(call)
        acc, cs = lay["vec"][:2]
        out = call.output
        last = len(chunks) - 1

        def part(j: int, n: int):
            def steps(slot: int) -> list[Simd]:
                x = lay["x"][slot]
                out_ = [Simd("reduce", REDUCE_FN[kind], (x, acc if j == 0 else cs), 1, n, dtype=dt)]
                if j > 0:
                    out_.append(Simd("binary", REDUCE_FN[kind], (acc, cs, acc), 1, 1))
                if j == last:
                    out_.append(Simd("scalar", "MUL", (acc, lay["out"][slot]), 1, 1,
                                     imm=1.0 / cols if kind == "mean" else 1.0, out_dtype=odt))
                return out_
            return steps

        item = ISA_ITEMSIZE[out.dtype]
        return [Job((self.chunk_load(call, row, c0, n),), part(j, n),
                    (("out", out.space, out.addr + row * item, item),) if j == last else ())
                for j, (c0, n) in enumerate(chunks)]


register_kernel(ReduceKernel())
