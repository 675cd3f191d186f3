"""Quantized convolutions (int8, and fp8 e4m3 on chips that list it): the conv kernel's integer
accumulation and per-output-channel dequantizing epilogue against numpy on the same quantized
operands, its cost model, one conv compiled with its calibrated scales against a numpy emulation
of the quantization, and CNNs compiled with dtype="int8" / "fp8" with no bf16 convolution left,
against fp32 eager (SQNR) and against the cpu device."""
from __future__ import annotations

import re

import ml_dtypes
import numpy as np
import pytest
import torch

import ember
from compiler.passes.dtype import DtypeLowering
from ops.kernel import KernelCall, Placement, kernel_for, roofline_cycles
from simulator import ChipSpecError, ProgramBuilder, load_chip, simulate
from tests.helpers import place

E4M3 = ml_dtypes.float8_e4m3fn
ELEMENT = {"int8": np.int8, "fp8": E4M3}
TINY, MTIA = load_chip("tiny"), load_chip("mtia2i")
#: The project's bar for int8 logits against fp32 eager.
INT8_SQNR_DB = 30.0
#: e4m3 keeps 3 mantissa bits (an int8 grid keeps ~7 over a tensor's range): resnet-tiny's
#: logits measured 30-31 dB over seeded fresh inputs.
FP8_SQNR_DB = 27.0


def quantized_conv(N, C, H, W, O, k, s=1, p=0, d=1, g=1, bias=True, dtype="int8", one_d=False, out="fp32"):
    """A quantized conv as the dtype pass makes it: input and weight in `dtype`, fp32 bias and
    dequantization vector d[O] (operands x, w, bias, d), output in `out`."""
    kh, kw = (1, k) if one_d else (k, k)
    OH = 1 if one_d else (H + 2 * p - d * (kh - 1) - 1) // s + 1
    OW = (W + 2 * p - d * (kw - 1) - 1) // s + 1
    spatial, kernel, out_shape = ((W,), (kw,), (OW,)) if one_d else ((H, W), (kh, kw), (OH, OW))
    nd = len(spatial)
    pl = place([((N, C, *spatial), dtype), ((O, C // g, *kernel), dtype), ((O,), "fp32") if bias else None,
                ((O,), "fp32"), ((N, O, *out_shape), out)], "sram")
    attrs = {"stride": [s] * nd, "padding": [p] * nd, "dilation": [d] * nd, "groups": g}
    return KernelCall("conv", tuple(pl[:4]), pl[4], attrs)


def _operands(call, rng):
    """Random quantized operands over the whole grid, bias, d, and a poisoned output."""
    x, w, b, dq = call.inputs
    if x.dtype == "int8":
        xq = rng.integers(-128, 128, x.shape).astype(np.int8)
        wq = rng.integers(-127, 128, w.shape).astype(np.int8)
    else:
        xq = (rng.standard_normal(x.shape) * 100).clip(-448, 448).astype(E4M3)
        wq = (rng.standard_normal(w.shape) * 100).clip(-448, 448).astype(E4M3)
    vals = {"x": xq, "w": wq, "d": rng.uniform(1e-4, 2e-3, dq.shape).astype(np.float32),
            "b": None if b is None else rng.standard_normal(b.shape).astype(np.float32)}
    init = {("sram", x.addr): xq, ("sram", w.addr): wq, ("sram", dq.addr): vals["d"],
            ("sram", call.output.addr): np.full(call.output.shape, np.nan, np.float32)}
    if b is not None:
        init[("sram", b.addr)] = vals["b"]
    return vals, init


def _want(call, v):
    """The chip's arithmetic in numpy: an exact accumulator (float64 holds any of these sums),
    converted to fp32, times d[o], plus b[o], each step rounded to fp32."""
    a = call.attrs
    conv = torch.nn.functional.conv1d if len(call.output.shape) == 3 else torch.nn.functional.conv2d
    acc = conv(torch.from_numpy(v["x"].astype(np.float64)), torch.from_numpy(v["w"].astype(np.float64)), None,
               a["stride"], a["padding"], a["dilation"], a["groups"]).numpy()
    per_channel = (1, -1) + (1,) * (acc.ndim - 2)
    y = acc.astype(np.float32) * v["d"].reshape(per_channel)
    return y if v["b"] is None else y + v["b"].reshape(per_channel)


def _simulate(call, chip, plan=None, seed=0):
    tmpl = kernel_for("conv")
    plan = plan if plan is not None else tmpl.choose(call, chip)
    b = ProgramBuilder(chip)
    tmpl.emit(call, plan, chip, b)
    vals, init = _operands(call, np.random.default_rng(seed))
    res = simulate(b.build(), chip, memory_init=init)
    o = call.output
    return res, res.read(o.space, o.addr, o.shape, np.float32), _want(call, vals)


SHAPES = {
    "3x3/2 pad": dict(N=2, C=5, H=9, W=7, O=6, k=3, s=2, p=1),
    "7x7/2 stem": dict(N=1, C=3, H=20, W=18, O=8, k=7, s=2, p=3, bias=False),
    "depthwise dilated": dict(N=2, C=8, H=8, W=8, O=8, k=3, p=2, d=2, g=8),
    "grouped": dict(N=1, C=16, H=6, W=7, O=12, k=3, s=2, p=1, g=4, bias=False),
    "1x1": dict(N=2, C=24, H=6, W=5, O=20, k=1),
    "1x1/2 projection": dict(N=2, C=8, H=10, W=10, O=16, k=1, s=2),
    "1-D": dict(N=2, C=4, H=1, W=11, O=6, k=3, p=2, one_d=True),
    "deep K": dict(N=1, C=96, H=7, W=7, O=40, k=3, p=1),
}


@pytest.mark.parametrize("chip", [TINY, MTIA], ids=["tiny", "mtia2i"])
@pytest.mark.parametrize("name", list(SHAPES))
def test_int8_conv_is_the_integer_product(name, chip):
    """int32 accumulation is exact and the epilogue (fp32 widening, * d[o], + b[o]) rounds as
    numpy's fp32 does: the output is bit for bit the numpy one."""
    call = quantized_conv(**SHAPES[name])
    res, got, want = _simulate(call, chip)
    np.testing.assert_array_equal(got, want)
    assert res.cycles >= roofline_cycles(call, kernel_for("conv"), chip)
    useful = int(np.prod(call.output.shape)) * int(np.prod(call.inputs[1].shape[1:]))
    assert res.stats["macs"]["int8"] >= useful       # (and the columns past a short row tile)


def test_int8_conv_every_kind_of_plan():
    """Plans that share weight tiles down a PE column, double-buffer the accumulator, buffer
    three K steps, or leave a short last tile of channels and rows: all bit exact."""
    call = quantized_conv(N=2, C=20, H=11, W=9, O=24, k=3, p=1)
    tmpl = kernel_for("conv")
    plans = sorted(tmpl.plans(call, TINY), key=lambda p: tmpl.predict(call, p, TINY))
    features = [lambda p: p.share > 1, lambda p: p.cbufs == 2, lambda p: p.nbuf == 3, lambda p: 20 % p.cc,
                lambda p: 11 % p.nr, lambda p: 24 % p.mt]
    picked = {plans[0]} | {next(p for p in plans if has(p)) for has in features}    # the quickest of each
    for seed, plan in enumerate(sorted(picked, key=str)):
        _, got, want = _simulate(call, TINY, plan, seed)
        np.testing.assert_array_equal(got, want, err_msg=str(plan))


@pytest.mark.parametrize("name", ["3x3/2 pad", "grouped", "1x1", "deep K"])
def test_fp8_conv_accumulates_in_fp32(name):
    """e4m3 products are exact in fp32; only the order of the fp32 sums differs from numpy's."""
    call = quantized_conv(**SHAPES[name], dtype="fp8")
    res, got, want = _simulate(call, TINY)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    assert res.stats["macs"]["fp8"] > 0 and res.cycles >= roofline_cycles(call, kernel_for("conv"), TINY)


# --- cost model -----------------------------------------------------------------------------

RESNET_LAYERS = [
    dict(N=1, C=64, H=56, W=56, O=64, k=3, p=1),
    dict(N=1, C=64, H=56, W=56, O=256, k=1, bias=False),
    dict(N=1, C=128, H=56, W=56, O=128, k=3, s=2, p=1),
    dict(N=1, C=256, H=14, W=14, O=1024, k=1),
    dict(N=1, C=3, H=224, W=224, O=64, k=7, s=2, p=3),
]


@pytest.mark.parametrize("out", ["bf16", "fp32"])
@pytest.mark.parametrize("shape", RESNET_LAYERS, ids=lambda s: f"{s['C']}x{s['H']}-{s['O']}k{s['k']}")
def test_int8_conv_cost_model_within_15_percent(shape, out):
    """The chosen plan's predicted cycles (int8 MAC rate; the epilogue's widening, scaling and
    bias passes, and the stores, which may set the pace of a 1x1 conv) track the simulation,
    for the bf16 result the compiler makes and for an fp32 one."""
    call = quantized_conv(**shape, out=out)
    tmpl = kernel_for("conv")
    plan = tmpl.choose(call, MTIA)
    b = ProgramBuilder(MTIA)
    tmpl.emit(call, plan, MTIA, b)
    cycles = simulate(b.build(), MTIA, timing_only=True).cycles
    pred = tmpl.predict(call, plan, MTIA)
    assert abs(pred - cycles) <= 0.15 * cycles, (plan, pred, cycles)
    assert cycles >= roofline_cycles(call, tmpl, MTIA)


def test_int8_conv_outruns_bf16_where_the_dpe_bounds_it():
    """A deep 3x3 conv is DPE-bound: at twice the bf16 MAC rate (mtia2i) int8 is well ahead."""
    shape = dict(N=1, C=256, H=14, W=14, O=256, k=3, p=1)
    times = {}
    for dtype in ("int8", "bf16"):
        call = quantized_conv(**shape, out="bf16")
        if dtype == "bf16":        # the same places, as a bf16 conv reads them
            call = KernelCall("conv", tuple(Placement(p.space, p.addr, p.shape, "bf16") for p in call.inputs[:3]),
                              call.output, call.attrs)
        tmpl = kernel_for("conv")
        b = ProgramBuilder(MTIA)
        tmpl.emit(call, tmpl.choose(call, MTIA), MTIA, b)
        times[dtype] = simulate(b.build(), MTIA, timing_only=True).cycles
    assert times["int8"] < 0.7 * times["bf16"], times


# --- through the compiler -------------------------------------------------------------------

class _Conv(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(6, 10, 3, stride=2, padding=1)

    def forward(self, x):
        return self.conv(x)


@pytest.mark.parametrize("activations", ["per-tensor", "per-row"])
def test_conv_takes_its_calibrated_scale(activations):
    """One conv compiled int8 equals conv(round(x / s_x) s_x, round(W / s_w) s_w) + b, with s_w per
    output channel and s_x from the example input's max-abs (with the headroom): per tensor in
    either mode (the rows of an NCHW input are not tokens). x and the result are held in bf16,
    as a bf16 conv holds them: the emulation rounds them too, and the two agree to an ulp."""
    torch.manual_seed(0)
    model = _Conv().eval()
    with torch.no_grad():
        model.conv.weight[3] *= 20           # one loud output channel
    example, fresh = (torch.randn(2, 6, 15, 13),), (torch.randn(2, 6, 15, 13) * 1.1,)
    cm = ember.compile(model, example, chip="tiny", dtype="int8", to="program", int8_activations=activations)
    out = cm.run(*fresh, device="sim").double()

    w, b = model.conv.weight.detach().double(), model.conv.bias.detach().double()
    s_x = DtypeLowering.CONV_HEADROOM * example[0].abs().max().double() / 127
    s_w = w.abs().amax(dim=(1, 2, 3), keepdim=True) / 127
    x = fresh[0].to(torch.bfloat16).double()
    xq = torch.clamp(torch.round(x / s_x), -128, 127) * s_x
    emulated = torch.nn.functional.conv2d(xq, torch.round(w / s_w) * s_w, b, 2, 1)
    torch.testing.assert_close(out, emulated.to(torch.bfloat16).double(), rtol=2 ** -7, atol=0)
    found = re.findall(r"act_scale = ([0-9.eE+-]+) : f32", cm.ir("tiled"))
    assert len(found) == 1 and float(found[0]) == pytest.approx(float(s_x), rel=1e-6)
    kernels = [s["op"] for s in cm.program.steps if s["kind"] == "kernel"]
    assert kernels == ["quantize", "conv"]


def test_a_per_row_compile_without_calibration_keeps_its_convs_bf16():
    model = _Conv().eval()
    cm = ember.compile(model, (torch.randn(1, 6, 8, 8),), chip="tiny", dtype="int8", to="program",
                       disable_passes=("calibrate",))
    (conv,) = [s for s in cm.program.steps if s["op"] == "conv"]
    assert [cm.program.tensors[v]["isa_dtype"] for v in conv["operands"][:2]] == ["bf16", "bf16"]


def _sqnr_db(out, ref) -> float:
    o = torch.utils._pytree.tree_flatten(out)[0][0].double()
    r = torch.utils._pytree.tree_flatten(ref)[0][0].double()
    return 10 * np.log10(float((r ** 2).sum() / ((o - r) ** 2).sum()))


@pytest.mark.parametrize("dtype,bar", [("int8", INT8_SQNR_DB), ("fp8", FP8_SQNR_DB)])
def test_resnet_tiny_runs_quantized_end_to_end(dtype, bar):
    """Every convolution of resnet-tiny runs on the chip in `dtype` (no bf16 convolution left),
    each after a `quantize` of its input, writing bf16 as a bf16 conv does; the logits keep
    their SQNR against fp32 eager on fresh inputs, and the cpu device (the Program's steps in
    torch) agrees with the simulator."""
    torch.manual_seed(3)
    model, example = ember.load_model("models:resnet-tiny")
    _, fresh = ember.load_model("models:resnet-tiny")
    cm = ember.compile(model, example, chip="tiny", dtype=dtype, to="program")
    tensors, constants = cm.program.tensors, cm.program.constants
    convs = [s for s in cm.program.steps if s["op"] == "conv"]
    assert len(convs) >= 5 and all(s["kind"] == "kernel" for s in convs)
    made_by = {r: s["op"] for s in cm.program.steps for r in s["results"]}
    for s in convs:
        x, w, _, dq = s["operands"][:4]
        assert tensors[x]["isa_dtype"] == tensors[w]["isa_dtype"] == dtype and made_by[x] == "quantize"
        assert constants[w].dtype == ELEMENT[dtype] and constants[dq].shape == (constants[w].shape[0],)
        assert tensors[s["results"][0]]["isa_dtype"] == "bf16"        # as a bf16 conv's
    with torch.no_grad():
        ref = model(*fresh)
    sim = cm.run(*fresh, device="sim")
    sqnr = _sqnr_db(sim, ref)
    print(f"\nresnet-tiny {dtype} on tiny: SQNR {sqnr:.1f} dB")
    assert sqnr >= bar
    torch.testing.assert_close(cm.run(*fresh, device="cpu"), sim, rtol=1e-5, atol=1e-5)


def test_a_chip_without_fp8_refuses_fp8_convs_by_field():
    model, example = ember.load_model("models:resnet-tiny")
    with pytest.raises(ChipSpecError, match=r"dpe\.macs_per_cycle\.fp8"):
        ember.compile(model, example, chip="mtia2i", dtype="fp8")
