"""SIMD engine: elementwise ops and lookup-table functions in fp32, row reductions and row
broadcasts; results are rounded or saturated to the output dtype. GELU is the tanh
approximation a lookup table implements, GELU_ERF the exact (erf) form.

An INT32 input is computed exactly, in integers, by the functions that have an integer meaning
(INTEGER_FNS: copies, add/sub/mul, max/min, comparisons, logic, select); integer results are
saturated to the output dtype as floats are. Other functions convert an INT32 input to fp32.
Comparisons and logical functions give 1 or 0. SELECT reads its destination too: it keeps the
old value where the mask (its second operand) is 0."""
from __future__ import annotations

import numpy as np

from simulator.engines.dtypes import store_cast
from simulator.engines.registry import register
from simulator.isa import DType, Op, SimdFn

_F32 = np.float32


def _gelu(x):
    return 0.5 * x * (1.0 + np.tanh(_F32(0.7978845608028654) * (x + _F32(0.044715) * x * x * x)))


def _erf(x):
    """erf to a fractional error below 1.2e-7 (the Chebyshev fit of erfc, Numerical Recipes'
    `erfcc`), evaluated in fp64 and rounded: what a lookup table of fp32 accuracy gives."""
    z = np.abs(x.astype(np.float64))
    t = 1.0 / (1.0 + 0.5 * z)
    poly = (-z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (
        -0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (
            -0.82215223 + t * 0.17087277)))))))))
    return (np.sign(x) * (1.0 - t * np.exp(poly))).astype(_F32)


def _gelu_erf(x):
    return _F32(0.5) * x * (_F32(1) + _erf(x * _F32(0.7071067811865476)))


UNARY = {
    SimdFn.COPY: lambda x: x, SimdFn.RELU: lambda x: np.maximum(x, _F32(0)),
    SimdFn.EXP: np.exp, SimdFn.GELU: _gelu, SimdFn.SILU: lambda x: x / (_F32(1) + np.exp(-x)),
    SimdFn.TANH: np.tanh, SimdFn.SIGMOID: lambda x: _F32(1) / (_F32(1) + np.exp(-x)),
    SimdFn.RECIP: lambda x: _F32(1) / x, SimdFn.RSQRT: lambda x: _F32(1) / np.sqrt(x),
    SimdFn.SIN: np.sin, SimdFn.COS: np.cos, SimdFn.GELU_ERF: _gelu_erf,
}
UNARY[SimdFn.TRUNC] = np.trunc


def _truth(fn):
    """A comparison or logical function as 1 / 0 in the inputs' type."""
    return lambda a, b: fn(a, b).astype(a.dtype)


BINARY = {
    SimdFn.ADD: np.add, SimdFn.SUB: np.subtract, SimdFn.MUL: np.multiply,
    SimdFn.MAX: np.maximum, SimdFn.MIN: np.minimum, SimdFn.DIV: np.divide,
    SimdFn.EQ: _truth(np.equal), SimdFn.NE: _truth(np.not_equal), SimdFn.LT: _truth(np.less),
    SimdFn.LE: _truth(np.less_equal), SimdFn.GT: _truth(np.greater), SimdFn.GE: _truth(np.greater_equal),
    SimdFn.AND: _truth(np.logical_and), SimdFn.OR: _truth(np.logical_or), SimdFn.XOR: _truth(np.logical_xor),
}
REDUCE = {SimdFn.ADD: np.sum, SimdFn.MAX: np.max, SimdFn.MIN: np.min}
#: Functions computed in integers (int64, then saturated to the output) on an INT32 input.
INTEGER_FNS = frozenset({SimdFn.COPY, SimdFn.ADD, SimdFn.SUB, SimdFn.MUL, SimdFn.MAX, SimdFn.MIN,
                         SimdFn.EQ, SimdFn.NE, SimdFn.LT, SimdFn.LE, SimdFn.GT, SimdFn.GE, SimdFn.AND,
                         SimdFn.OR, SimdFn.XOR, SimdFn.SELECT, SimdFn.TRUNC})


def _integer(c) -> bool:
    return int(c["dtype"]) == DType.INT32 and SimdFn(int(c["fn"])) in INTEGER_FNS


def _load(m, pe, addr, shape, dt, what, integer=False):
    x = m.local[pe].read_array(addr, shape, dt.np, what)
    return x.astype(np.int64) if integer else x.astype(np.float32)


def _immediate(c, a, what):
    """SIMD_SCALAR's immediate: fp32, or for an integer computation the whole number it holds."""
    imm = float(np.array([a[3]], np.int64).view(np.float64)[0])
    if not _integer(c):
        return _F32(imm)
    if imm != int(imm) or abs(imm) >= 2**53:
        from simulator.errors import InvalidCommand
        raise InvalidCommand(f"{what}: an integer SIMD computation needs a whole-number immediate, got {imm!r}")
    return np.int64(imm)


def _dtypes(c):
    return DType(int(c["dtype"])), DType(int(c["dtype2"]))


def _fn(table, c, what):
    fn = SimdFn(int(c["fn"]))
    if fn not in table:
        from simulator.errors import InvalidCommand
        raise InvalidCommand(f"{what}: {fn.name.lower()} is not valid for this SIMD opcode")
    return table[fn]


@register(Op.SIMD_UNARY)
def simd_unary(m, c, a, pe, what):
    dt, dt2 = _dtypes(c)
    x = _load(m, pe, a[0], (a[2],), dt, what, _integer(c))
    with np.errstate(all="ignore"):
        y = _fn(UNARY, c, what)(x)
    m.defer(m.local[pe], a[1], store_cast(y, dt2), what)


@register(Op.SIMD_BINARY)
def simd_binary(m, c, a, pe, what):
    dt, dt2 = _dtypes(c)
    integer = _integer(c)
    x = _load(m, pe, a[0], (a[3],), dt, what, integer)
    y = _load(m, pe, a[1], (a[3],), dt, what, integer)
    if SimdFn(int(c["fn"])) is SimdFn.SELECT:      # a blend into the destination
        old = m.local[pe].read_array(a[2], (a[3],), dt2.np, what)
        m.defer(m.local[pe], a[2], np.where(y != 0, store_cast(x, dt2), old), what)
        return
    with np.errstate(all="ignore"):
        z = _fn(BINARY, c, what)(x, y)
    m.defer(m.local[pe], a[2], store_cast(z, dt2), what)


@register(Op.SIMD_SCALAR)
def simd_scalar(m, c, a, pe, what):
    dt, dt2 = _dtypes(c)
    imm = _immediate(c, a, what)
    x = _load(m, pe, a[0], (a[2],), dt, what, _integer(c))
    with np.errstate(all="ignore"):
        z = _fn(BINARY, c, what)(x, imm)
    m.defer(m.local[pe], a[1], store_cast(z, dt2), what)


@register(Op.SIMD_ROW_REDUCE)
def simd_row_reduce(m, c, a, pe, what):
    dt, dt2 = _dtypes(c)
    x = _load(m, pe, a[0], (a[2], a[3]), dt, what, _integer(c))
    m.defer(m.local[pe], a[1], store_cast(_fn(REDUCE, c, what)(x, axis=1), dt2), what)


@register(Op.SIMD_ROW_BCAST)
def simd_row_bcast(m, c, a, pe, what):
    dt, dt2 = _dtypes(c)
    integer = _integer(c)
    x = _load(m, pe, a[0], (a[3], a[4]), dt, what, integer)
    v = _load(m, pe, a[1], (a[3], 1), dt, what, integer)
    with np.errstate(all="ignore"):
        z = _fn(BINARY, c, what)(x, v)
    m.defer(m.local[pe], a[2], store_cast(z, dt2), what)


@register(Op.SIMD_MX_QUANT)
def simd_mx_quant(m, c, a, pe, what):
    dt, dt2 = _dtypes(c)
    fmt = dt2.mx
    if fmt is None or dt.mx is not None:
        from simulator.errors import InvalidCommand
        raise InvalidCommand(f"{what}: MX quantization writes an MX format (mxfp8, mxfp4) from a float input")
    x = _load(m, pe, a[0], (a[2], a[3]), dt, what)
    m.defer(m.local[pe], a[1], fmt.encode(x), what)
