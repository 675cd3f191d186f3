"""Selection on the vector core: `ember.arg_reduce` (argmax, argmin) and `ember.topk` over the
last dim, one row per vector-core loop iteration (`vector_rows.VectorRowKernel` tiles them).

Each of the k picks of a row is one pass over the row in vectors of ``lanes`` elements: lane i
keeps the best (value, index) it has seen among the elements that come after the previous pick
in the output order, then a reduction across lanes gives the pick. The order is torch's: larger
(smaller) first, equal values by index, and NaN before every number (argmax, argmin and topk
largest) or after every number (topk smallest). So a pick is exact, ties included, and needs no
scratch memory. The row's last partial vector is a masked load.
"""
from __future__ import annotations

import math

from llvmlite import ir

from ops.kernel import ISA_ITEMSIZE, LocalArena, register_kernel
from ops.kernels.rowwise import ALIGN, Job, RowPlan
from ops.kernels.vector_ir import I32, I64, INT_MAX, INT_MIN, KernelIR, broadcast, const, is_int, lane_type
from ops.kernels.vector_rows import Vec, VectorRowKernel
from simulator.isa.vector import Region, VectorKernel

DTYPES = ("fp32", "bf16", "fp16", "int32", "int8")


class _Order:
    """The output order of one selection: `better(a, b)` (a comes first), `same`, the value that
    comes last of all (`worst`) and the cross-lane reduction to the first value."""

    def __init__(self, k: KernelIR, dtype: str, largest: bool, nan_first: bool):
        self.k, self.int, self.largest, self.nan_first = k, is_int(dtype), largest, nan_first
        self.t = lane_type(dtype)
        if self.int:
            self.worst = INT_MIN if largest else INT_MAX
        else:
            self.worst = (-math.inf if largest else math.inf) if nan_first else math.nan

    def better(self, b: ir.IRBuilder, x, y):
        if self.int:
            return b.icmp_signed(">" if self.largest else "<", x, y)
        ordered = b.fcmp_ordered(">" if self.largest else "<", x, y)
        xnan, ynan = b.fcmp_unordered("uno", x, x), b.fcmp_unordered("uno", y, y)
        first, second = (xnan, ynan) if self.nan_first else (ynan, xnan)
        return b.or_(ordered, b.and_(first, b.not_(second)))

    def same(self, b: ir.IRBuilder, x, y):
        if self.int:
            return b.icmp_signed("==", x, y)
        both_nan = b.and_(b.fcmp_unordered("uno", x, x), b.fcmp_unordered("uno", y, y))
        return b.or_(b.fcmp_ordered("==", x, y), both_nan)

    def before(self, b: ir.IRBuilder, x, i, y, j):
        """(x, i) comes before (y, j): a better value, or the same value at a smaller index."""
        return b.or_(self.better(b, x, y), b.and_(self.same(b, x, y), b.icmp_signed("<", i, j)))

    def reduce(self, b: ir.IRBuilder, v):
        n = self.k.lanes
        if self.int:
            name, t = f"llvm.vector.reduce.{'smax' if self.largest else 'smin'}.v{n}i32", I32
        else:
            kind = ("fmaximum" if self.largest else "fminimum") if self.nan_first else "fmin"
            name, t = f"llvm.vector.reduce.{kind}.v{n}f32", self.t
        return b.call(self.k.intrinsic(name, t, [v.type]), [v])


def select_kernel(dtype: str, cols: int, k: int, largest: bool, vlen_bytes: int, nan_first: bool = True,
                  merge: str = "") -> VectorKernel:
    """The indices (int32) of the first ``k`` of each row of ``cols`` elements of ``dtype`` in
    the order above; region 0 the rows, region 1 the ``k`` indices per row.

    With ``merge`` (k = 1: a row too long for local memory, in chunks of ``cols``), region 1 is
    the running pick of each row, its value (in the lane type) then its index, and ``param`` the
    chunk's first column. The "first" chunk of a row writes it; each "next" chunk's pick replaces
    it if it comes first."""
    if merge not in ("", "first", "next") or (merge and k != 1):
        raise ValueError(f"merge is '', 'first' or 'next', with k = 1 (got {merge!r}, k = {k})")
    out = Region({"": "out", "first": "out", "next": "inout"}[merge], 8 if merge else 4 * k)
    regions = (Region("in", cols * ISA_ITEMSIZE[dtype]), out)
    kir = KernelIR(f"select_{dtype}_{cols}_k{k}_{'max' if largest else 'min'}{'_' + merge if merge else ''}",
                   regions, vlen_bytes)
    n, b = kir.lanes, kir.builder
    order = _Order(kir, dtype, largest, nan_first)
    t, vt, vi = order.t, kir.vec(order.t), kir.vec(I32)
    full, tail = divmod(cols, n)
    row_base = b.mul(kir.row, const(I64, cols))

    pick = kir.block("pick", 0, k)                      # one pass per pick
    b.branch(pick)
    pb = ir.IRBuilder(pick)
    p = pb.phi(I64, "p")
    prev_v = pb.phi(t, "prev_v")
    prev_i = pb.phi(I32, "prev_i")
    p.add_incoming(const(I64, 0), b.block)
    prev_v.add_incoming(ir.Constant(t, order.worst), b.block)
    prev_i.add_incoming(const(I32, -1), b.block)        # pass 0: every element is a candidate
    splat_pv = broadcast(pb, prev_v, vt)
    splat_pi = broadcast(pb, prev_i, vi)
    first_pass = pb.icmp_signed("==", p, const(I64, 0))
    init_v = ir.Constant(vt, [order.worst] * n)
    init_i = ir.Constant(vi, [INT_MAX] * n)

    def step(bb: ir.IRBuilder, best_v, best_i, j0, mask=None):
        """Fold the vector at element j0 (i32) of the row into the lanes' best."""
        v = kir.load_vec(bb, 0, dtype, bb.add(row_base, bb.sext(j0, I64)), mask=mask, fill=order.worst)
        ids = bb.add(broadcast(bb, j0, vi), kir.iota())
        after = bb.or_(broadcast(bb, first_pass, ir.VectorType(ir.IntType(1), n)),
                       order.before(bb, splat_pv, splat_pi, v, ids))
        take = bb.and_(after, order.before(bb, v, ids, best_v, best_i))
        if mask is not None:
            take = bb.and_(take, mask)
        return bb.select(take, v, best_v), bb.select(take, ids, best_i)

    best_v, best_i, last = init_v, init_i, pb
    if full:
        loop = kir.block("vec", 0, k * full)
        pb.branch(loop)
        lb = ir.IRBuilder(loop)
        j = lb.phi(I32, "j")
        bv = lb.phi(vt, "best_v")
        bi = lb.phi(vi, "best_i")
        j.add_incoming(const(I32, 0), pick)
        bv.add_incoming(init_v, pick)
        bi.add_incoming(init_i, pick)
        nv, ni = step(lb, bv, bi, j)
        j2 = lb.add(j, const(I32, n))
        j.add_incoming(j2, loop)
        bv.add_incoming(nv, loop)
        bi.add_incoming(ni, loop)
        after = kir.block("vec_end", 0, k)
        lb.cbranch(lb.icmp_signed("<", j2, const(I32, full * n)), loop, after)
        last = ir.IRBuilder(after)
        best_v, best_i = nv, ni
    if tail:
        mask = last.icmp_signed("<", kir.iota(), ir.Constant(vi, [tail] * n))
        best_v, best_i = step(last, best_v, best_i, const(I32, full * n), mask=mask)
    m = order.reduce(last, best_v)
    hit = order.same(last, best_v, broadcast(last, m, vt))
    idx = last.call(kir.intrinsic(f"llvm.vector.reduce.umin.v{n}i32", I32, [vi]),
                    [last.select(hit, best_i, init_i)])
    if merge:
        last = _merge(kir, order, last, m, last.add(idx, last.trunc(kir.param, I32)), merge == "first")
    else:
        kir.store(last, 1, "int32", last.add(last.mul(kir.row, const(I64, k)), p), idx)
    p2 = last.add(p, const(I64, 1))
    p.add_incoming(p2, last.block)
    prev_v.add_incoming(m, last.block)
    prev_i.add_incoming(idx, last.block)
    row_end = kir.block("row_end", 0, 1)
    last.cbranch(last.icmp_signed("<", p2, const(I64, k)), pick, row_end)
    return kir.finish(ir.IRBuilder(row_end))


def _merge(kir: KernelIR, order: _Order, b: ir.IRBuilder, value, index, first: bool) -> ir.IRBuilder:
    """Keep (value, index) as row r's running pick (region 1: value bits, index) when this is the
    row's first chunk or it comes before the one kept; returns the builder of the block after."""
    slot = b.mul(kir.row, const(I64, 2))
    vptr = kir.elem_ptr(b, 1, "int32", slot, order.t)
    iptr = kir.elem_ptr(b, 1, "int32", b.add(slot, const(I64, 1)), I32)
    if first:
        b.store(value, vptr)
        b.store(index, iptr)
        return b
    write = kir.block("merge_write", 0, 1)
    after = kir.block("merge_end", 0, 1)
    b.cbranch(order.before(b, value, index, b.load(vptr), b.load(iptr)), write, after)
    wb = ir.IRBuilder(write)
    wb.store(value, vptr)
    wb.store(index, iptr)
    wb.branch(after)
    return ir.IRBuilder(after)


class SelectKernel(VectorRowKernel):
    """argmax / argmin (k = 1) and topk over the last dim: int32 indices per row.

    An argmax row too long for local memory (a vocabulary of logits) streams through in chunks:
    each chunk's pick merges into the row's running (value, index) in local memory, and the last
    chunk stores the index. Even and odd rows keep theirs apart, so a row's store never races the
    next row's first chunk. topk rows that do not fit stay on the host."""
    ops = ("arg_reduce", "topk")
    chunked = True

    def plans(self, call, chip):
        for plan in super().plans(call, chip):
            if isinstance(plan, RowPlan) or call.op == "arg_reduce":
                yield plan

    def chunk_layout(self, call, k: int) -> dict:
        arena = LocalArena(ALIGN)
        item = ISA_ITEMSIZE[call.inputs[0].dtype]
        lay: dict = {"x": [arena.take(k * item) for _ in range(2)], "w": None, "t": [], "vec": []}
        for parity in range(2):
            lay[f"pick{parity}"] = arena.take(8)
            lay[f"index{parity}"] = [lay[f"pick{parity}"] + 4] * 2    # what the row's store reads (any slot)
        lay["end"] = arena.end
        return lay

    def row_jobs(self, call, lay: dict, row: int, chunks: list[tuple[int, int]]) -> list[Job]:
        out, parity = call.output, row % 2
        pick = lay[f"pick{parity}"]
        jobs = []
        for i, (c0, n) in enumerate(chunks):
            vec = self._chunk_kernel(call, n, "first" if i == 0 else "next")
            last = i == len(chunks) - 1
            stores = ((f"index{parity}", out.space, out.addr + row * ISA_ITEMSIZE[out.dtype], 4),) if last else ()
            jobs.append(Job((self.chunk_load(call, row, c0, n),),
                            lambda slot, vec=vec, c0=c0: [Vec(vec, (lay["x"][slot], pick), 1, c0)], stores))
        return jobs

    def _chunk_kernel(self, call, n: int, merge: str) -> VectorKernel:
        largest = call.attrs["kind"] == "argmax"
        key = ("chunk", call.inputs[0].dtype, n, largest, merge, self._chip.vector_core.vlen_bytes)
        cache = self.__dict__.setdefault("_built", {})
        if key not in cache:
            cache[key] = select_kernel(call.inputs[0].dtype, n, 1, largest, key[-1], True, merge)
        return cache[key]

    def accepts(self, op, operands, result, attrs, chip=None) -> bool:
        x = operands[0]
        if x is None or x.rank < 1 or x.numel == 0 or attrs["dim"] != x.rank - 1 or x.shape[-1] >= INT_MAX:
            return False
        if op == "topk" and not 1 <= attrs["k"] <= x.shape[-1]:
            return False
        return x.dtype in ("f32", "bf16", "f16", "i64", "i32", "i16", "i8", "ui8")

    def out_cols(self, call) -> int:
        return call.attrs["k"] if call.op == "topk" else 1

    def vector_kernel(self, call, chip) -> VectorKernel:
        dt = call.inputs[0].dtype
        if dt not in DTYPES:
            raise ValueError(f"ember.{call.op}: the vector core does not read {dt}")
        _, cols = self.matrix(call)
        largest = call.attrs["largest"] if call.op == "topk" else call.attrs["kind"] == "argmax"
        nan_first = largest or call.op == "arg_reduce"
        return select_kernel(dt, cols, self.out_cols(call), largest, chip.vector_core.vlen_bytes, nan_first)

    def flops(self, call):
        return call.inputs[0].nbytes // ISA_ITEMSIZE[call.inputs[0].dtype] * self.out_cols(call)


register_kernel(SelectKernel())
