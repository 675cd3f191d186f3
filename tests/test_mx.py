"""OCP MX block formats (mxfp8, mxfp4): the encoding against the specification's conversion done
element by element, the MX quantization kernel and the MX GEMM bit for bit against numpy, a model
compiled with dtype="mxfp8" / "mxfp4" against eager and against the cpu device, the Program file
round trip, and the checks that refuse what a chip or a command cannot do."""
from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest
import torch

import ember
from ops.kernel import KernelCall, kernel_for, roofline_cycles
from simulator import ChipSpecError, InvalidCommand, ProgramBuilder, load_chip, simulate
from simulator.isa.mx import BLOCK, FORMATS
from tests.helpers import Mlp, place, sim_error_checked

E2M1 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]


def _spec_block(v: np.ndarray, fmt) -> tuple[int, list[float]]:
    """OCP MX v1.0, 6.3, one block by hand: shared exponent floor(log2 max|v|) - emax (clamped to
    e8m0's range), then each v / 2^shared rounded to the nearest element value (ties to the even
    code) and saturated."""
    amax = max(abs(float(x)) for x in v)
    shared = -127 if amax == 0 else max(-127, min(127, math.floor(math.log2(amax)) - fmt.emax))
    if fmt.name == "mxfp4":
        grid = E2M1
    else:               # every finite e4m3 magnitude
        grid = sorted({abs(float(x)) for x in np.arange(256, dtype=np.uint8).view(ml_dtypes.float8_e4m3fn)
                       if np.isfinite(float(x))})
    out = []
    for x in v:
        y = min(abs(float(x)) / 2.0 ** shared, grid[-1])
        i = min(range(len(grid)), key=lambda j: (abs(grid[j] - y), j % 2))   # ties: the even code
        out.append(math.copysign(grid[i], float(x)) * 2.0 ** shared)
    return shared, out


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_encoding_follows_the_specification(name):
    fmt = FORMATS[name]
    rng = np.random.default_rng(3)
    rows = rng.standard_normal((6, 2 * BLOCK)) * np.array([1e-30, 1e-3, 1, 300, 1e6, 7])[:, None]
    rows[5, :BLOCK] = 0.0                                        # an all-zero block
    rows[5, BLOCK:] = np.array([6.0, 448.0, 500.0, -3.0] * 8)    # values a power-of-two scale saturates
    rows = rows.astype(np.float32)
    got = fmt.encode(rows)
    assert got.shape == (6, 2 * fmt.block_bytes) and got.dtype == np.uint8
    values = fmt.decode(got)
    for r in range(6):
        for b in range(2):
            shared, want = _spec_block(rows[r, b * BLOCK:(b + 1) * BLOCK], fmt)
            assert int(got[r, b * fmt.block_bytes]) == shared + 127
            np.testing.assert_array_equal(values[r, b * BLOCK:(b + 1) * BLOCK], np.float32(want))
    np.testing.assert_array_equal(fmt.encode(values), got)      # values it holds encode to themselves


def _run(call, chip, init):
    tmpl = kernel_for(call.op)
    b = ProgramBuilder(chip)
    tmpl.emit(call, tmpl.choose(call, chip), chip, b)
    return simulate(b.build(), chip, memory_init=init)


@pytest.mark.parametrize("name,rows,cols,dtype", [("mxfp8", 37, 96, "fp32"), ("mxfp4", 9, 256, "bf16"),
                                                  ("mxfp8", 3, 40000, "fp32")])
def test_mx_quantization_kernel_is_bit_exact(name, rows, cols, dtype):
    """The kernel's bytes are `MxFormat.encode`'s, for rows that fit local memory and rows in chunks."""
    chip, fmt = load_chip("tiny"), FORMATS[name]
    rng = np.random.default_rng(rows)
    x = (rng.standard_normal((rows, cols)) * np.logspace(-3, 2, rows)[:, None]).astype(np.float32)
    if dtype == "bf16":
        x = x.astype(ml_dtypes.bfloat16)
    xp, qp = place([((rows, cols), dtype), ((rows, fmt.row_bytes(cols)), name)], "sram")
    call = KernelCall("quantize_mx", (xp,), qp)
    res = _run(call, chip, {("sram", xp.addr): x, ("sram", qp.addr): np.full(qp.shape, 255, np.uint8)})
    np.testing.assert_array_equal(res.read("sram", qp.addr, qp.shape, np.uint8), fmt.encode(x.astype(np.float32)))
    assert res.cycles >= roofline_cycles(call, kernel_for("quantize_mx"), chip)


@pytest.mark.parametrize("chip,name,M,K,N", [("tiny", "mxfp8", 70, 96, 40), ("tiny", "mxfp4", 33, 256, 48),
                                             ("mtia450", "mxfp4", 300, 512, 384), ("mtia450", "mxfp8", 16, 1024, 200)])
def test_mx_gemm_matches_numpy(chip, name, M, K, N):
    """C = A @ W^T + b with both operands rows of MX blocks: the blocks' values (exact in fp32)
    multiplied in float64; only the fp32 sums' order differs."""
    chip, fmt = load_chip(chip), FORMATS[name]
    rng = np.random.default_rng(M)
    xq = fmt.encode(rng.standard_normal((M, K)) * 10)
    wq = fmt.encode(rng.standard_normal((N, K)))
    b = rng.standard_normal(N).astype(np.float32)
    xp, wp, bp, op = place([((M, fmt.row_bytes(K)), name), ((N, fmt.row_bytes(K)), name), ((N,), "fp32"),
                            ((M, N), "fp32")], "sram")
    call = KernelCall("linear", (xp, wp, bp), op)
    res = _run(call, chip, {("sram", xp.addr): xq, ("sram", wp.addr): wq, ("sram", bp.addr): b})
    want = fmt.decode(xq).astype(np.float64) @ fmt.decode(wq).astype(np.float64).T + b
    got = res.read("sram", op.addr, op.shape, np.float32)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    assert res.cycles >= roofline_cycles(call, kernel_for("linear"), chip)
    assert res.stats["macs"][name] == M * K * N


@pytest.mark.parametrize("name,bound", [("mxfp8", 0.12), ("mxfp4", 0.45)])
def test_mx_model_matches_eager_and_the_cpu_device(name, bound, tmp_path):
    torch.manual_seed(0)
    model = Mlp().eval()
    cm = ember.compile(model, (torch.randn(2, 24, 32),), chip="tiny", dtype=name, quantize_head=True)
    gemms = [s for s in cm.program.steps if s["op"] == "linear"]
    assert len(gemms) == 2
    assert all(cm.program.tensors[s["operands"][i]]["isa_dtype"] == name for s in gemms for i in (0, 1))
    assert sum(s["op"] == "quantize_mx" for s in cm.program.steps) == 2
    rel = sim_error_checked(cm, model, torch.randn(2, 24, 32) * 3.0, tmp_path)   # fresh, larger than the example
    assert 1e-3 < rel < bound, rel                   # e4m3 / e2m1 elements, power-of-two block scales
    assert cm.last_run.stats["macs"][name] == 2 * 24 * (32 * 64 + 64 * 16)


@pytest.mark.parametrize("dtype", ["int8", "fp8", "mxfp8"])
def test_the_head_stays_float_unless_asked(dtype):
    """The GEMM producing the model's output (here the MLP's second linear) is not quantized by
    default; `quantize_head=True` quantizes it too."""
    torch.manual_seed(1)
    model, x = Mlp().eval(), torch.randn(8, 32)
    for quantize_head, want in ((False, ["quantized", "bf16"]), (True, ["quantized", "quantized"])):
        cm = ember.compile(model, (x,), chip="tiny", dtype=dtype, quantize_head=quantize_head)
        weights = [cm.program.tensors[s["operands"][1]]["isa_dtype"] for s in cm.program.steps if s["op"] == "linear"]
        assert ["bf16" if w == "bf16" else "quantized" for w in weights] == want, weights


def test_chip_without_mx_refuses_it_by_field():
    with pytest.raises(ChipSpecError, match=r"dpe\.macs_per_cycle\.mxfp4"):
        ember.compile(Mlp().eval(), (torch.randn(4, 32),), chip="mtia2i", dtype="mxfp4")


def test_validator_refuses_mx_commands_it_cannot_run():
    chip = load_chip("tiny")
    b = ProgramBuilder(chip)
    b.pe(0, 0).dpe_matmul(0, 4096, 8192, 4, 48, 4, dtype="mxfp8")          # K not whole blocks
    with pytest.raises(InvalidCommand, match="whole number of 32-element blocks"):
        simulate(b.build(), chip, timing_only=True)
    b = ProgramBuilder(chip)
    b.pe(0, 0).simd_unary("COPY", 0, 4096, 64, dtype="fp32", out_dtype="mxfp8")   # only MX quantization writes MX
    with pytest.raises(InvalidCommand, match="MX formats"):
        simulate(b.build(), chip, timing_only=True)
