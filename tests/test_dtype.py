"""dtype lowering: bf16 and int8 compiles against PyTorch eager fp32, and the int8 plan itself.

Every comparison runs on fresh random inputs (a second `load_model` gives the same seeded weights
and new inputs), never on the inputs the compile calibrated on. A one-layer int8 linear is also
checked against a numpy emulation of the same quantization, so a wrong scale anywhere (weights,
activation, dequantization) fails even where the error against fp32 would still look plausible.
"""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import ember
from compiler.graph_ops import graph_ops
from compiler.passes.calibrate import Calibrate
from compiler.passes.dtype import activation_scale, quantize_weight
from ops.registry import to_numpy
from tests.helpers import rel_err

#: bf16 holds 8 significant bits (unit roundoff 2^-9 ~ 2e-3); only contraction operands are
#: rounded, so a few layers stay well inside this.
BF16_RTOL = 2e-2
#: int8 per-row activations and per-channel weights give ~0.5% per GEMM on Gaussian-like
#: inputs; these models chain ~8 GEMMs (measured 1.4-1.6e-2 on multimodal-tiny, 9e-3 decode).
INT8_RTOL = 3e-2
#: argmax agreement with eager over the positions of one batch (measured 0.96-1.0; see below)
ARGMAX_MIN = 0.9


def _fresh(spec: str):
    torch.manual_seed(20261129)    # the inputs are drawn from the global RNG: one fixed draw per test
    model, example = ember.load_model(f"models:{spec}")
    _, fresh = ember.load_model(f"models:{spec}")
    assert any(not torch.equal(a, b) for a, b in zip(example, fresh)), "load_model should draw fresh inputs"
    with torch.no_grad():    # (on clones: a decode step updates its cache inputs in place)
        ref = model(*(x.clone() for x in fresh))
    return model, example, fresh, ref


def _logits(out):
    return torch.utils._pytree.tree_flatten(out)[0][0].float()


def _argmax_agreement(out, ref) -> tuple[float, float]:
    """Share of positions whose argmax agrees; and the same over positions whose fp32 top-2 gap
    exceeds 4x the rms error of the logits (near-ties of a random-weight model excluded)."""
    o, r = _logits(out), _logits(ref)
    same = o.argmax(-1) == r.argmax(-1)
    top = r.topk(2, -1).values
    clear = (top[..., 0] - top[..., 1]) > 4 * (o - r).pow(2).mean().sqrt()
    return same.float().mean().item(), same[clear].float().mean().item() if clear.any() else 1.0


@pytest.mark.parametrize("spec,chip", [("multimodal-tiny", "tiny"), ("multimodal-tiny", "mtia2i"),
                                       ("multimodal-tiny-decode", "tiny"), ("resnet-tiny", "tiny")])
def test_bf16_matches_eager(spec, chip):
    model, example, fresh, ref = _fresh(spec)
    cm = ember.compile(model, example, chip=chip, dtype="bf16", to="program", allow_unsupported=True)
    out = cm.run(*fresh, device="sim")
    err = rel_err(out, ref)
    print(f"\n{spec} on {chip}, bf16: rel err {err:.2e}")
    assert 0 < err <= BF16_RTOL
    # the policy: GEMM operands in bf16, their results (the residual stream, the logits) in fp32
    tensors = cm.program.tensors
    gemms = [s for s in cm.program.steps if s["kind"] == "kernel" and s["op"] in ("linear", "conv")]
    assert gemms and all(tensors[s["operands"][1]]["isa_dtype"] == "bf16" for s in gemms)
    stats = [s for s in cm.program.steps if s["kind"] == "kernel" and s["op"] in ("norm", "softmax")]
    assert all(tensors[s["operands"][0]]["isa_dtype"] == "fp32" for s in stats)


@pytest.mark.parametrize("spec", ["multimodal-tiny", "multimodal-tiny-decode"])
def test_int8_matches_eager(spec):
    model, example, fresh, ref = _fresh(spec)
    # quantize_head: every linear, the LM head too, is checked to be an int8 GEMM below
    cm = ember.compile(model, example, chip="tiny", dtype="int8", to="program", allow_unsupported=True,
                       quantize_head=True)
    out = cm.run(*(x.clone() for x in fresh), device="sim")
    err = rel_err(out, ref)
    agree, agree_clear = _argmax_agreement(out, ref)
    print(f"\n{spec} on tiny, int8: rel err {err:.2e}, argmax agreement {agree:.3f} "
          f"({agree_clear:.3f} where the top-2 gap exceeds 4x the error)")
    assert 0 < err <= INT8_RTOL
    # these random-weight models have near-tied logits (top-2 gaps of 1e-3 of the logits' std at
    # some positions): bf16 alone flips one of 56 now and then, so agreement is not a tight test
    assert agree >= ARGMAX_MIN and agree_clear >= ARGMAX_MIN
    # the plan is in the IR and in the Program: int8 GEMMs with their scales, int8 weights
    assert "ember.quant" in cm.ir("tiled") and "weight_scale = dense<" in cm.ir("tiled")
    gemms = [s for s in cm.program.steps if s["kind"] == "kernel" and s["op"] == "linear"]
    assert gemms
    for s in gemms:
        x, w, _, dq, rows = s["operands"][:5]      # a fused epilogue adds operands after these
        assert cm.program.tensors[x]["isa_dtype"] == "int8" and cm.program.constants[w].dtype == np.int8
        assert cm.program.constants[dq].dtype == np.float32 and cm.program.constants[dq].shape == \
            (cm.program.constants[w].shape[0],)
        assert cm.program.tensors[rows]["shape"][:-1] == cm.program.tensors[x]["shape"][:-1]
    # per-tensor scales, calibrated on the example: rows of different magnitude (image, audio
    # and text tokens) share one scale, and the error is about twice as large. A decode step
    # quantizes two rows per GEMM (one token per sequence), so one scale costs less there: 1.25x
    # (clipping, as its two example tokens do not span the fresh ones' range)
    static = ember.compile(model, example, chip="tiny", dtype="int8", to="program", allow_unsupported=True,
                           int8_activations="per-tensor", quantize_head=True)
    static_err = rel_err(static.run(*(x.clone() for x in fresh), device="sim"), ref)
    print(f"per-tensor: rel err {static_err:.2e}")
    assert static_err > (1.1 if spec.endswith("-decode") else 1.5) * err


class _Linear(torch.nn.Module):
    def __init__(self, k: int, n: int):
        super().__init__()
        self.fc = torch.nn.Linear(k, n)

    def forward(self, x):
        return self.fc(x)


class _MatmulWeight(torch.nn.Module):
    """x @ B with a constant B[K, N]: a matmul whose output channels are B's columns."""

    def __init__(self, k: int, n: int):
        super().__init__()
        self.fc = torch.nn.Linear(k, n)      # holds the numbers (B = W^T); unused in forward
        self.b = torch.nn.Parameter(torch.empty(k, n))

    def forward(self, x):
        return x @ self.b


@pytest.mark.parametrize("kind,activations", [("linear", "per-tensor"), ("matmul", "per-tensor"),
                                               ("linear", "per-row"), ("matmul", "per-row")])
def test_int8_gemm_is_the_quantized_product(kind, activations):
    """One GEMM in int8 equals (round(x / s_x) s_x) (round(W / s_w) s_w)^T (+ b), with s_w per
    output channel and s_x from the calibration input's max-abs (per tensor) or from each row's
    own max-abs at run time (per row)."""
    torch.manual_seed(0)
    model = (_Linear if kind == "linear" else _MatmulWeight)(96, 40).eval()
    with torch.no_grad():
        model.fc.weight[3] *= 20          # one loud output channel: a per-tensor weight scale would hurt
        if kind == "matmul":
            model.b.copy_(model.fc.weight.T)
    rows = torch.logspace(-2, 1, 24)[:, None]           # rows 1000x apart in magnitude
    example = (torch.randn(3, 24, 96) * rows,)
    fresh = (torch.randn(3, 24, 96) * rows,)
    cm = ember.compile(model, example, chip="tiny", dtype="int8", to="program", int8_activations=activations,
                       quantize_head=True)
    out = cm.run(*fresh, device="sim").double().numpy()

    w = model.fc.weight.detach().double().numpy()
    b = model.fc.bias.detach().double().numpy() if kind == "linear" else 0.0
    x = fresh[0].double().numpy()
    if activations == "per-tensor":
        s_x = np.abs(example[0].numpy()).max() / 127
    else:
        s_x = np.abs(x).max(axis=-1, keepdims=True) / 127
    s_w = np.abs(w).max(axis=1, keepdims=True) / 127
    xq = np.clip(np.rint(x / s_x), -128, 127)
    emulated = (xq * s_x) @ (np.clip(np.rint(w / s_w), -127, 127) * s_w).T + b
    exact = x @ w.T + b
    assert np.linalg.norm(out - emulated) / np.linalg.norm(emulated) < 1e-5
    err = np.linalg.norm(out - exact) / np.linalg.norm(exact)
    # ~ s / sqrt(12) noise on x and W relative to their rms: 1-3% for Gaussian rows (the
    # largest rows set the scale per tensor); scaled per row, small rows lose no bits to large ones
    assert 2e-3 < err < 5e-2, err
    small = slice(0, 8)          # the smallest rows: per tensor, they keep only a few levels
    small_err = np.linalg.norm((out - exact)[:, small]) / np.linalg.norm(exact[:, small])
    assert (small_err < 3e-2) == (activations == "per-row"), small_err

    (gemm,) = [s for s in cm.program.steps if s["op"] == kind]
    if activations == "per-tensor":
        found = re.findall(r"act_scale = ([0-9.eE+-]+) : f32", cm.ir("tiled"))
        assert len(found) == 1 and float(found[0]) == pytest.approx(s_x, rel=1e-6)
        np.testing.assert_allclose(cm.program.constants[gemm["operands"][3]], s_x * s_w[:, 0], rtol=1e-6)
    else:
        assert 'activations = "per-row"' in cm.ir("tiled") and "act_scale" not in cm.ir("tiled")
        np.testing.assert_allclose(cm.program.constants[gemm["operands"][3]], s_w[:, 0], rtol=1e-6)
        assert cm.program.tensors[gemm["operands"][4]]["shape"] == [3, 24, 1]
        quant, _ = [s for s in cm.program.steps if s["kind"] == "kernel"]
        assert quant["op"] == "quantize_rows" and quant["results"] == [gemm["operands"][0], gemm["operands"][4]]


def test_weight_quantization_is_per_output_channel():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((5, 7)) * np.array([1, 10, 0.1, 3, 1])[:, None]
    w[4] = 0.0
    q, s = quantize_weight(w, axis=0)
    assert q.dtype == np.int8 and s.shape == (5,)
    np.testing.assert_allclose(s[:4], np.abs(w[:4]).max(axis=1) / 127, rtol=1e-6)
    assert s[4] == 1.0 and not q[4].any()                       # an all-zero channel stays zero
    assert (np.abs(q[:4]).max(axis=1) == 127).all()
    np.testing.assert_allclose(q * s[:, None], w, atol=float(s.max()) / 2 + 1e-7)
    q1, s1 = quantize_weight(w.T, axis=1)                      # matmul weights: B[K, N]
    np.testing.assert_array_equal(q1, q.T)
    assert activation_scale(0.0) == 1.0 and activation_scale(12.7) == pytest.approx(0.1)


def test_calibration_records_each_values_max_abs():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(16, 32)
            self.b = torch.nn.Linear(32, 8)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)) * 3.0)

    torch.manual_seed(2)
    model = Net().eval()
    x = torch.randn(4, 16)
    cm = ember.compile(model, (x,), chip="tiny", dtype="fp32", to="graph")
    with cm.graph.context:
        graph = graph_ops(cm.graph.module)
    constants = {v: to_numpy(cm.graph.weights[n]) for v, n in graph.weights.items()}
    constants.update(graph.literals)
    amax = Calibrate().run(graph, constants, [x.numpy()], cm.graph.host_calls).amax
    linears = [op for op in graph.ops if op.name == "linear"]
    with torch.no_grad():
        hidden = torch.relu(model.a(x)) * 3.0
    assert amax[linears[0].operands[0]] == pytest.approx(x.abs().max().item(), rel=1e-6)
    assert amax[linears[1].operands[0]] == pytest.approx(hidden.abs().max().item(), rel=1e-5)
    assert amax[graph.outputs[0]] == pytest.approx(model(x).abs().max().item(), rel=1e-5)
