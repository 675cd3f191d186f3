"""Convolution and pooling kernel templates (ops/kernels/conv.py, ops/kernels/pooling.py):
numbers against torch (kernel level and through the compiler), the roofline, the cost model."""
import ml_dtypes
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ember
from ops.kernel import KernelCall, Placement, kernel_for, roofline_cycles
from ops.pooling import _out_size, _pool_reference
from simulator import ProgramBuilder, load_chip, simulate
from tests.helpers import place, rel_err

NP = {"fp32": np.float32, "bf16": ml_dtypes.bfloat16, "fp16": np.float16}
TINY = load_chip("tiny")
MTIA = load_chip("mtia2i")
TOL = {"fp32": 1e-4, "bf16": 2e-2, "fp16": 2e-3}


def _pair(v):
    return tuple(v) if isinstance(v, tuple) else (v, v)


def conv_call(N, C, H, W, O, k, s=1, p=0, d=1, g=1, bias=False, dtype="fp32", space="dram", one_d=False):
    (kh, kw), st_, pd, dl = _pair(k), _pair(s), _pair(p), _pair(d)
    OH = (H + 2 * pd[0] - dl[0] * (kh - 1) - 1) // st_[0] + 1
    OW = (W + 2 * pd[1] - dl[1] * (kw - 1) - 1) // st_[1] + 1
    if one_d:
        shapes = [(N, C, W), (O, C // g, kw)]
        attrs = {"stride": [st_[1]], "padding": [pd[1]], "dilation": [dl[1]], "groups": g}
        out = (N, O, OW)
    else:
        shapes = [(N, C, H, W), (O, C // g, kh, kw)]
        attrs = {"stride": list(st_), "padding": list(pd), "dilation": list(dl), "groups": g}
        out = (N, O, OH, OW)
    shapes.append((O,) if bias else None)
    *pls, result = place([s and (s, dtype) for s in shapes] + [(out, dtype)], space)
    return KernelCall("conv", tuple(pls), result, attrs)


def pool_call(shape, kind, k, s=None, p=0, d=1, ceil=False, cip=True, div=0, dtype="fp32", space="dram"):
    nd = len(k)
    s = s or k
    p, d = (p,) * nd if isinstance(p, int) else p, (d,) * nd if isinstance(d, int) else d
    out = [_out_size(shape[-nd + i], k[i], s[i], p[i], d[i], ceil) for i in range(nd)]
    x = Placement(space, 0, shape, dtype)
    y = Placement(space, -(-x.nbytes // 256) * 256 + 256, (*shape[:-nd], *out), dtype)
    return KernelCall("pool", (x,), y, {"kind": kind, "kernel": list(k), "stride": list(s), "padding": list(p),
                                        "dilation": list(d), "ceil_mode": ceil, "count_include_pad": cip,
                                        "divisor": div})


def run(call, chip, plan=None, timing_only=False, seed=0):
    tmpl = kernel_for(call.op)
    plan = plan if plan is not None else tmpl.choose(call, chip)
    b = ProgramBuilder(chip)
    tmpl.emit(call, plan, chip, b)
    rng = np.random.default_rng(seed)
    init = None if timing_only else {(p.space, p.addr): rng.standard_normal(p.shape).astype(NP[p.dtype])
                                     for p in call.inputs if p is not None}
    return simulate(b.build(), chip, memory_init=init, timing_only=timing_only), plan, init


def reference(call, init):
    xs = [None if p is None else init[(p.space, p.addr)].astype(np.float64) for p in call.inputs]
    a = call.attrs
    if call.op == "pool":
        return _pool_reference(xs[0], a["kind"], a["kernel"], a["stride"], a["padding"], a["dilation"],
                               a["ceil_mode"], a["count_include_pad"], a["divisor"])
    t = [None if x is None else torch.from_numpy(x) for x in xs]
    f = torch.nn.functional.conv1d if len(call.output.shape) == 3 else torch.nn.functional.conv2d
    return f(t[0], t[1], t[2], a["stride"], a["padding"], a["dilation"], a["groups"]).numpy()


def check_numbers(call, chip, plan=None, seed=0):
    res, plan, init = run(call, chip, plan, seed=seed)
    o = call.output
    y = res.read(o.space, o.addr, o.shape, NP[o.dtype]).astype(np.float64)
    ref = reference(call, init)
    err = np.abs(y - ref).max() / max(np.abs(ref).max(), 1e-30)
    assert err <= TOL[call.compute_dtype], f"{plan}: relative error {err}"
    assert res.cycles >= roofline_cycles(call, kernel_for(call.op), chip)
    return err


CONV_SHAPES = {
    "1x1": {"N": 1, "C": 8, "H": 6, "W": 5, "O": 12, "k": 1},
    "3x3/2 pad": {"N": 2, "C": 5, "H": 9, "W": 7, "O": 6, "k": 3, "s": 2, "p": 1, "bias": True},
    "7x7/2 stem": {"N": 1, "C": 3, "H": 20, "W": 18, "O": 8, "k": 7, "s": 2, "p": 3},
    "depthwise dilated": {"N": 2, "C": 8, "H": 8, "W": 8, "O": 8, "k": 3, "p": 2, "d": 2, "g": 8},
    "grouped non-square": {"N": 1, "C": 16, "H": 6, "W": 7, "O": 12, "k": (3, 2), "s": (1, 2), "g": 4},
    "1x1/2 projection": {"N": 2, "C": 8, "H": 10, "W": 10, "O": 16, "k": 1, "s": 2, "bias": True},
    "1-D": {"N": 2, "C": 4, "H": 1, "W": 11, "O": 6, "k": 3, "p": 2, "bias": True, "one_d": True},
}


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("name", list(CONV_SHAPES))
def test_conv_tiny_matches_torch(name, dtype):
    check_numbers(conv_call(**CONV_SHAPES[name], dtype=dtype), TINY)


def test_conv_fp16_mtia2i_in_sram():
    check_numbers(conv_call(2, 16, 12, 12, 32, 3, p=1, bias=True, dtype="fp16", space="sram"), MTIA)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(g=st.sampled_from([1, 1, 2, 3]), cpg=st.integers(1, 3), opg=st.integers(1, 4), kh=st.integers(1, 4),
       kw=st.integers(1, 4), sh=st.integers(1, 3), sw=st.integers(1, 3), dh=st.integers(1, 2), dw=st.integers(1, 2),
       extra=st.integers(0, 6), bias=st.booleans(), dtype=st.sampled_from(["fp32", "bf16"]),
       pick=st.integers(0, 10 ** 6))
def test_conv_random_shapes_and_plans(g, cpg, opg, kh, kw, sh, sw, dh, dw, extra, bias, dtype, pick):
    """Any plan the search proposes computes the right numbers (a random one, not just the best)."""
    ph, pw = pick % (dh * (kh - 1) // 2 + 2), (pick // 7) % (dw * (kw - 1) // 2 + 2)
    H, W = dh * (kh - 1) + 1 + extra, dw * (kw - 1) + 1 + (pick // 3) % 7
    call = conv_call(1 + pick % 2, g * cpg, H, W, g * opg, (kh, kw), (sh, sw), (ph, pw), (dh, dw), g, bias, dtype)
    plans = list(kernel_for("conv").plans(call, TINY))
    assert plans
    check_numbers(call, TINY, plans[pick % len(plans)], seed=pick)


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(C=st.integers(1, 16), O=st.integers(1, 24), k=st.sampled_from([1, 3, 5]), s=st.integers(1, 2),
       H=st.integers(5, 9), bias=st.booleans(), pick=st.integers(0, 10 ** 6))
def test_conv_mtia2i_random_plans(C, O, k, s, H, bias, pick):
    """On the 8x8 grid: weight tiles shared down PE columns, PEs with no rows of a unit, idle PEs."""
    call = conv_call(1 + pick % 2, C, H, H + pick % 5, O, k, s, k // 2, bias=bias, dtype="bf16", space="sram")
    plans = [p for p in kernel_for("conv").plans(call, MTIA) if p.share == (8 if pick % 3 else 1)]
    check_numbers(call, MTIA, plans[pick % len(plans)], seed=pick)


POOLS = {
    "max 3x3/2 pad": {"shape": (2, 3, 11, 14), "kind": "max", "k": (3, 3), "s": (2, 2), "p": 1},
    "avg 3x3/2 pad": {"shape": (2, 3, 11, 14), "kind": "avg", "k": (3, 3), "s": (2, 2), "p": 1},
    "max ceil dilated": {"shape": (2, 3, 11, 14), "kind": "max", "k": (2, 3), "s": (2, 2), "d": (1, 2), "ceil": True},
    "avg divisor": {"shape": (2, 3, 11, 14), "kind": "avg", "k": (2, 2), "div": 3},
    "global avg": {"shape": (2, 8, 7, 7), "kind": "avg", "k": (7, 7)},
    "global max": {"shape": (2, 8, 7, 7), "kind": "max", "k": (7, 7)},
    "max 1-D": {"shape": (2, 4, 13), "kind": "max", "k": (3,), "s": (2,), "p": 1},
    "avg 3x3/1": {"shape": (2, 16, 16, 16), "kind": "avg", "k": (3, 3), "s": (1, 1), "p": 1},
}


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("name", list(POOLS))
def test_pool_tiny_matches_reference(name, dtype):
    check_numbers(pool_call(**POOLS[name], dtype=dtype), TINY)


def test_pool_every_plan():
    call = pool_call((2, 5, 9, 10), "max", (3, 3), (2, 1), 1, dtype="bf16")
    plans = list(kernel_for("pool").plans(call, TINY))
    assert len(plans) > 3
    for i, plan in enumerate(plans):
        check_numbers(call, TINY, plan, seed=i)


def test_pool_refuses_average_counts_that_vary():
    """Averages that do not count the padding, or whose ceil_mode windows pass the padding,
    divide by a count that varies over the output: those stay on the host."""
    tmpl = kernel_for("pool")

    class Spec:
        def __init__(self, shape):
            self.shape, self.dtype = shape, "f32"

    def accepts(**kw):
        call = pool_call(**kw)
        return tmpl.accepts("pool", [Spec(call.inputs[0].shape)], Spec(call.output.shape), call.attrs)

    assert accepts(shape=(2, 3, 11, 14), kind="avg", k=(3, 3), s=(2, 2), p=1)
    assert not accepts(shape=(2, 3, 11, 14), kind="avg", k=(3, 3), s=(2, 2), p=1, cip=False)
    assert not accepts(shape=(2, 3, 11, 14), kind="avg", k=(3, 3), s=(2, 2), p=1, ceil=True)
    assert accepts(shape=(2, 3, 11, 14), kind="max", k=(3, 3), s=(2, 2), p=1, ceil=True)


# --- through the compiler -------------------------------------------------------------------

class ConvNet(torch.nn.Module):
    """The shapes CNNs use: a 7x7/2 stem, 3x3/2 with padding, 1x1, depthwise, non-square, pools."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 7, stride=2, padding=3, bias=False)
        self.down = torch.nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.point = torch.nn.Conv2d(16, 12, 1)
        self.dw = torch.nn.Conv2d(12, 12, 3, padding=1, groups=12)
        self.rect = torch.nn.Conv2d(12, 8, (1, 3), padding=(0, 1))

    def forward(self, x):
        y = torch.nn.functional.max_pool2d(self.stem(x), 3, stride=2, padding=1)
        y = self.rect(self.dw(self.point(self.down(y))))
        return y, torch.nn.functional.adaptive_avg_pool2d(y, 1)


def _compare(model, inputs, chip, dtype):
    cm = ember.compile(model, inputs, chip=chip, dtype=dtype, to="program")
    fresh = tuple(torch.randn_like(x) for x in inputs)
    with torch.no_grad():
        out = cm.run(*fresh, device="sim")
        ref = model(*fresh)
    outs = out if isinstance(out, (tuple, list)) else (out,)
    refs = ref if isinstance(ref, (tuple, list)) else (ref,)
    for o, r in zip(outs, refs, strict=True):
        r = r.double()
        err = float((torch.as_tensor(o).double() - r).abs().max() / r.abs().max())
        assert err <= TOL[dtype], err
    return cm


@pytest.mark.parametrize("chip,dtype", [("tiny", "fp32"), ("mtia2i", "bf16")])
def test_compiled_convnet_runs_on_the_chip(chip, dtype):
    torch.manual_seed(0)
    cm = _compare(ConvNet().eval(), (torch.randn(2, 3, 23, 20),), chip, dtype)
    kernels = [s["op"] for s in cm.program.steps if s["kind"] == "kernel"]
    assert kernels.count("conv") == 5 and kernels.count("pool") == 2
    assert not [s for s in cm.program.steps if s["kind"] == "host"]


@pytest.mark.parametrize("chip,dtype", [("tiny", "fp32"), ("mtia2i", "bf16")])
def test_resnet_tiny_convs_and_pools_on_the_chip(chip, dtype):
    model, inputs = ember.load_model("models:resnet-tiny")
    torch.manual_seed(1)
    cm = _compare(model, inputs, chip, dtype)
    ops = {s["op"]: s["kind"] for s in cm.program.steps}
    assert ops["conv"] == ops["pool"] == "kernel"
    assert not [s for s in cm.program.steps if s["kind"] == "host"]


def test_meta_model_timing_only():
    """A ResNet-sized layer built on the meta device compiles and simulates without numbers."""
    with torch.device("meta"):
        model = torch.nn.Sequential(torch.nn.Conv2d(64, 64, 3, padding=1, bias=False),
                                    torch.nn.MaxPool2d(3, 2, 1)).eval()
        x = torch.empty(1, 64, 56, 56)
    cm = ember.compile(model, (x,), chip="mtia2i", dtype="bf16", to="program")
    cm.run(x, device="sim", timing_only=True)
    steps = [s for s in cm.program.steps if s["kind"] == "kernel"]
    assert [s["op"] for s in steps] == ["conv", "pool"]
    assert cm.last_run.cycles >= sum(s["roofline_cycles"] for s in steps)


# --- cost model -----------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [
    {"N": 1, "C": 64, "H": 56, "W": 56, "O": 64, "k": 3, "p": 1},
    {"N": 1, "C": 128, "H": 56, "W": 56, "O": 128, "k": 3, "s": 2, "p": 1},
    {"N": 1, "C": 256, "H": 14, "W": 14, "O": 1024, "k": 1},
    {"N": 1, "C": 512, "H": 7, "W": 7, "O": 512, "k": 3, "p": 1},
    {"N": 1, "C": 3, "H": 224, "W": 224, "O": 64, "k": 7, "s": 2, "p": 3},
])
def test_conv_cost_model_within_15_percent(shape):
    call = conv_call(**shape, dtype="bf16", space="sram")
    res, plan, _ = run(call, MTIA, timing_only=True)
    pred = kernel_for("conv").predict(call, plan, MTIA)
    assert abs(pred - res.cycles) <= 0.15 * res.cycles, (plan, pred, res.cycles)
    assert res.cycles >= roofline_cycles(call, kernel_for("conv"), MTIA)


def test_conv_search_adapts_to_shape_and_chip():
    tmpl = kernel_for("conv")
    wide = tmpl.choose(conv_call(1, 64, 56, 56, 64, 3, p=1, dtype="bf16", space="sram"), MTIA)
    deep = tmpl.choose(conv_call(1, 512, 7, 7, 512, 3, p=1, dtype="bf16", space="sram"), MTIA)
    small = tmpl.choose(conv_call(1, 64, 56, 56, 64, 3, p=1, dtype="bf16", space="sram"), TINY)
    assert len({wide, deep, small}) == 3


def test_accepts_uses_the_chips_local_memory():
    """A patch-embedding conv whose smallest tile exceeds the 64 KB of `tiny` stays on the host
    there, and runs on mtia2i (384 KB per PE), matching eager."""
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 32, 14, stride=14).eval()
    x = torch.randn(1, 3, 224, 224)
    where = {}
    for chip in ("tiny", "mtia2i"):
        cm = ember.compile(model, (x,), chip=chip, dtype="fp32")
        (step,) = [s for s in cm.program.steps if s["op"] == "conv"]
        where[chip] = step["kind"]
    assert where == {"tiny": "host", "mtia2i": "kernel"}
    fresh = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        ref = model(fresh)
    assert rel_err(cm.run(fresh, device="sim"), ref) <= 1e-4
