"""Rotary embeddings as one kernel: the fuse-rotary pass (compiler/passes/rotary.py) and the
rotary kernel (ops/kernels/rotary.py), against torch on fresh inputs."""
from __future__ import annotations

import collections

import ml_dtypes
import numpy as np
import pytest
import torch

import ember
from ops.kernel import KernelCall, kernel_for
from ops.kernels.rotary import rotary, sign_row
from ops.registry import TensorSpec
from simulator import ProgramBuilder, load_chip, simulate
from tests.helpers import as_module, assert_cost_model_tracks, place, rel_err

NP = {"fp32": np.float32, "bf16": ml_dtypes.bfloat16}


def _rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _llama(x, cos, sin):
    return x * cos + _rotate_half(x) * sin


def _swapped(x, cos, sin):          # the same, operands in the other orders
    return sin * _rotate_half(x) + cos * x


def _inputs(heads=4, seq=6, dim=32):
    return torch.randn(2, heads, seq, dim), torch.randn(1, 1, seq, dim), torch.randn(1, 1, seq, dim)


def _kernels(cm):
    return collections.Counter(s["op"] for s in cm.program.steps if s["kind"] == "kernel")


@pytest.mark.parametrize("fn", [_llama, _swapped])
@pytest.mark.parametrize("chip,dtype,tol", [("tiny", "fp32", 1e-6), ("mtia2i", "bf16", 2e-2)])
def test_rotary_is_one_kernel(fn, chip, dtype, tol):
    model = as_module(fn)
    cm = ember.compile(model, _inputs(), chip=chip, dtype=dtype, to="program")
    assert _kernels(cm) == {"rotary": 1}
    assert 'ember.kernel = "rotary"' in cm.ir("tiled")       # on the op it stands for (the add)
    fresh = _inputs()
    out = cm.run(*fresh, device="sim")
    assert rel_err(out, model(*fresh)) <= tol
    if dtype == "fp32":        # the torch devices compute the same numbers
        assert torch.equal(cm.run(*fresh, device="cpu"), out)


def test_not_fused_when_a_piece_is_read_elsewhere():
    """The rotated half is also an output: the ops stay as they are, and still match eager."""
    def fn(x, cos, sin):
        rot = _rotate_half(x)
        return x * cos + rot * sin, rot
    model = as_module(fn)
    cm = ember.compile(model, _inputs(), chip="tiny", dtype="fp32", to="program")
    assert "rotary" not in _kernels(cm) and _kernels(cm)["concat"] == 1
    fresh = _inputs()
    assert rel_err(cm.run(*fresh, device="sim"), model(*fresh)) <= 1e-6


def test_fusion_off_keeps_the_pieces():
    cm = ember.compile(as_module(_llama), _inputs(), chip="tiny", dtype="fp32", to="program", fuse=False)
    assert "rotary" not in _kernels(cm) and _kernels(cm)["concat"] == 1


def test_reference_model_uses_it():
    model, example = ember.load_model("models:multimodal-tiny")
    cm = ember.compile(model, example, chip="tiny", dtype="bf16", to="program")
    layers = model.cfg.n_layers
    assert _kernels(cm)["rotary"] == 2 * layers        # queries and keys of every layer
    _, fresh = ember.load_model("models:multimodal-tiny")
    with torch.no_grad():
        ref = model(*fresh)
    assert rel_err(cm.run(*fresh, device="sim"), ref) <= 2e-2


@pytest.mark.parametrize("chip", ["tiny", "mtia2i"])
@pytest.mark.parametrize("shape,table,dtype", [((2, 4, 6, 32), (1, 1, 6, 32), "fp32"),
                                               ((1, 8, 176, 64), (1, 1, 176, 64), "fp32"),
                                               ((3, 2, 7, 16), (3, 2, 7, 16), "fp32"),
                                               ((2, 3, 40, 64), (1, 1, 40, 64), "bf16")])
def test_every_plan_is_exact(chip, shape, table, dtype):
    """Each tile size the search proposes (tables repeating every few tiles, several tables per
    tile, full-shaped tables): bit for bit what `rotary` computes in torch. The cost model ranks
    the plans: the chosen one within 10% of the fastest, every prediction within 50% (small
    tiles' DMAs wait less behind the other PEs than the streaming estimate says)."""
    chip = load_chip(chip)
    d = shape[-1]
    pl = place([(shape, dtype), (table, "fp32"), (table, "fp32"), ((d,), "fp32"), (shape, dtype)], "sram")
    call = KernelCall("rotary", tuple(pl[:4]), pl[4])
    rng = np.random.default_rng(d)
    x = rng.standard_normal(shape).astype(NP[dtype])
    cos, sin = (rng.standard_normal(table).astype(np.float32) for _ in range(2))
    sign = np.asarray(sign_row(d), np.float32)
    want = rotary(torch.from_numpy(x.astype(np.float32)), torch.from_numpy(cos), torch.from_numpy(sin))
    want = want.to(torch.bfloat16 if dtype == "bf16" else torch.float32).float().numpy()
    template = kernel_for("rotary")
    assert template.accepts("rotary", _specs(pl[:4]), _specs(pl[4:])[0], {})
    plans = list(template.plans(call, chip))
    assert plans
    for plan in plans:
        builder = ProgramBuilder(chip)
        template.emit(call, plan, chip, builder)
        init = {("sram", p.addr): a for p, a in zip(pl, (x, cos, sin, sign))}
        res = simulate(builder.build(), chip, memory_init=init)
        got = res.read("sram", pl[4].addr, shape, NP[dtype]).astype(np.float32)
        np.testing.assert_array_equal(got, want, err_msg=str(plan))
    assert_cost_model_tracks(call, chip, rel=0.5, choice=1.1)


def _specs(placements):
    return [TensorSpec(p.shape, "f32" if p.dtype == "fp32" else p.dtype) for p in placements]


def test_refuses_what_it_cannot_compute():
    t = kernel_for("rotary")
    x = TensorSpec((2, 4, 6, 32), "f32")
    per_head = TensorSpec((1, 4, 1, 32), "f32")         # tables broadcast over the sequence
    assert not t.accepts("rotary", [x, per_head, per_head, TensorSpec((32,), "f32")], x, {})
    odd = TensorSpec((2, 5), "f32")
    assert not t.accepts("rotary", [odd, odd, odd, TensorSpec((5,), "f32")], odd, {})
