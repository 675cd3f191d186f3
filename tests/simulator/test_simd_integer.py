"""The SIMD engine on int32 (exact, in integers) and its comparison, logic, TRUNC and SELECT
functions; the new functions are priced as plain (not lookup-table) passes by both timing
engines."""
import numpy as np
import pytest

from simulator import InvalidCommand, ProgramBuilder, SimdFn, load_chip, simulate
from simulator.isa import LUT_FNS

TINY = load_chip("tiny")
A, B, C = 0x0, 0x1000, 0x2000


def _run(emit, a, b=None, c=None, out_dtype=np.int32, n=None):
    prog = ProgramBuilder(TINY)
    emit(prog.pe(0))
    init = {("local", 0, A): a}
    if b is not None:
        init[("local", 0, B)] = b
    if c is not None:
        init[("local", 0, C)] = c
    res = simulate(prog.build(), TINY, memory_init=init)
    return res.read("local", C, (len(a) if n is None else n,), out_dtype, pe=0)


def test_int32_arithmetic_is_exact_past_two_to_the_24():
    x = np.array([2**24 + 1, -(2**30) + 3, 123456789, -7], np.int32)
    y = np.array([2, 5, 987, 3], np.int32)
    for fn, ref in (("ADD", x + y), ("SUB", x - y), ("MAX", np.maximum(x, y)), ("MIN", np.minimum(x, y))):
        got = _run(lambda pe: pe.simd_binary(fn, A, B, C, 4, dtype="int32", out_dtype="int32"), x, y)
        np.testing.assert_array_equal(got, ref, err_msg=fn)
    got = _run(lambda pe: pe.simd_scalar("MUL", A, C, 1, 3.0, dtype="int32", out_dtype="int32"),
               np.array([5592407], np.int32))
    assert got[0] == 16777221                          # odd and past 2^24: fp32 would round it
    got = _run(lambda pe: pe.simd_unary("COPY", A, C, 4, dtype="int32", out_dtype="fp32"), x, out_dtype=np.float32)
    np.testing.assert_array_equal(got, x.astype(np.float32))


def test_an_integer_immediate_must_be_whole():
    with pytest.raises(InvalidCommand, match="whole-number immediate"):
        _run(lambda pe: pe.simd_scalar("ADD", A, C, 4, 0.5, dtype="int32", out_dtype="int32"), np.arange(4, dtype=np.int32))


@pytest.mark.parametrize("dtype", ["int32", "fp32"])
def test_comparisons_give_one_or_zero(dtype):
    rng = np.random.default_rng(0)
    np_dt = np.int32 if dtype == "int32" else np.float32
    x = rng.integers(-3, 3, 64).astype(np_dt)
    y = rng.integers(-3, 3, 64).astype(np_dt)
    if dtype == "fp32":
        x[0] = np.nan
    for fn, ref in (("EQ", x == y), ("NE", x != y), ("LT", x < y), ("LE", x <= y), ("GT", x > y), ("GE", x >= y)):
        got = _run(lambda pe: pe.simd_binary(fn, A, B, C, 64, dtype=dtype, out_dtype="int32"), x, y)
        np.testing.assert_array_equal(got, ref.astype(np.int32), err_msg=fn)


def test_logic_and_trunc():
    x = np.array([0, 1, 0, 1, 5], np.int32)
    y = np.array([0, 0, 1, 1, 0], np.int32)
    for fn, ref in (("AND", np.logical_and(x, y)), ("OR", np.logical_or(x, y)), ("XOR", np.logical_xor(x, y))):
        got = _run(lambda pe: pe.simd_binary(fn, A, B, C, 5, dtype="int32", out_dtype="int32"), x, y)
        np.testing.assert_array_equal(got, ref.astype(np.int32), err_msg=fn)
    f = np.array([2.7, -2.7, 0.5, -0.5, 1e6 + 0.25], np.float32)
    got = _run(lambda pe: pe.simd_unary("TRUNC", A, C, 5, dtype="fp32", out_dtype="int32"), f)
    np.testing.assert_array_equal(got, np.trunc(f).astype(np.int32))


def test_select_keeps_the_destination_where_the_mask_is_zero():
    x = np.array([1.0, -np.inf, np.nan, 4.0], np.float32)
    mask = np.array([1, 1, 0, 0], np.float32)
    old = np.array([-1.0, -2.0, -3.0, np.inf], np.float32)
    got = _run(lambda pe: pe.simd_binary("SELECT", A, B, C, 4, dtype="fp32", out_dtype="fp32"), x, mask, old,
               out_dtype=np.float32)
    np.testing.assert_array_equal(got, np.where(mask != 0, x, old))


@pytest.mark.parametrize("fn", [f for f in SimdFn if f >= SimdFn.EQ])
def test_new_functions_are_not_lookup_tables(fn):
    assert fn not in LUT_FNS
    cycles = []
    for f in (fn, SimdFn.ADD):
        prog = ProgramBuilder(TINY)
        prog.pe(0).simd_binary(f, A, B, C, 256, dtype="int32", out_dtype="int32")
        cycles += [simulate(prog.build(), TINY, timing_only=True, engine=e).cycles for e in ("cpp", "python")]
    assert len(set(cycles)) == 1
    exp = ProgramBuilder(TINY)
    exp.pe(0).simd_unary("EXP", A, C, 256)
    assert simulate(exp.build(), TINY, timing_only=True).cycles > cycles[0]
