"""Per-row int8 quantization (ops/kernels/quantize.py) and the GEMM epilogue that scales rows:
the simulator's numbers bit for bit against the torch functions the cpu/cuda devices run, for
short rows, rows too long for local memory (chunks), bf16 input and an all-zero row; the cost
model against the simulator."""
from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
import torch

from ops.kernel import KernelCall, kernel_for, roofline_cycles
from ops.kernels.quantize import quantize_rows, scale_rows
from simulator import ProgramBuilder, load_chip, simulate
from tests.helpers import chosen_plan_cycles, place, scaled_linear

NP = {"fp32": np.float32, "bf16": ml_dtypes.bfloat16, "int8": np.int8, "int32": np.int32}


def _simulate(call, chip, init, plan=None):
    tmpl = kernel_for(call.op)
    plan = tmpl.choose(call, chip) if plan is None else plan
    b = ProgramBuilder(chip)
    tmpl.emit(call, plan, chip, b)
    res = simulate(b.build(), chip, memory_init=init)
    o = call.output
    return res, res.read(o.space, o.addr, o.shape, NP[o.dtype])


def _rows(shape, dtype, seed):
    """Rows of very different magnitudes, one all zero, one with a single outlier."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * torch.logspace(-3, 2, shape[0])[:, None]
    x[1] = 0.0
    x[-1, 3] = 50.0 * x[-1].abs().max() + 1.0
    return x.to({"fp32": torch.float32, "bf16": torch.bfloat16}[dtype])


def _quantize_call(rows, cols, dtype, space="sram"):
    xp, qp, sp = place([((rows, cols), dtype), ((rows, cols), "int8"), ((rows, 1), "fp32")], space)
    return KernelCall("quantize_rows", (xp,), qp, extra_outputs=(sp,))


def test_scale_rows_matches_the_definition():
    x = _rows((6, 50), "fp32", seed=3)
    s, inv = scale_rows(x)
    amax = x.abs().amax(-1, keepdim=True)
    np.testing.assert_allclose(s[amax > 0].numpy(), (amax[amax > 0] / 127).numpy(), rtol=1e-6)
    assert s[1].item() > 0 and inv[1].item() > 0                 # the zero row: a tiny scale, no inf
    xq, s2 = quantize_rows(x)
    assert torch.equal(s2, s) and xq.dtype == torch.int8


@pytest.mark.parametrize("rows,cols,dtype,chip", [(37, 200, "fp32", "tiny"), (9, 96, "bf16", "tiny"),
                                                  (3, 40000, "fp32", "tiny"), (4, 30000, "bf16", "tiny"),
                                                  (130, 700, "fp32", "mtia2i"), (700, 64, "fp32", "mtia2i")])
def test_row_quantization_is_bit_exact(rows, cols, dtype, chip):
    """Both results of one kernel (int8 rows, fp32 scales) for every plan. On mtia2i one-row
    tiles let the SIMD engine get ahead of the stores: a scale buffer shared by the two slots
    would be overwritten before its store ran."""
    chip = load_chip(chip)
    x = _rows((rows, cols), dtype, seed=rows)
    call = _quantize_call(rows, cols, dtype)
    xp, qp, sp = call.inputs[0], call.output, call.extra_outputs[0]
    tmpl = kernel_for("quantize_rows")
    plans = list(tmpl.plans(call, chip))
    assert plans
    if cols * 4 > chip.local_mem.bytes:
        assert all("ChunkPlan" in repr(p) for p in plans)
    want_q, want_s = (t.numpy() for t in quantize_rows(x))
    init = {("sram", xp.addr): x.float().numpy().astype(NP[dtype]),
            # poisoned results: an element the kernel does not write fails
            ("sram", qp.addr): np.full(qp.shape, 77, np.int8), ("sram", sp.addr): np.full(sp.shape, np.nan, np.float32)}
    for plan in plans:
        res, got_q = _simulate(call, chip, init, plan)
        np.testing.assert_array_equal(got_q, want_q, err_msg=repr(plan))
        np.testing.assert_array_equal(res.read("sram", sp.addr, sp.shape, np.float32), want_s, err_msg=repr(plan))
        assert res.cycles >= roofline_cycles(call, tmpl, chip)
    q = want_q.astype(np.int64)     # every row uses its whole int8 range; the zero row stays zero
    assert not q[1].any() and (np.abs(np.delete(q, 1, axis=0)).max(axis=1) == 127).all()


@pytest.mark.parametrize("chip,rows,cols,dtype,space", [
    ("mtia2i", 2048, 2048, "fp32", "sram"), ("mtia2i", 512, 4096, "fp32", "sram"),
    ("mtia2i", 1, 4096, "fp32", "sram"), ("mtia2i", 16, 14336, "fp32", "sram"),
    ("mtia2i", 2048, 2048, "bf16", "sram"), ("mtia2i", 512, 4096, "fp32", "dram"),
    ("tiny", 3, 40000, "fp32", "sram"), ("tiny", 8, 20000, "bf16", "sram")])
def test_row_quantization_cost_within_10_percent(chip, rows, cols, dtype, space):
    """The plan the compiler takes, predicted against simulated (timing only); the roofline
    counts x read once and both results written once."""
    chip = load_chip(chip)
    call = _quantize_call(rows, cols, dtype, space)
    tmpl = kernel_for("quantize_rows")
    item = {"fp32": 4, "bf16": 2}[dtype]
    assert tmpl.bytes_moved(call) == {space: rows * cols * (item + 1) + rows * 4}
    plan, pred, cycles = chosen_plan_cycles(call, chip)
    assert ("ChunkPlan" in repr(plan)) == (cols * 4 > chip.local_mem.bytes)
    assert abs(pred - cycles) <= 0.10 * cycles, (plan, pred, cycles)
    assert cycles >= roofline_cycles(call, tmpl, chip)


@pytest.mark.parametrize("chip,M,K,N", [("tiny", 150, 96, 70), ("mtia2i", 300, 512, 384)])
@pytest.mark.parametrize("bias", [False, True])
def test_gemm_epilogue_scales_rows_and_columns(chip, M, K, N, bias):
    """acc[m, n] (int32) -> fp32 -> * s[m] -> * d[n] (+ b[n]), for every job of a plan whose
    M tiles each load their rows' scales."""
    chip = load_chip(chip)
    rng = np.random.default_rng(M)
    xq = rng.integers(-127, 128, (M, K)).astype(np.int8)
    wq = rng.integers(-127, 128, (N, K)).astype(np.int8)
    call, init, (s, d, b) = scaled_linear(xq, wq, bias, rng, "int8")
    res, got = _simulate(call, chip, init)
    acc = (xq.astype(np.int64) @ wq.astype(np.int64).T).astype(np.float32)
    want = acc * s * d[None, :]
    if bias:
        want = want + b[None, :]
    np.testing.assert_array_equal(got, want)
    assert res.cycles >= roofline_cycles(call, kernel_for("linear"), chip)


@pytest.mark.parametrize("chip,M,K,N,bias", [("mtia2i", 56, 64, 176, True), ("mtia2i", 176, 512, 1408, False),
                                             ("mtia2i", 300, 512, 384, True), ("tiny", 56, 176, 64, True)])
def test_dequantizing_gemm_cost_within_15_percent(chip, M, K, N, bias):
    """The cost model of the int8 linears the dtype pass makes (row and column scales, bias),
    at model sizes where the column params' loads and the output stores are a large share."""
    chip = load_chip(chip)
    pl = place([((M, K), "int8"), ((N, K), "int8"), ((N,), "fp32") if bias else None,
                ((N,), "fp32"), ((M, 1), "fp32"), ((M, N), "fp32")], "sram")
    call = KernelCall("linear", tuple(pl[:5]), pl[5])
    plan, pred, cycles = chosen_plan_cycles(call, chip)
    assert abs(pred - cycles) <= 0.15 * cycles, (plan, pred, cycles)
