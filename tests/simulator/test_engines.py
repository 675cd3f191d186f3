"""Functional behaviour of each engine, dtype rules, trace and text dump."""
import json

import ml_dtypes
import numpy as np
import pytest
import torch

from simulator import Engine, ProgramBuilder, load_chip, simulate
from simulator.functional import store_cast
from simulator.isa import CMD_DTYPE, DType

TINY = load_chip("tiny")
BF16 = ml_dtypes.bfloat16
rng = np.random.default_rng(11)


def _run_local(build, init, chip=TINY):
    """Run a one-PE program whose inputs are written straight into PE 0's local memory."""
    b = ProgramBuilder(chip)
    build(b.pe(0))
    return simulate(b.build(), chip, memory_init={("local", 0, a): v for a, v in init.items()})


def test_mlu_transpose_copy_concat():
    x = rng.standard_normal((12, 20)).astype(np.float32)
    y = rng.standard_normal((12, 4)).astype(np.float32)

    def build(pe):
        pe.mlu_transpose(0x0, 0x1000, 12, 20, dtype="fp32")
        pe.mlu_copy2d(0x0 + 8 * 4, 0x2000, 12, 6 * 4, src_stride=20 * 4)  # x[:, 8:14]
        pe.mlu_concat(0x0, 0x3000, 0x4000, 12, 20 * 4, 4 * 4)
    res = _run_local(build, {0x0: x, 0x3000: y})
    np.testing.assert_array_equal(res.read("local", 0x1000, (20, 12), np.float32, pe=0), x.T)
    np.testing.assert_array_equal(res.read("local", 0x2000, (12, 6), np.float32, pe=0), x[:, 8:14])
    np.testing.assert_array_equal(res.read("local", 0x4000, (12, 24), np.float32, pe=0),
                                  np.concatenate([x, y], axis=1))


def test_reduction_engine_accumulates_and_forwards():
    """Split-K over a row of PEs: PE 1 adds its partial sums into PE 0's (east -> west)."""
    parts = rng.standard_normal((2, 64)).astype(np.float32)
    b = ProgramBuilder(TINY)
    t = b.token()
    b.pe(0, 1).re_send("W", 0x0, 0x100, 64, signal=t)                 # into PE 0 at 0x100
    b.pe(0, 0).re_acc(0x0, 0x100, 64, wait=(t, 1))                  # 0x0 += 0x100
    res = simulate(b.build(), TINY, memory_init={("local", 0, 0x0): parts[0],
                                                 ("local", 0, 0x100): np.zeros(64, np.float32),
                                                 ("local", 1, 0x0): parts[1]})
    np.testing.assert_allclose(res.read("local", 0x0, (64,), np.float32, pe=0), parts.sum(0), rtol=1e-6)
    # send: 256 B over one 64 B/cycle link = 4 cycles + 1 latency + 1 hop = 6;
    # acc: 64 / 16 = 4 + 1 = 5 -> 11
    assert res.cycles == 11


def test_simd_functions_match_torch():
    x = (rng.standard_normal(256) * 2).astype(np.float32)
    y = (rng.standard_normal(256) + 3).astype(np.float32)
    cases = {"exp": torch.exp, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "relu": torch.relu,
             "silu": torch.nn.functional.silu,
             "gelu": lambda v: torch.nn.functional.gelu(v, approximate="tanh")}
    for fn, ref in cases.items():
        res = _run_local(lambda pe: pe.simd_unary(fn, 0, 0x1000, 256), {0: x})
        np.testing.assert_allclose(res.read("local", 0x1000, (256,), np.float32, pe=0),
                                   ref(torch.from_numpy(x)).numpy(), rtol=2e-6, atol=1e-6)
    for fn, ref in {"add": np.add, "sub": np.subtract, "mul": np.multiply, "max": np.maximum,
                    "div": np.divide}.items():
        res = _run_local(lambda pe: pe.simd_binary(fn, 0, 0x400, 0x1000, 256), {0: x, 0x400: y})
        np.testing.assert_allclose(res.read("local", 0x1000, (256,), np.float32, pe=0), ref(x, y), rtol=1e-6)
    res = _run_local(lambda pe: pe.simd_unary("rsqrt", 0x400, 0x1000, 256), {0x400: y})
    np.testing.assert_allclose(res.read("local", 0x1000, (256,), np.float32, pe=0), 1 / np.sqrt(y), rtol=1e-6)


def test_int8_saturates_and_bf16_rounds():
    x = np.array([-1000.0, -128.4, -3.5, 0.49, 2.5, 126.6, 300.0, 1e9], np.float32)
    res = _run_local(lambda pe: pe.simd_unary("copy", 0, 0x100, 8, out_dtype="int8"), {0: x})
    np.testing.assert_array_equal(res.read("local", 0x100, (8,), np.int8, pe=0),
                                  [-128, -128, -4, 0, 2, 127, 127, 127])   # round half to even
    # quantize: x * 0.5 -> int8
    res = _run_local(lambda pe: pe.simd_scalar("mul", 0, 0x100, 8, 0.5, out_dtype="int8"), {0: x})
    np.testing.assert_array_equal(res.read("local", 0x100, (8,), np.int8, pe=0),
                                  [-128, -64, -2, 0, 1, 63, 127, 127])
    v = np.array([1.0 + 2**-9, 1.0 + 3 * 2**-9, 3.14159], np.float32)      # between bf16 values
    res = _run_local(lambda pe: pe.simd_unary("copy", 0, 0x100, 3, out_dtype="bf16"), {0: v})
    got = res.read("local", 0x100, (3,), BF16, pe=0)
    np.testing.assert_array_equal(got, v.astype(BF16))                    # nearest even
    assert got[0] == 1.0 and got[1] == 1.0 + 2**-7
    assert store_cast(np.array([3e9], np.float32), DType.INT32)[0] == 2**31 - 1


def test_int8_matmul_accumulates_in_int32():
    A = np.full((4, 64), 127, np.int8)
    B = np.full((64, 16), 127, np.int8)
    res = _run_local(lambda pe: pe.dpe_matmul(0, 0x400, 0x1000, 4, 64, 16, dtype="int8"),
                     {0: A, 0x400: B})
    np.testing.assert_array_equal(res.read("local", 0x1000, (4, 16), np.int32, pe=0),
                                  np.full((4, 16), 64 * 127 * 127))


def test_fp16_matmul_fp32_accumulation():
    A = rng.standard_normal((16, 128)).astype(np.float16)
    B = rng.standard_normal((128, 16)).astype(np.float16)
    res = _run_local(lambda pe: pe.dpe_matmul(0, 0x1000, 0x2000, 16, 128, 16, dtype="fp16"),
                     {0: A, 0x1000: B})
    ref = A.astype(np.float64) @ B.astype(np.float64)
    np.testing.assert_allclose(res.read("local", 0x2000, (16, 16), np.float32, pe=0), ref,
                               rtol=1e-5, atol=1e-4)


def test_trace_stats_and_dump(tmp_path):
    b = ProgramBuilder(TINY)
    t = b.token()
    for p in range(4):
        b.pe(p).dma("dram", p * 1024, "local", 0, nbytes=1024, signal=t)
        b.pe(p).simd_unary("exp", 0, 0x400, 256, wait=(t, p + 1) if p else (t, 1))
    b.barrier(engine=Engine.SIMD)
    prog = b.build()
    text = prog.dump()
    assert "pe0 #0 dma dram[0x0] -> local[0x0] 1x1024B" in text and "simd.exp.fp32->fp32" in text
    assert "simd.nop wait t1>=4" in text
    res = simulate(prog, TINY, memory_init={("dram", 0): rng.standard_normal(1024).astype(np.float32)})
    path = tmp_path / "trace.json"
    res.write_trace(str(path))
    events = json.loads(path.read_text())["traceEvents"]
    x = [e for e in events if e["ph"] == "X"]
    assert len(x) == len(prog)
    assert {(e["pid"], e["tid"]) for e in x if e["name"] == "dma"} == {(p, 0) for p in range(4)}
    names = {e["args"]["name"] for e in events if e["name"] == "thread_name"}
    assert names == {"dma", "dpe", "reduce", "simd", "mlu", "vec"}
    assert max(e["ts"] + e["dur"] for e in x) == pytest.approx(res.seconds * 1e6)
    s = res.stats
    assert s["bytes"]["dram_read"] == 4096 and s["bytes"]["noc_byte_hops"] == 1024 * (1 + 1 + 2 + 2)
    assert 0 < s["engine_utilization"]["simd"] <= 1 and s["engine_utilization"]["dpe"] == 0
    assert s["energy_j"]["total"] == pytest.approx(sum(v for k, v in s["energy_j"].items() if k != "total"))
    assert s["energy_j"]["dram"] == pytest.approx(4096 * 20e-12)
    assert CMD_DTYPE.itemsize == 88


def test_timing_only_has_no_memory():
    b = ProgramBuilder(TINY)
    b.pe(0).simd_unary("exp", 0, 0x400, 256)       # would read poison, but timing only
    res = simulate(b.build(), TINY, timing_only=True)
    assert res.cycles == 16 * 2 + 2
    with pytest.raises(RuntimeError, match="timing_only"):
        res.read("local", 0, (1,), np.float32, pe=0)


def test_every_opcode_has_semantics():
    from simulator.engines import FUNCTIONAL
    from simulator.isa import Op
    assert set(FUNCTIONAL) == set(Op) - {Op.NOP}


def test_simd_function_must_fit_the_opcode():
    from simulator import InvalidCommand
    with pytest.raises(InvalidCommand, match="exp is not valid"):
        _run_local(lambda pe: pe.simd_binary("exp", 0, 0, 0x100, 4), {0: np.ones(4, np.float32)})


def test_host_memory_round_trip():
    x = rng.standard_normal(512).astype(np.float32)
    b = ProgramBuilder(TINY)
    t = b.token()
    b.pe(1).dma("host", 0x100, "local", 0, nbytes=2048, signal=t)
    b.pe(1).dma("local", 0, "host", 0x10000, nbytes=2048, wait=(t, 1))
    res = simulate(b.build(), TINY, memory_init={("host", 0x100): x})
    np.testing.assert_array_equal(res.read("host", 0x10000, (512,), np.float32), x)
    assert res.stats["bytes"]["host_read"] == res.stats["bytes"]["host_write"] == 2048
    # 2 KiB over the 32 B/cycle host link = 64 cycles (> edge link 32) + 10 + 1 hop, twice
    assert res.cycles == 2 * 75
