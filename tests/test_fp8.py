"""fp8 (OCP e4m3): how the engines store it, the per-row quantization and the dequantizing GEMM
bit for bit against numpy / torch, a model compiled with dtype="fp8" against eager and against
the cpu device, the Program file round trip, and a chip without fp8 refusing it by field."""
from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
import torch

import ember
from ops.kernel import KernelCall, kernel_for, roofline_cycles
from ops.kernels.quantize import quantize_rows
from simulator import ChipSpecError, ProgramBuilder, load_chip, simulate
from simulator.engines.dtypes import store_cast
from simulator.isa import DType
from tests.helpers import Mlp, place, scaled_linear, sim_error_checked

E4M3 = ml_dtypes.float8_e4m3fn
NP = {"fp32": np.float32, "fp8": E4M3}


def _simulate(call, chip, init):
    tmpl = kernel_for(call.op)
    b = ProgramBuilder(chip)
    tmpl.emit(call, tmpl.choose(call, chip), chip, b)
    res = simulate(b.build(), chip, memory_init=init)
    o = call.output
    return res, res.read(o.space, o.addr, o.shape, NP[o.dtype])


def test_store_cast_rounds_to_nearest_even_and_saturates():
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.standard_normal(1000) * 50, [447.9, 460.0, 1e6, -1e6, 0.0, -0.0]]).astype(np.float32)
    got = store_cast(x, DType.FP8).astype(np.float32)
    assert not np.isnan(got).any()
    assert got[-6:-2].tolist() == [448.0, 448.0, 448.0, -448.0]      # no NaN for what overflows
    inside = np.abs(x) <= 448
    np.testing.assert_array_equal(got[inside], x[inside].astype(E4M3).astype(np.float32))


@pytest.mark.parametrize("rows,cols", [(37, 200), (3, 40000)])
def test_fp8_row_quantization_is_bit_exact(rows, cols):
    """The kernel's fp8 rows and scales are the torch function's (the cpu device's), for rows
    that fit local memory and rows in chunks; each row's largest value maps to 448."""
    chip = load_chip("tiny")
    g = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, cols, generator=g) * torch.logspace(-3, 2, rows)[:, None]
    xp, qp, sp = place([((rows, cols), "fp32"), ((rows, cols), "fp8"), ((rows, 1), "fp32")], "sram")
    call = KernelCall("quantize_rows", (xp,), qp, extra_outputs=(sp,))
    init = {("sram", xp.addr): x.numpy(), ("sram", qp.addr): np.full(qp.shape, np.nan, E4M3)}
    res, got_q = _simulate(call, chip, init)
    want_q, want_s = quantize_rows(x, torch.float8_e4m3fn)
    np.testing.assert_array_equal(got_q.astype(np.float32), want_q.float().numpy())
    np.testing.assert_array_equal(res.read("sram", sp.addr, sp.shape, np.float32), want_s.numpy())
    assert (np.abs(got_q.astype(np.float32)).max(axis=1) == 448.0).all()
    assert res.cycles >= roofline_cycles(call, kernel_for("quantize_rows"), chip)


@pytest.mark.parametrize("chip,M,K,N,bias", [("tiny", 150, 96, 70, True), ("tiny", 33, 200, 48, False),
                                             ("mtia450", 300, 512, 384, True)])
def test_fp8_gemm_dequantizes_rows_and_columns(chip, M, K, N, bias):
    """acc[m, n] (fp32 from fp8 x fp8) -> * s[m] -> * d[n] (+ b[n]), against numpy on the same
    fp8 values: e4m3 products are exact in fp32, so only the fp32 sums' order differs."""
    chip = load_chip(chip)
    rng = np.random.default_rng(M)
    xq = (rng.standard_normal((M, K)) * 100).clip(-448, 448).astype(E4M3)
    wq = (rng.standard_normal((N, K)) * 100).clip(-448, 448).astype(E4M3)
    call, init, (s, d, b) = scaled_linear(xq, wq, bias, rng, "fp8")
    res, got = _simulate(call, chip, init)
    want = (xq.astype(np.float64) @ wq.astype(np.float64).T) * s * d[None, :] + (b[None, :] if bias else 0.0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    assert res.cycles >= roofline_cycles(call, kernel_for("linear"), chip)
    assert res.stats["macs"]["fp8"] == M * K * N


@pytest.fixture(scope="module")
def fp8_mlp():
    torch.manual_seed(0)
    model = Mlp().eval()
    x = torch.randn(6, 32)
    return model, ember.compile(model, (x,), chip="tiny", dtype="fp8", quantize_head=True)


def test_fp8_model_matches_eager_and_the_cpu_device(fp8_mlp, tmp_path):
    model, cm = fp8_mlp
    gemms = [s for s in cm.program.steps if s["op"] == "linear"]
    assert len(gemms) == 2
    assert all(cm.program.tensors[s["operands"][i]]["dtype"] == "f8E4M3FN" for s in gemms for i in (0, 1))
    rel = sim_error_checked(cm, model, torch.randn(6, 32) * 3.0, tmp_path)   # fresh, larger than the example
    assert rel < 0.09, rel                           # e4m3: 3 mantissa bits (2^-4 per element at worst)


def test_a_chip_without_fp8_refuses_it_by_field():
    with pytest.raises(ChipSpecError, match=r"dpe\.macs_per_cycle\.fp8"):
        ember.compile(Mlp().eval(), (torch.randn(2, 32),), chip="mtia2i", dtype="fp8")
    with pytest.raises(KeyError, match="no fp8"):
        load_chip("mtia2i").dpe.macs_per_cycle["fp8"]
