"""Reductions over leading or middle dims on the vector core: `ember.reduce` (sum, mean, max,
min) over contiguous dims with others after them (a mixture-of-experts layer's sum over its k
experts, [tokens, k, hidden] -> [tokens, hidden]; a weight norm over all dims but the last).
`rowwise_reduce.ReduceKernel` hands these to `VECTOR_REDUCE`; it reduces trailing dims itself.

The input is viewed as [P, R, Q]: R the reduced elements, Q the elements after them. One row of
the `vector_rows.VectorRowKernel` tiling is one of the P slices (R x Q elements), and gives Q
results: for each vector of ``lanes`` of the Q columns (the last one masked), the kernel folds
the R rows in order, in fp32 (the template takes float tensors; the integer path is the
kernel's, for integer reductions once the template takes them). max and min propagate NaN as torch's
amax / amin do; mean divides the sum by R.
"""
from __future__ import annotations

import math

from llvmlite import ir

from ops.kernel import ISA_ITEMSIZE, local_bytes
from ops.kernels.vector_ir import I32, I64, KernelIR, broadcast, const, is_int, lane_type
from ops.kernels.vector_rows import VectorRowKernel
from simulator.isa.vector import Region, VectorKernel

KINDS = ("sum", "mean", "max", "min")
DTYPES = ("f32", "bf16", "f16")


def _fold(kir: KernelIR, b: ir.IRBuilder, kind: str, integer: bool, acc, v):
    if kind in ("sum", "mean"):
        return b.add(acc, v) if integer else b.fadd(acc, v)
    if integer:
        return b.select(b.icmp_signed(">" if kind == "max" else "<", v, acc), v, acc)
    name = f"llvm.{'maximum' if kind == 'max' else 'minimum'}.v{kir.lanes}f32"      # NaN wins
    return b.call(kir.intrinsic(name, acc.type, [acc.type, acc.type]), [acc, v])


def _start(kind: str, integer: bool):
    if kind in ("sum", "mean"):
        return 0 if integer else 0.0
    if integer:
        return -2 ** 31 if kind == "max" else 2 ** 31 - 1
    return -math.inf if kind == "max" else math.inf


def reduce_kernel(kind: str, dtype: str, out_dtype: str, reduced: int, inner: int, vlen_bytes: int) -> VectorKernel:
    """``kind`` over the middle of rows of ``reduced`` x ``inner`` elements of ``dtype``: each row
    gives ``inner`` results in ``out_dtype``. Regions: the rows, the results."""
    integer = is_int(dtype)
    if kind not in KINDS or (integer and kind == "mean"):
        raise ValueError(f"the vector core does not reduce {dtype} by {kind}")
    regions = (Region("in", reduced * inner * ISA_ITEMSIZE[dtype]), Region("out", inner * ISA_ITEMSIZE[out_dtype]))
    kir = KernelIR(f"reduce_{kind}_{dtype}_{reduced}x{inner}", regions, vlen_bytes)
    n, b = kir.lanes, kir.builder
    t, vi = lane_type(dtype), kir.vec(I32)
    vt = kir.vec(t)
    trips = -(-inner // n)
    row_in, row_out = b.mul(kir.row, const(I64, reduced * inner)), b.mul(kir.row, const(I64, inner))

    cols = kir.block("cols", 0, trips)              # one vector of the Q columns
    b.branch(cols)
    cb = ir.IRBuilder(cols)
    j = cb.phi(I32, "j")
    j.add_incoming(const(I32, 0), b.block)
    live = cb.icmp_signed("<", cb.add(broadcast(cb, j, vi), kir.iota()), ir.Constant(vi, [inner] * n))
    start = ir.Constant(vt, [_start(kind, integer)] * n)

    fold = kir.block("fold", 0, trips * reduced)    # one of the R rows into the running result
    cb.branch(fold)
    fb = ir.IRBuilder(fold)
    r = fb.phi(I64, "r")
    acc = fb.phi(vt, "acc")
    r.add_incoming(const(I64, 0), cols)
    acc.add_incoming(start, cols)
    at = fb.add(fb.add(row_in, fb.mul(r, const(I64, inner))), fb.sext(j, I64))
    v = kir.load_vec(fb, 0, dtype, at, mask=live, fill=_start(kind, integer))
    nxt = _fold(kir, fb, kind, integer, acc, v)
    r2 = fb.add(r, const(I64, 1))
    r.add_incoming(r2, fold)
    acc.add_incoming(nxt, fold)
    done = kir.block("cols_end", 0, trips)
    fb.cbranch(fb.icmp_signed("<", r2, const(I64, reduced)), fold, done)

    db = ir.IRBuilder(done)
    result = db.fdiv(nxt, ir.Constant(vt, [float(reduced)] * n)) if kind == "mean" else nxt
    kir.store_masked(db, 1, out_dtype, db.add(row_out, db.sext(j, I64)), result, live)
    j2 = db.add(j, const(I32, n))
    j.add_incoming(j2, done)
    end = kir.block("row_end", 0, 1)
    db.cbranch(db.icmp_signed("<", j2, const(I32, inner)), cols, end)
    return kir.finish(ir.IRBuilder(end))


def middle_dims(rank: int, dims) -> tuple[int, int] | None:
    """(first, last) reduced dim when `dims` are contiguous and some dim comes after them."""
    dims = tuple(sorted(dims))
    if not dims or dims != tuple(range(dims[0], dims[-1] + 1)) or dims[-1] >= rank - 1:
        return None
    return dims[0], dims[-1]


class VectorReduce(VectorRowKernel):
    """sum / mean / max / min over contiguous dims that are not the trailing ones."""
    ops = ()                    # reached through rowwise_reduce.ReduceKernel

    def accepts(self, op, operands, result, attrs, chip=None) -> bool:
        x = operands[0]
        if op != "reduce" or x is None or x.numel == 0 or attrs["kind"] not in KINDS or x.dtype not in DTYPES:
            return False
        found = middle_dims(x.rank, attrs["dims"])
        if found is None or result.dtype != x.dtype:
            return False
        # one row (the reduced dims and those after them) and its results, double-buffered
        row = math.prod(x.shape[found[0]:]) * 4 + math.prod(x.shape[found[1] + 1:]) * 4
        return 2 * row <= local_bytes(chip)

    def handles(self, call) -> bool:
        return middle_dims(len(call.inputs[0].shape), call.attrs["dims"]) is not None

    def _view(self, call) -> tuple[int, int, int]:
        shape = call.inputs[0].shape
        d0, d1 = middle_dims(len(shape), call.attrs["dims"])
        return math.prod(shape[:d0]), math.prod(shape[d0:d1 + 1]), math.prod(shape[d1 + 1:])

    def matrix(self, call) -> tuple[int, int]:
        p, r, q = self._view(call)
        return p, r * q

    def out_cols(self, call) -> int:
        return self._view(call)[2]

    def vector_kernel(self, call, chip) -> VectorKernel:
        _, r, q = self._view(call)
        return reduce_kernel(call.attrs["kind"], call.inputs[0].dtype, call.output.dtype, r, q,
                             chip.vector_core.vlen_bytes)

    def flops(self, call):
        return max(1, math.prod(call.inputs[0].shape))


VECTOR_REDUCE = VectorReduce()
