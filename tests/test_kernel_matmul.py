"""GEMM kernel template (ops/kernels/matmul.py): numbers against torch, the roofline, the cost
model, and the plan search."""
import ml_dtypes
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ops.kernel import KernelCall, kernel_for, roofline_cycles
from simulator import ProgramBuilder, load_chip, simulate
from tests.helpers import place

BF16 = ml_dtypes.bfloat16
NP = {"fp32": np.float32, "bf16": BF16, "fp16": np.float16, "int8": np.int8, "int32": np.int32}
TINY = load_chip("tiny")
MTIA = load_chip("mtia2i")
TOL = {"fp32": 1e-4, "bf16": 2e-2, "fp16": 2e-3}


def make_call(op, M, K, N, dtype, space="dram", batch=(), rhs_batch=None, bias=False, out=None):
    out = out or ("int32" if dtype == "int8" else dtype)
    if op == "matmul":
        rb = batch if rhs_batch is None else rhs_batch
        shapes = [(*batch, M, K), (*rb, K, N)]
    else:
        shapes = [(*batch, M, K), (N, K), (N,) if bias else None]
    *pls, result = place([s and (s, dtype) for s in shapes] + [((*batch, M, N), out)], space)
    return KernelCall(op, tuple(pls), result)


def inputs(call, seed=0):
    rng = np.random.default_rng(seed)
    init = {}
    for p in call.inputs:
        if p is None:
            continue
        if p.dtype == "int8":
            init[(p.space, p.addr)] = rng.integers(-128, 128, p.shape).astype(np.int8)
        else:
            init[(p.space, p.addr)] = rng.standard_normal(p.shape).astype(NP[p.dtype])
    return init


def reference(call, init):
    xs = [None if p is None else init[(p.space, p.addr)] for p in call.inputs]
    if call.compute_dtype == "int8":
        t = [None if x is None else torch.from_numpy(x.astype(np.int64)) for x in xs]
    else:
        t = [None if x is None else torch.from_numpy(x.astype(np.float64)) for x in xs]
    if call.op == "matmul":
        return torch.matmul(t[0], t[1]).numpy()
    return torch.nn.functional.linear(t[0], t[1], t[2]).numpy()


def run(call, chip, plan=None, timing_only=False, seed=0):
    tmpl = kernel_for(call.op)
    plan = plan if plan is not None else tmpl.choose(call, chip)
    b = ProgramBuilder(chip)
    tmpl.emit(call, plan, chip, b)
    init = None if timing_only else inputs(call, seed)
    res = simulate(b.build(), chip, memory_init=init, timing_only=timing_only)
    return res, plan, init


def check_numbers(call, chip, plan=None, seed=0):
    res, plan, init = run(call, chip, plan, seed=seed)
    o = call.output
    y = res.read(o.space, o.addr, o.shape, NP[o.dtype])
    ref = reference(call, init)
    if call.compute_dtype == "int8":
        np.testing.assert_array_equal(y.astype(np.int64), ref)
    else:
        err = np.abs(y.astype(np.float64) - ref).max() / max(np.abs(ref).max(), 1e-30)
        assert err <= TOL[call.compute_dtype], f"{plan}: relative error {err}"
    assert res.cycles >= roofline_cycles(call, kernel_for(call.op), chip)
    return res, plan


@pytest.mark.parametrize("op,M,K,N,dtype,batch,bias", [
    ("matmul", 37, 53, 29, "fp32", (), False),
    ("matmul", 100, 70, 45, "bf16", (), False),
    ("matmul", 64, 64, 64, "int8", (), False),
    ("matmul", 9, 17, 13, "bf16", (3,), False),
    ("linear", 33, 40, 50, "fp32", (), True),
    ("linear", 33, 40, 50, "bf16", (2,), True),
    ("linear", 20, 64, 30, "int8", (), True),
    ("linear", 1, 31, 7, "fp32", (), False),
    ("linear", 21, 37, 19, "fp16", (), True),
])
def test_tiny_matches_torch(op, M, K, N, dtype, batch, bias):
    check_numbers(make_call(op, M, K, N, dtype, batch=batch, bias=bias), TINY)


def test_broadcast_batch_and_fp32_output_of_bf16():
    check_numbers(make_call("matmul", 12, 20, 9, "bf16", batch=(2, 3), rhs_batch=(3,), out="fp32"), TINY)


def test_int8_linear_to_fp32_with_bias():
    call = make_call("linear", 9, 50, 21, "int8", bias=True, out="fp32")
    res, _, init = run(call, TINY)
    y = res.read("dram", call.output.addr, call.output.shape, np.float32)
    np.testing.assert_allclose(y, reference(call, init).astype(np.float32), rtol=1e-6)


def test_mtia2i_linear_with_bias_in_sram():
    check_numbers(make_call("linear", 96, 200, 130, "bf16", space="sram", bias=True), MTIA)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(op=st.sampled_from(["matmul", "linear"]), M=st.integers(1, 40), K=st.integers(1, 48),
       N=st.integers(1, 40), dtype=st.sampled_from(["fp32", "bf16", "int8"]),
       batch=st.sampled_from([(), (2,)]), bias=st.booleans(), pick=st.integers(0, 10 ** 6))
def test_random_shapes_and_plans(op, M, K, N, dtype, batch, bias, pick):
    """Any plan the search proposes computes the right numbers (a random one, not just the best)."""
    call = make_call(op, M, K, N, dtype, batch=batch, bias=bias and op == "linear")
    plans = list(kernel_for(op).plans(call, TINY))
    assert plans
    check_numbers(call, TINY, plans[pick % len(plans)], seed=pick)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(op=st.sampled_from(["matmul", "linear"]), M=st.integers(1, 300), K=st.integers(1, 300),
       N=st.integers(1, 600), dtype=st.sampled_from(["fp32", "bf16", "int8"]), pick=st.integers(0, 10 ** 6))
def test_mtia2i_random_plans(op, M, K, N, dtype, pick):
    """On the 8x8 grid: multicast groups, idle PEs of edge tiles, rotating fetchers."""
    call = make_call(op, M, K, N, dtype, space="sram", bias=op == "linear")
    plans = list(kernel_for(op).plans(call, MTIA))
    check_numbers(call, MTIA, plans[pick % len(plans)], seed=pick)


@pytest.mark.parametrize("op,M,K,N,dtype,space", [
    ("matmul", 512, 512, 512, "bf16", "sram"),
    ("linear", 16, 4096, 4096, "bf16", "dram"),
    ("matmul", 1000, 999, 1001, "bf16", "dram"),
    ("matmul", 512, 512, 512, "fp32", "sram"),
    ("linear", 256, 1024, 1024, "int8", "dram"),
])
def test_cost_model_within_15_percent(op, M, K, N, dtype, space):
    call = make_call(op, M, K, N, dtype, space=space)
    res, plan, _ = run(call, MTIA, timing_only=True)
    pred = kernel_for(op).predict(call, plan, MTIA)
    assert abs(pred - res.cycles) <= 0.15 * res.cycles, (plan, pred, res.cycles)
    assert res.cycles >= roofline_cycles(call, kernel_for(op), MTIA)


def test_search_adapts_to_shape_and_chip():
    tmpl = kernel_for("matmul")
    square = tmpl.choose(make_call("matmul", 2048, 2048, 2048, "bf16", "sram"), MTIA)
    skinny = tmpl.choose(make_call("matmul", 16, 8192, 8192, "bf16", "dram"), MTIA)
    tall = tmpl.choose(make_call("matmul", 8192, 1024, 64, "bf16", "sram"), MTIA)
    small = tmpl.choose(make_call("matmul", 2048, 2048, 2048, "bf16", "sram"), TINY)
    assert len({square, skinny, tall, small}) == 4
    assert skinny.mt <= 16 < square.mt
    assert small.mt * small.nt < square.mt * square.nt * 4     # tiny's 64 KiB local memory


def test_program_stays_compact():
    """K loops are repeat blocks: stored records grow with jobs, not with K."""
    call = make_call("linear", 16, 16384, 16384, "bf16", "dram")
    tmpl = kernel_for("linear")
    b = ProgramBuilder(MTIA)
    tmpl.emit(call, tmpl.choose(call, MTIA), MTIA, b)
    prog = b.build()
    assert len(prog) < prog.num_commands / 2
