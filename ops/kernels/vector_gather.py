"""Gathers along the last dim on the vector core: `ember.gather` {dim = last} (torch.gather,
take_along_dim), one row per vector-core loop iteration (`vector_rows.VectorRowKernel` tiles
the input's rows with the same rows of the indices).

Row r of the result holds ``input[r, index[r, j]]`` for each j. The kernel walks the indices in
vectors of ``lanes``: it checks them against [0, N) (torch.gather does not wrap negative
indices: it raises, and so does the run, at the first index out of range), then picks the
elements with one indexed load (a masked gather, `vluxei`) and stores them as they are stored
(any dtype: it copies bits). Repeated and out-of-order indices need nothing special.
"""
from __future__ import annotations

from llvmlite import ir

from ops.kernel import ISA_ITEMSIZE, register_kernel
from ops.kernels.vector_ir import I32, I64, INT_MAX, KernelIR, const
from ops.kernels.vector_rows import VectorRowKernel
from simulator.isa.vector import Region, VectorKernel

#: ISA dtypes a gather copies (bits, whatever they mean).
DTYPES = ("fp32", "bf16", "fp16", "int32", "int8")
#: Graph dtypes of indices held as int32 on the chip.
INDEX_DTYPES = ("i64", "i32")


def gather_kernel(dtype: str, cols: int, picks: int, vlen_bytes: int) -> VectorKernel:
    """``out[r, j] = in[r, index[r, j]]`` for rows of ``cols`` elements of ``dtype`` and
    ``picks`` int32 indices; regions: the rows, the indices, the result rows."""
    item = ISA_ITEMSIZE[dtype]
    regions = (Region("in", cols * item), Region("in", picks * 4), Region("out", picks * item))
    kir = KernelIR(f"gather_{dtype}_{cols}_{picks}", regions, vlen_bytes)
    n, b = kir.lanes, kir.builder
    vi = kir.vec(I32)
    row_in = b.mul(kir.row, const(I64, cols))
    row_ix = b.mul(kir.row, const(I64, picks))
    steps = -(-picks // n)
    lb, j, live = kir.lanes_loop(b, picks)
    at = lb.add(row_ix, lb.sext(j, I64))
    idx = kir.load_vec(lb, 1, "int32", at, mask=live, fill=0)
    outside = lb.or_(lb.icmp_signed("<", idx, ir.Constant(vi, [0] * n)),
                     lb.icmp_signed(">=", idx, ir.Constant(vi, [cols] * n)))
    ob = kir.fail_where(lb, lb.and_(live, outside), at, steps, "pick")
    values = kir.gather_raw(ob, 0, dtype, row_in, idx, live)
    kir.store_raw(ob, 2, dtype, at, values, live)
    end = kir.end_lanes_loop(ob, j, picks)
    return kir.finish(end, fault=f"index outside [0, {cols})")


class GatherKernel(VectorRowKernel):
    """torch.gather along the last dim, where the indices' leading dims are the input's."""
    ops = ("gather",)

    def accepts(self, op, operands, result, attrs, chip=None) -> bool:
        x, index = operands
        if x is None or x.rank < 1 or attrs["dim"] != x.rank - 1 or index.numel == 0 or x.shape[-1] >= INT_MAX:
            return False
        return (tuple(index.shape[:-1]) == tuple(x.shape[:-1]) and index.dtype in INDEX_DTYPES
                and x.dtype in ("f32", "bf16", "f16", "i64", "i32", "i8"))

    def tile_operands(self, call) -> tuple[int, ...]:
        return (1,)

    def out_cols(self, call) -> int:
        return call.inputs[1].shape[-1]

    def vector_kernel(self, call, chip) -> VectorKernel:
        dt = call.inputs[0].dtype
        if dt not in DTYPES or call.inputs[1].dtype != "int32":
            raise ValueError(f"ember.gather: the vector core gathers {', '.join(DTYPES)} by int32 indices, "
                             f"not {dt} by {call.inputs[1].dtype}")
        _, cols = self.matrix(call)
        return gather_kernel(dt, cols, self.out_cols(call), chip.vector_core.vlen_bytes)


register_kernel(GatherKernel())
