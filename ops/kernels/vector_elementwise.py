"""Elementwise ops the SIMD engine lacks, on the vector core: one LLVM kernel per op (and the
chain of steps the fusion pass put after it), for the `ember.unary` and `ember.binary` kinds in
`FLOAT_UNARY`, `INT_UNARY` and `INT_BINARY` (`elementwise.ElementwiseKernel` hands these to
`VECTOR`).

The flat result is viewed as rows of up to `MAX_COLS` elements (`vector_rows.VectorRowKernel`
tiles them); each row is walked in vectors of ``lanes``, the last one masked. An operand is the
result's shape (loaded with the tile, row by row) or a single value (loaded once per PE).
Floats compute in fp32 (bf16 and fp16 widened exactly) with correctly rounded IEEE operations
(bit-equal to PyTorch, whose CPU sqrt alone can be an ulp off), and round to the result's dtype
(to nearest even); integers compute in
int32 as the chip holds them. Integer division rounds as torch does (`div_floor`, `remainder`
toward negative infinity, with the divisor's sign; `div_trunc` toward zero), and a zero divisor
stops the run at its position, where torch raises.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable

from llvmlite import ir

from ops.kernel import ISA_ITEMSIZE
from ops.kernels.vector_ir import F32, I32, I64, KernelIR, broadcast, const, is_int, lane_type
from ops.kernels.vector_rows import PARAM_STEP, VectorRowKernel, param_offsets
from simulator.isa.vector import Region, VectorKernel

#: Longest row of the flat view (elements).
MAX_COLS = 4096
#: Graph dtypes, float and integer (held as int32 on the chip), the kernels take.
FLOAT_DTYPES = ("f32", "bf16", "f16")
INT_DTYPES = ("i64", "i32")


def _fn(kir: KernelIR, b: ir.IRBuilder, name: str, v):
    """An LLVM float intrinsic of one vector operand (llvm.sqrt, llvm.floor, ...)."""
    return b.call(kir.intrinsic(f"llvm.{name}.v{kir.lanes}f32", v.type, [v.type]), [v])


def _splat(kir, t, value):
    return ir.Constant(kir.vec(t), [value] * kir.lanes)


def _sign(kir, b, v, zero, one):
    """1 where v > 0, -1 where v < 0, else 0 (a float NaN too, as torch.sign gives)."""
    if v.type.element == F32:
        pos, neg = b.fcmp_ordered(">", v, _splat(kir, F32, 0.0)), b.fcmp_ordered("<", v, _splat(kir, F32, 0.0))
        return b.fsub(b.select(pos, one, zero), b.select(neg, one, zero))
    pos, neg = b.icmp_signed(">", v, _splat(kir, I32, 0)), b.icmp_signed("<", v, _splat(kir, I32, 0))
    return b.sub(b.select(pos, one, zero), b.select(neg, one, zero))


#: unary kind -> (kir, builder, fp32 vector, alpha) -> fp32 vector
FLOAT_UNARY: dict[str, Callable] = {
    "sqrt": lambda k, b, v, a: _fn(k, b, "sqrt", v),
    "floor": lambda k, b, v, a: _fn(k, b, "floor", v),
    "ceil": lambda k, b, v, a: _fn(k, b, "ceil", v),
    "round": lambda k, b, v, a: _fn(k, b, "roundeven", v),         # halves to even, as torch.round
    "trunc": lambda k, b, v, a: _fn(k, b, "trunc", v),
    "sign": lambda k, b, v, a: _sign(k, b, v, _splat(k, F32, 0.0), _splat(k, F32, 1.0)),
    "pow": lambda k, b, v, a: POW[a](k, b, v),
}
#: pow exponents computed with correctly rounded operations as PyTorch computes them
POW: dict[float, Callable] = {
    0.5: lambda k, b, v: _fn(k, b, "sqrt", v),
    -1.0: lambda k, b, v: b.fdiv(_splat(k, F32, 1.0), v),
    -2.0: lambda k, b, v: b.fdiv(_splat(k, F32, 1.0), b.fmul(v, v)),
}
#: unary kind -> (kir, builder, int32 vector, alpha) -> int32 vector (wrapping as int32 does)
INT_UNARY: dict[str, Callable] = {
    "neg": lambda k, b, v, a: b.sub(_splat(k, I32, 0), v),
    "abs": lambda k, b, v, a: b.select(b.icmp_signed("<", v, _splat(k, I32, 0)), b.sub(_splat(k, I32, 0), v), v),
    "sign": lambda k, b, v, a: _sign(k, b, v, _splat(k, I32, 0), _splat(k, I32, 1)),
}


def _divide(kir, b, x, y, kind):
    """Integer division of int32 vectors with a divisor that is never 0 (the caller checks):
    -1 is handled apart, since INT_MIN / -1 overflows (it wraps, as int32 does)."""
    minus1 = b.icmp_signed("==", y, _splat(kir, I32, -1))
    safe = b.select(minus1, _splat(kir, I32, 1), y)
    q, r = b.sdiv(x, safe), b.srem(x, safe)
    q = b.select(minus1, b.sub(_splat(kir, I32, 0), x), q)
    r = b.select(minus1, _splat(kir, I32, 0), r)
    if kind == "div_trunc":
        return q
    # floor rounding: a nonzero remainder whose sign differs from the divisor's moves one down
    off = b.and_(b.icmp_signed("!=", r, _splat(kir, I32, 0)),
                 b.icmp_signed("<", b.xor(r, y), _splat(kir, I32, 0)))
    if kind == "div_floor":
        return b.sub(q, b.zext(off, kir.vec(I32)))
    return b.add(r, b.select(off, y, _splat(kir, I32, 0)))            # remainder


#: binary kind -> (kir, builder, x, y) -> int32 vector; `DIVISIONS` also check y != 0
INT_BINARY: dict[str, Callable] = {
    "remainder": lambda k, b, x, y: _divide(k, b, x, y, "remainder"),
    "div_floor": lambda k, b, x, y: _divide(k, b, x, y, "div_floor"),
    "div_trunc": lambda k, b, x, y: _divide(k, b, x, y, "div_trunc"),
    "bitwise_and": lambda k, b, x, y: b.and_(x, y),
    "bitwise_or": lambda k, b, x, y: b.or_(x, y),
    "bitwise_xor": lambda k, b, x, y: b.xor(x, y),
}
DIVISIONS = frozenset({"remainder", "div_floor", "div_trunc"})
#: Steps a chain may take after a first op of the kinds above, besides those kinds (the SIMD
#: engine has these, but within a chain they save the round trip through memory)
FLOAT_CHAIN_UNARY: dict[str, Callable] = {
    "neg": lambda k, b, v, a: b.fneg(v),
    "abs": lambda k, b, v, a: _fn(k, b, "fabs", v),
}
FLOAT_CHAIN_BINARY: dict[str, Callable] = {
    "add": lambda k, b, x, y: b.fadd(x, y), "sub": lambda k, b, x, y: b.fsub(x, y),
    "mul": lambda k, b, x, y: b.fmul(x, y), "div": lambda k, b, x, y: b.fdiv(x, y),
}
INT_CHAIN_BINARY: dict[str, Callable] = {
    "add": lambda k, b, x, y: b.add(x, y), "sub": lambda k, b, x, y: b.sub(x, y),
    "mul": lambda k, b, x, y: b.mul(x, y),
    "max": lambda k, b, x, y: b.select(b.icmp_signed(">", x, y), x, y),
    "min": lambda k, b, x, y: b.select(b.icmp_signed("<", x, y), x, y),
}
#: ISA dtypes a value between two steps may be held in (the kernel rounds to it)
HELD = ("fp32", "bf16", "fp16", "int32", "int8")
#: Regions a vector-core call has at most (simulator/isa/vector.py)
MAX_REGIONS = 3


def _table(op: str, integer: bool, chained: bool) -> dict[str, Callable]:
    if op == "unary":
        return {**INT_UNARY} if integer else {**FLOAT_UNARY, **(FLOAT_CHAIN_UNARY if chained else {})}
    if integer:
        return {**INT_BINARY, **(INT_CHAIN_BINARY if chained else {})}
    return {**FLOAT_CHAIN_BINARY} if chained else {}


def vector_kind(op: str, kind: str, alpha: float, integer: bool, chained: bool = False) -> bool:
    """Whether the vector core computes this `ember.unary` / `ember.binary` kind: as an op of
    its own (the kinds the SIMD engine lacks), or as a later step of a chain."""
    if op not in ("unary", "binary") or kind not in _table(op, integer, chained):
        return False
    return kind != "pow" or alpha in POW


def chain_steps(op: str, attrs) -> list[tuple]:
    """The op as epilogue-style steps: its own, then its `epilogue` (compiler/passes/fusion.py):
    ("unary", kind, alpha, beta[, held]) or ("binary", kind, operand, side[, held])."""
    own = ("unary", attrs["kind"], float(attrs.get("alpha") or 0.0), float(attrs.get("beta") or 0.0)) \
        if op == "unary" else ("binary", attrs["kind"], 1, 0)
    return [own, *(tuple(s) for s in attrs.get("epilogue") or ())]


def elementwise_kernel(steps: list[tuple], dtypes: dict[int, str], scalars: frozenset[int], out_dtype: str,
                       cols: int, vlen_bytes: int) -> VectorKernel:
    """The chain ``steps`` (see `chain_steps`) on rows of ``cols`` elements of operand 0; a
    binary step's operand (the position it names, of ISA dtype ``dtypes[position]``) is rows
    like it, or one value when its position is in ``scalars``. Regions: operand 0's rows, the
    other row operands' (by position), the result's rows (``out_dtype``), the scalars (one
    region, packed by `vector_rows.param_offsets`)."""
    integer = is_int(dtypes[0])
    for k, st in enumerate(steps):
        if not vector_kind(st[0], st[1], st[2] if st[0] == "unary" else 0.0, integer, chained=k > 0):
            raise ValueError(f"the vector core does not compute {st[1]} of {dtypes[0]} in a chain")
    rows_at = [p for p in sorted(dtypes) if p and p not in scalars]
    scalar_at = [p for p in sorted(dtypes) if p in scalars]
    regions = [Region("in", cols * ISA_ITEMSIZE[dtypes[0]])]
    regions += [Region("in", cols * ISA_ITEMSIZE[dtypes[p]]) for p in rows_at]
    regions.append(Region("out", cols * ISA_ITEMSIZE[out_dtype]))
    offsets = param_offsets([ISA_ITEMSIZE[dtypes[p]] for p in scalar_at])
    if scalar_at:
        regions.append(Region("in", offsets[-1] + PARAM_STEP, per_row=False))
    region_of = {0: 0, **{p: 1 + i for i, p in enumerate(rows_at)}, **{p: 2 + len(rows_at) for p in scalar_at}}
    element_of = {p: at // ISA_ITEMSIZE[dtypes[p]] for p, at in zip(scalar_at, offsets)}
    out_region = 1 + len(rows_at)
    name = "_".join(st[1] for st in steps)
    kir = KernelIR(f"{name}_{'_'.join(dtypes[p] for p in sorted(dtypes))}_{out_dtype}_{cols}", tuple(regions),
                   vlen_bytes)
    n, b = kir.lanes, kir.builder
    row0 = b.mul(kir.row, const(I64, cols))
    values = {p: broadcast(b, kir.load(b, region_of[p], dtypes[p], const(I64, element_of[p])),
                           kir.vec(lane_type(dtypes[p]))) for p in scalar_at}
    trips = -(-cols // n)

    lb, j, live = kir.lanes_loop(b, cols)
    at = lb.add(row0, lb.sext(j, I64))
    fill = 1 if integer else 1.0
    v = kir.load_vec(lb, 0, dtypes[0], at, mask=live, fill=fill)
    for k, st in enumerate(steps):
        if len(st) > 4 and st[4] in ("bf16", "fp16", "int8"):     # how the value was held
            v = kir.widen(lb, kir.narrow(lb, v, st[4]), st[4])
        table = _table(st[0], integer, chained=k > 0)
        if st[0] == "unary":
            v = table[st[1]](kir, lb, v, st[2])
            continue
        p = int(st[2])
        if p not in values:
            values[p] = kir.load_vec(lb, region_of[p], dtypes[p], at, mask=live, fill=fill)
        x, y = (v, values[p]) if int(st[3]) == 0 else (values[p], v)
        if st[1] in DIVISIONS:            # a zero divisor in a live lane stops the run there
            lb = kir.fail_where(lb, lb.and_(live, lb.icmp_signed("==", y, _splat(kir, I32, 0))), at, trips,
                                f"divide{k}")
        v = table[st[1]](kir, lb, x, y)
    kir.store_masked(lb, out_region, out_dtype, at, v, live)
    end = kir.end_lanes_loop(lb, j, cols)
    divides = any(st[0] == "binary" and st[1] in DIVISIONS for st in steps)
    return kir.finish(end, fault="a zero divisor" if divides else "")


@functools.cache
def _row_length(n: int) -> int:
    """The longest row of at most MAX_COLS elements that n elements are whole rows of."""
    return next(d for d in range(min(n, MAX_COLS), 0, -1) if n % d == 0)


def _domain(specs) -> str | None:
    """"int" or "float" when every spec is an integer held as int32 or every one a float."""
    dtypes = {s.dtype for s in specs}
    if dtypes <= set(INT_DTYPES):
        return "int"
    return "float" if dtypes <= set(FLOAT_DTYPES) else None


class VectorElementwise(VectorRowKernel):
    """The kinds above, on operands of the result's shape or of one element; with the chain of
    steps the fusion pass gave it (`accepts_epilogue`), in one kernel."""
    ops = ()                    # reached through elementwise.ElementwiseKernel

    def accepts(self, op, operands, result, attrs, chip=None) -> bool:
        if op not in ("unary", "binary") or result.numel == 0:
            return False
        domain = _domain([*operands, result])
        if domain is None or not vector_kind(op, attrs["kind"], attrs.get("alpha", 0.0), domain == "int"):
            return False
        first, *rest = operands
        return tuple(first.shape) == tuple(result.shape) and all(
            tuple(o.shape) == tuple(result.shape) or o.numel == 1 for o in rest)

    def accepts_epilogue(self, op, operands, result, step, other=None, attrs=None) -> bool:
        """Whether the chain can take `step` after this op and the steps it has: the same
        domain (integer or float), a kind of the chain tables, an operand of the result's shape
        or one element, and no more regions than a call has."""
        own = operands[:1 if op == "unary" else 2]
        if attrs is None or not self.accepts(op, own, result, attrs):
            return False
        domain = _domain([*own, result])
        alpha = step[2] if step[0] == "unary" else 0.0
        if not vector_kind(step[0], step[1], alpha, domain == "int", chained=True):
            return False
        if len(step) < 5 or step[4] not in HELD:
            return False
        if step[0] == "binary":
            if other is None or _domain([other]) != domain:
                return False
            if tuple(other.shape) != tuple(result.shape) and other.numel != 1:
                return False
        added = [o for o in operands[1:] if o is not None] + ([other] if step[0] == "binary" else [])
        rows = sum(tuple(o.shape) == tuple(result.shape) and o.numel != 1 for o in added)
        return 2 + rows + (rows < len(added)) <= MAX_REGIONS

    def handles(self, call) -> bool:
        """Whether `accepts` took this call (the kinds the SIMD engine lacks)."""
        if call.op not in ("unary", "binary"):
            return False
        integer = call.output.dtype in ("int32", "int8")
        return vector_kind(call.op, call.attrs["kind"], call.attrs.get("alpha", 0.0), integer)

    def matrix(self, call) -> tuple[int, int]:
        n = max(1, math.prod(call.output.shape))
        return n // _row_length(n), _row_length(n)

    def _operands(self, call) -> dict[int, int]:
        """Position -> elements, of every operand but the first."""
        return {p: math.prod(x.shape) for p, x in enumerate(call.inputs) if p and x is not None}

    def tile_operands(self, call) -> tuple[int, ...]:
        n = math.prod(call.output.shape)
        return tuple(p for p, m in self._operands(call).items() if m == n)

    def param_operands(self, call) -> tuple[int, ...]:
        n = math.prod(call.output.shape)
        return tuple(p for p, m in self._operands(call).items() if m != n)

    def vector_kernel(self, call, chip) -> VectorKernel:
        _, cols = self.matrix(call)
        dtypes = {p: x.dtype for p, x in enumerate(call.inputs) if x is not None}
        return elementwise_kernel(chain_steps(call.op, call.attrs), dtypes, frozenset(self.param_operands(call)),
                                  call.output.dtype, cols, chip.vector_core.vlen_bytes)

    def flops(self, call):
        return max(1, math.prod(call.output.shape)) * len(chain_steps(call.op, call.attrs))


VECTOR = VectorElementwise()
