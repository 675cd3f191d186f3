"""Elementwise kernels (`ember.unary`, `ember.binary`, `ember.ternary` where, and the `quantize`
step the dtype pass inserts before an int8 GEMM) on the SIMD engines.

The flat elements are split evenly over the PEs. Each PE streams its range through local memory
in tiles, double-buffered: the DMA engine loads tile t+1 while the SIMD engine computes tile t,
and stores tile t-1. The DMA queue runs in order (in, in, out, in, out, ...), so a buffer is only
reloaded after the store that read it; a NOP on the SIMD queue keeps an output buffer from
being overwritten before its store has finished.

Each operand is read in its own dtype and the result written in its own (the SIMD engine computes
in fp32 and rounds, or for `quantize` rounds and saturates to int8). A binary op whose operands
differ in dtype first widens the narrower ones to fp32 in a scratch tile.

A binary operand may broadcast over the result's leading dims (a rotary table shared by every
head, a bias row): it repeats every `period` elements of the flat result. Tiles are then sized so
that the period divides them or they divide the period, and each PE's range is whole tiles, so
every tile reads that operand with one DMA: a slice of it, or whole copies (source stride 0).
Other broadcasts are materialized before the op (compiler/passes/broadcast_operands.py).

Integers and booleans: on the chip they are int32 (compiler/passes/dtype.py), and the SIMD
engine computes add, sub, mul, max and min of int32 exactly, in integers. Comparisons (of floats
or integers) and logical and / or / xor give i1, held as int32 0 or 1. `where(c, x, y)` loads
y's tile, then SELECT overwrites it with x where the predicate is nonzero (the predicate
converted to x's dtype first when they differ), so -inf and NaN pass through untouched.

Kinds the SIMD engine lacks (sqrt, floor and round, integer division and remainder, bitwise
ops, integer neg / abs / sign) run on the vector core instead (ops/kernels/vector_elementwise.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ops.kernel import ISA_ITEMSIZE, KernelCall, KernelTemplate, hands_off, register_kernel
from ops.kernels.vector_elementwise import VECTOR
from simulator.isa import Engine

#: `ember.unary` kinds the SIMD engine computes exactly as the reference does.
UNARY_FN = {"relu": "RELU", "exp": "EXP", "silu": "SILU", "tanh": "TANH", "sigmoid": "SIGMOID",
            "reciprocal": "RECIP", "rsqrt": "RSQRT", "gelu_tanh": "GELU", "gelu": "GELU_ERF",
            "sin": "SIN", "cos": "COS"}
X = "x"   # a pass's second operand is the op's input (SIMD_BINARY), not an immediate


def unary_passes(kind: str, alpha: float, beta: float) -> list[tuple[str, float | str]] | None:
    """`ember.unary` kinds computed as a few SIMD passes, or None. Pass i computes
    fn(previous, operand) (the first pass's previous value is the input), with the operand an
    immediate (SIMD_SCALAR) or `X`, the input itself (SIMD_BINARY)."""
    if kind == "neg":
        return [("MUL", -1.0)]
    if kind == "abs":
        return [("MUL", -1.0), ("MAX", X)]
    if kind == "clamp":
        passes = ([("MAX", alpha)] if alpha > -math.inf else []) + ([("MIN", beta)] if beta < math.inf else [])
        return passes or None
    if kind == "pow" and alpha in (2.0, 3.0, 4.0):     # x*x*...; other exponents need log/exp
        return [("MUL", X)] * (int(alpha) - 1)
    if kind == "leaky_relu" and 0.0 <= alpha <= 1.0:      # max(x, a*x)
        return [("MUL", alpha), ("MAX", X)]
    if kind == "hardsigmoid":
        return [("MUL", 1.0 / 6.0), ("ADD", 0.5), ("MAX", 0.0), ("MIN", 1.0)]
    if kind == "logical_not":                           # x == 0, as 1 / 0
        return [("EQ", 0.0)]
    if kind == "hardswish":
        return [("MUL", 1.0 / 6.0), ("ADD", 0.5), ("MAX", 0.0), ("MIN", 1.0), ("MUL", X)]
    return None

BINARY_FN = {"add": "ADD", "sub": "SUB", "mul": "MUL", "div": "DIV", "max": "MAX", "min": "MIN",
             "eq": "EQ", "ne": "NE", "lt": "LT", "le": "LE", "gt": "GT", "ge": "GE",
             "and": "AND", "or": "OR", "xor": "XOR"}
#: Binary kinds the SIMD engine computes exactly on int32 (with an int32 result).
INTEGER_BINARY = frozenset({"add", "sub", "mul", "max", "min"})
#: Comparisons (any operands) and logical kinds: an i1 result.
PREDICATE_BINARY = frozenset({"eq", "ne", "lt", "le", "gt", "ge", "and", "or", "xor"})
#: Bitwise kinds on booleans are the logical ones.
BITWISE_ON_BOOLS = {"bitwise_and": "and", "bitwise_or": "or", "bitwise_xor": "xor"}
#: Graph integer types held as int32 on the chip whose arithmetic int32 computes as torch does
#: (for values that fit; the runtime checks that when it uploads them).
INT32_ARITH = frozenset({"i64", "i32"})
TILE_CHOICES = (256, 1024, 4096, 16384)
#: Binary kinds another kernel may apply to its own output tile (an epilogue): one SIMD pass, no
#: lookup table, and the same result in fp32 whichever kernel computes it.
EPILOGUE_BINARY = frozenset({"add", "sub", "mul", "max", "min"})


def tile_epilogue(op: str, kind: str) -> tuple[str, str | float] | None:
    """How the SIMD engine applies `ember.<op>` of `kind` to an fp32 tile in local memory, for a
    kernel that fuses it into its epilogue: ("unary", SIMD function), ("scale", immediate) or
    ("binary", SIMD function); None when it cannot."""
    if op == "unary" and kind in UNARY_FN:
        return "unary", UNARY_FN[kind]
    if op == "unary" and kind == "neg":
        return "scale", -1.0
    if op == "binary" and kind in EPILOGUE_BINARY:
        return "binary", BINARY_FN[kind]
    return None


@dataclass(frozen=True)
class ElementwisePlan:
    pes: int          # PEs that share the elements
    tile: int         # elements per tile


def broadcast_period(shape, result_shape) -> int | None:
    """Elements of an operand that repeats over the result's leading dims (shape (..., 1, d_j,
    ..., d_n) against (..., d_j, ..., d_n): a rotary table shared by every head, a bias row),
    read again every that many elements of the flat result; None when it broadcasts otherwise
    (a size-1 dim among broadcast ones) or not at all."""
    shape, result_shape = tuple(shape), tuple(result_shape)
    if len(shape) > len(result_shape):
        return None
    padded = (1,) * (len(result_shape) - len(shape)) + shape
    j = len(padded)
    while j > 0 and padded[j - 1] == result_shape[j - 1]:
        j -= 1
    if any(d != 1 for d in padded[:j]):
        return None
    period = math.prod(padded)
    return None if period == math.prod(result_shape) else max(1, period)


def _periods(call: KernelCall) -> frozenset[int]:
    """The periods of a call's broadcast operands (see `broadcast_period`)."""
    if call.op not in ("binary", "ternary"):
        return frozenset()
    return frozenset({broadcast_period(p.shape, call.output.shape) for p in call.inputs} - {None})


def fit_tile(tile: int, period: int | None) -> int:
    """The tile size nearest below `tile` that a period divides or that divides the period, so
    that a tile starting at a multiple of it reads its broadcast operand as one DMA."""
    if period is None:
        return tile
    if tile >= period:
        return tile // period * period
    return next(d for d in range(tile, 0, -1) if period % d == 0)


def _fit_all(tile: int, periods: frozenset[int]) -> int:
    """`fit_tile` for every period at once."""
    if len(periods) <= 1:
        return fit_tile(tile, next(iter(periods), None))
    return next(d for d in range(tile, 0, -1) if all(d % p == 0 or p % d == 0 for p in periods))


def load_repeating(pe, src, period: int | None, tile: int, start: int, n: int, dst: int, signal) -> None:
    """DMA elements [start, start + n) of the flat result's view of operand `src` into `dst`:
    the operand itself (period None), a slice of it (the tile divides its period), or whole
    copies of it read again with source stride 0 (its period divides the tile). `start` is a
    multiple of `tile` (see `fit_tile`)."""
    it = ISA_ITEMSIZE[src.dtype]
    if period is None:
        pe.dma(src.space, src.addr + start * it, "local", dst, nbytes=n * it, signal=signal)
    elif tile <= period:
        pe.dma(src.space, src.addr + start % period * it, "local", dst, nbytes=n * it, signal=signal)
    else:
        pe.dma(src.space, src.addr, "local", dst, rows=n // period, row_bytes=period * it, src_stride=0,
               signal=signal)


def _useful_tiles(periods: frozenset[int]) -> list[int]:
    """The tile choices fitted to the periods, leaving out those they would shrink below a
    quarter (a period with no divisor near a tile size: thousands of tiny tiles)."""
    return sorted({f for t in TILE_CHOICES if 4 * (f := _fit_all(t, periods)) >= t})


def _widened(call: KernelCall) -> list[int]:
    """Operands of a binary op that are widened to fp32 first (their dtypes differ)."""
    if call.op != "binary" or len({p.dtype for p in call.inputs}) == 1:
        return []
    if any(p.dtype == "int32" for p in call.inputs):
        raise ValueError(f"ember.binary: int32 and {[p.dtype for p in call.inputs]} operands (one type expected)")
    return [i for i, p in enumerate(call.inputs) if p.dtype != "fp32"]


def _is_int(spec) -> bool:
    return not spec.is_float


@hands_off(VECTOR)
class ElementwiseKernel(KernelTemplate):
    ops = ("unary", "binary", "quantize", "ternary")
    integer_operands = True

    def accepts_epilogue(self, op: str, operands, result, step: tuple, other=None, attrs=None) -> bool:
        """A chain of steps after an op of the vector core (compiler/passes/fusion.py)."""
        return VECTOR.accepts_epilogue(op, operands, result, step, other, attrs)

    def accepts(self, op: str, operands, result, attrs, chip=None) -> bool:
        if op == "quantize":
            return True
        if op == "unary":
            if attrs["kind"] == "logical_not":
                return True
            if any(_is_int(o) for o in (*operands, result)):
                return False
            return attrs["kind"] in UNARY_FN or unary_passes(attrs["kind"], attrs["alpha"], attrs["beta"]) is not None
        kind = attrs["kind"]
        if kind in BITWISE_ON_BOOLS and all(o.dtype == "i1" for o in operands):
            kind = BITWISE_ON_BOOLS[kind]
        if op == "ternary":
            if kind != "where" or operands[1].dtype != result.dtype:
                return False
        elif kind not in BINARY_FN:
            return False
        elif kind in PREDICATE_BINARY:
            if result.dtype != "i1":
                return False
        elif any(_is_int(o) for o in (*operands, result)) and not (
                kind in INTEGER_BINARY and all(o.dtype in INT32_ARITH for o in (*operands, result))):
            return False
        periods = [broadcast_period(o.shape, result.shape) for o in operands]
        found = frozenset(periods) - {None}
        return all(o.shape == result.shape or p is not None for o, p in zip(operands, periods)) \
            and bool(_useful_tiles(found))

    def _sizes(self, call: KernelCall) -> tuple[int, int, int]:
        n = max(1, math.prod(call.output.shape))
        return n, len(call.inputs), ISA_ITEMSIZE[call.output.dtype]

    def _tile_bytes(self, call: KernelCall, tile: int) -> int:
        """Local memory of one plan: double-buffered operand and result tiles, fp32 scratch."""
        items = [ISA_ITEMSIZE[p.dtype] for p in call.inputs] + [ISA_ITEMSIZE[call.output.dtype]]
        return 2 * tile * sum(items) + 4 * tile * (len(_widened(call)) + self._scratch(call))

    @staticmethod
    def _scratch(call: KernelCall) -> bool:
        """A unary op done in several passes keeps its running value in the input's dtype, in a
        scratch tile, when the output's dtype differs."""
        return (call.op == "unary" and call.attrs["kind"] not in UNARY_FN
                and len(unary_passes(call.attrs["kind"], call.attrs["alpha"], call.attrs["beta"])) > 1
                and call.inputs[0].dtype != call.output.dtype)

    def plans(self, call: KernelCall, chip):
        n, _, _ = self._sizes(call)
        for tile in _useful_tiles(_periods(call)):
            if self._tile_bytes(call, tile) > chip.local_mem.bytes:
                continue
            pes = max(1, min(chip.num_pes, math.ceil(n / tile)))
            yield ElementwisePlan(pes, tile)

    @staticmethod
    def _per_pe(call: KernelCall, plan: ElementwisePlan, n: int) -> int:
        """Elements per PE: an even share, in whole tiles when an operand is broadcast (so that
        every tile starts at a multiple of the tile size)."""
        per_pe = math.ceil(n / plan.pes)
        return per_pe if not _periods(call) else min(n, math.ceil(per_pe / plan.tile) * plan.tile)

    def predict(self, call: KernelCall, plan: ElementwisePlan, chip) -> int:
        n, k, item = self._sizes(call)
        per_pe = self._per_pe(call, plan, n)
        tiles = math.ceil(per_pe / plan.tile)
        vec = math.ceil(min(plan.tile, per_pe) / chip.simd.elems_per_cycle)     # a tile may be short
        simd = vec * self._passes(call, chip) + vec * len(_widened(call))
        bw = {"dram": chip.dram_bytes_per_s, "sram": chip.sram.bytes_per_s}
        # every PE's tiles share the memory's bandwidth (a broadcast operand is read once per
        # result element); each DMA also pays its latency
        nbytes = n * (sum(ISA_ITEMSIZE[p.dtype] for p in call.inputs) + item)
        moved = nbytes / bw[call.output.space] * chip.clock_hz
        dma = tiles * (k + 1) * chip.dma.latency_cycles + moved
        return int(max(dma, tiles * simd) + simd + chip.dma.latency_cycles)

    @staticmethod
    def _passes(call: KernelCall, chip) -> int:
        """SIMD vector-cycles per vector of a tile."""
        if call.op == "ternary":        # SELECT, after converting a predicate of another dtype
            return 1 + (call.inputs[0].dtype != call.output.dtype)
        if call.op != "unary":
            return 1
        kind = call.attrs["kind"]
        if kind in UNARY_FN:
            return chip.simd.lut_cycles
        return len(unary_passes(kind, call.attrs["alpha"], call.attrs["beta"]))

    def flops(self, call: KernelCall) -> int:
        if call.op == "unary" and call.attrs["kind"] not in UNARY_FN:
            return self._sizes(call)[0] * self._passes(call, None)
        return self._sizes(call)[0]

    def emit(self, call: KernelCall, plan: ElementwisePlan, chip, builder) -> None:
        n, k, item = self._sizes(call)
        if call.op == "ternary" and not call.inputs[1].dtype == call.inputs[2].dtype == call.output.dtype:
            raise ValueError(f"ember.ternary: selected operands held as {call.inputs[1].dtype}, "
                             f"{call.inputs[2].dtype} and result as {call.output.dtype} (one type expected)")
        per_pe = self._per_pe(call, plan, n)
        periods = [broadcast_period(p.shape, call.output.shape) for p in call.inputs]
        items = [ISA_ITEMSIZE[p.dtype] for p in call.inputs]
        offset = 0
        in_buf = []
        for it in items:
            in_buf.append([offset, offset + plan.tile * it])
            offset += 2 * plan.tile * it
        out_buf = [offset, offset + plan.tile * item]
        offset += 2 * plan.tile * item
        wide = {}
        for i in _widened(call):
            wide[i] = offset
            offset += 4 * plan.tile
        kind = call.attrs.get("kind")
        dt = call.output.dtype
        scratch = None
        if self._scratch(call):
            scratch, offset = offset, offset + 4 * plan.tile
        for p in range(plan.pes):
            start, end = p * per_pe, min(n, (p + 1) * per_pe)
            if start >= end:
                continue
            pe = builder.pe(p)
            loaded, computed, stored = builder.token(), builder.token(), builder.token()
            tiles = [(s, min(plan.tile, end - s)) for s in range(start, end, plan.tile)]

            def load(t: int) -> None:
                s, m = tiles[t]
                for i, src in enumerate(call.inputs):
                    load_repeating(pe, src, periods[i], plan.tile, s, m, in_buf[i][t % 2], loaded)

            # `where` overwrites y's tile in place (the DMA queue reloads it only after its store)
            result_buf = in_buf[2] if call.op == "ternary" else out_buf

            def store(t: int) -> None:
                s, m = tiles[t]
                pe.dma("local", result_buf[t % 2], call.output.space, call.output.addr + s * item, nbytes=m * item,
                       wait=(computed, t + 1), signal=stored)

            load(0)
            for t, (s, m) in enumerate(tiles):
                if t + 1 < len(tiles):
                    load(t + 1)
                if t >= 2:
                    pe.nop(Engine.SIMD, wait=(stored, t - 1))
                wait = (loaded, (t + 1) * k)
                src = [buf[t % 2] for buf in in_buf]
                in_dt = call.inputs[0].dtype
                if call.op == "binary":
                    for i, addr in wide.items():
                        pe.simd_unary("COPY", src[i], addr, m, dtype=call.inputs[i].dtype, out_dtype="fp32",
                                      wait=wait)
                        src[i], wait, in_dt = addr, None, "fp32"
                    pe.simd_binary(BINARY_FN[BITWISE_ON_BOOLS.get(kind, kind)], src[0], src[1], out_buf[t % 2], m,
                                   dtype=in_dt, out_dtype=dt, wait=wait, signal=computed)
                elif call.op == "ternary":       # where: y's tile, x where the predicate is nonzero
                    mask = src[0]
                    if call.inputs[0].dtype != dt:       # the predicate in x's dtype (out_buf: scratch)
                        pe.simd_unary("COPY", mask, out_buf[t % 2], m, dtype=call.inputs[0].dtype, out_dtype=dt,
                                      wait=wait)
                        mask, wait = out_buf[t % 2], None
                    pe.simd_binary("SELECT", src[1], mask, src[2], m, dtype=dt, out_dtype=dt, wait=wait,
                                   signal=computed)
                elif call.op == "quantize":      # x * (1 / scale), rounded and saturated to int8
                    pe.simd_scalar("MUL", src[0], out_buf[t % 2], m, float(call.attrs["scale"]),
                                   dtype=in_dt, out_dtype=dt, wait=wait, signal=computed)
                elif kind in UNARY_FN:
                    pe.simd_unary(UNARY_FN[kind], src[0], out_buf[t % 2], m,
                                  dtype=in_dt, out_dtype=dt, wait=wait, signal=computed)
                else:   # passes in the input's dtype; the last one writes the output's
                    passes = unary_passes(kind, call.attrs["alpha"], call.attrs["beta"])
                    work = out_buf[t % 2] if scratch is None else scratch
                    prev = src[0]
                    for i, (fn, operand) in enumerate(passes):
                        last = i == len(passes) - 1
                        dst = out_buf[t % 2] if last else work
                        kw = dict(dtype=in_dt, out_dtype=dt if last else in_dt, wait=wait if i == 0 else None,
                                  signal=computed if last else None)
                        if operand == X:
                            pe.simd_binary(fn, prev, src[0], dst, m, **kw)
                        else:
                            pe.simd_scalar(fn, prev, dst, m, float(operand), **kw)
                        prev = work
                store(t)


register_kernel(ElementwiseKernel())
