"""Attention with a mask operand on the chip (ops/kernels/attention_blocked.py): torch's
scaled_dot_product_attention with an i1 or additive mask passed as a model input, compiled for
the tiny chip and run on the simulator against eager torch on fresh random inputs (masks with
a row that may attend to nothing, whose output is zeros); the attention must be a kernel, and
its cost model must track the simulator."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ember
from benchmarks.kernel_bench import NP
from ops.attention import attention
from ops.kernel import KernelCall, kernel_for
from simulator import ProgramBuilder, load_chip, simulate
from tests.helpers import as_module, assert_cost_model_tracks, place, rel_err

TOL = {"fp32": 1e-4, "bf16": 2e-2}
TORCH_DTYPE = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _sdpa(q, k, v, mask):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)


def _mask(shape, kind: str, dtype: torch.dtype, dead: tuple | None) -> torch.Tensor:
    """A random mask: i1 (about 70% kept), or additive (normal, with -inf where an i1 would be
    false); `dead` indexes a row (all leading indices of a query row) that keeps no key."""
    keep = torch.rand(shape) < 0.7
    if dead is not None:
        keep[dead] = False
    if kind == "bool":
        return keep
    return torch.randn(shape).masked_fill(~keep, float("-inf")).to(dtype)


CASES = [
    # (query, key/value, mask shape, mask kind, dtype, fully masked row)
    ((2, 4, 1, 16), (2, 4, 40, 16), (2, 1, 1, 40), "bool", "fp32", (1, 0, 0)),     # decode
    ((1, 8, 1, 16), (1, 2, 40, 16), (1, 1, 1, 40), "bool", "bf16", None),          # decode, grouped heads
    ((1, 8, 1, 16), (1, 2, 40, 16), (1, 1, 40), "bool", "fp32", None),             # 3-D mask
    ((2, 2, 12, 16), (2, 2, 20, 16), (2, 1, 12, 20), "bool", "fp32", (0, 0, 5)),   # padded prefill
    ((2, 2, 12, 16), (2, 2, 20, 16), (2, 1, 1, 20), "bool", "bf16", None),         # one row for all queries
    ((1, 2, 8, 16), (1, 2, 8, 16), (1, 2, 8, 8), "bool", "bf16", (0, 1, 3)),       # full mask
    ((1, 2, 8, 16), (1, 2, 8, 16), (8, 1), "bool", "fp32", (2,)),                  # per query row
    ((1, 2, 6, 16), (1, 2, 24, 16), (1, 1, 6, 24), "float", "fp32", (0, 0, 1)),    # additive
    ((1, 4, 6, 16), (1, 2, 24, 16), (6, 24), "float", "bf16", None),
    ((2, 2, 1, 32), (2, 2, 300, 32), (2, 1, 1, 300), "bool", "bf16", (0, 0, 0)),   # key blocks
]


@pytest.mark.parametrize("qs,ks,ms,kind,dtype,dead", CASES)
def test_masked_attention_kernel_matches_torch(qs, ks, ms, kind, dtype, dead):
    tdt = TORCH_DTYPE[dtype]

    def make():
        return (torch.randn(*qs).to(tdt), torch.randn(*ks).to(tdt), torch.randn(*ks).to(tdt),
                _mask(ms, kind, tdt, dead))

    model = as_module(_sdpa)
    cm = ember.compile(model, make(), chip="tiny", dtype=dtype, to="program")
    for _ in range(2):
        inputs = make()
        out = cm.run(*inputs, device="sim")
        ref = model(*inputs)
        assert rel_err(out, ref) <= TOL[dtype]
        if dead is not None:       # the row that attends to nothing gives zeros, not NaN
            row = out[dead] if len(ms) == len(qs) else out[(0,) * (len(qs) - len(ms)) + dead]
            assert torch.equal(row, torch.zeros_like(row))
    kernels = [s for s in cm.last_run.steps if s.kind == "kernel" and s.op == "attention"]
    assert kernels, f"attention did not run as a kernel: {[(s.kind, s.op) for s in cm.last_run.steps]}"
    for s in kernels:
        assert s.cycles >= s.roofline_cycles
        assert abs(s.predicted_cycles - s.cycles) <= 0.25 * s.cycles, (s.predicted_cycles, s.cycles)


def _call(qs, ks, ms, mask_dtype, dtype, causal, space="dram"):
    *inputs, out = place([(qs, dtype), (ks, dtype), (ks, dtype), (ms, mask_dtype), (qs, dtype)], space)
    return KernelCall("attention", tuple(inputs), out, {"causal": causal, "scale": 0.25})


def test_causal_and_mask_together_match_the_reference():
    """The op allows both (torch's sdpa does not): keys j > i and the mask's false ones are
    masked, and a row left with no key gives zeros."""
    chip = load_chip("tiny")
    qs, ks, ms = (1, 2, 8, 16), (1, 2, 8, 16), (1, 1, 8, 8)
    call = _call(qs, ks, ms, "int32", "fp32", True)
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal(s).astype(np.float32) for s in (qs, ks, ks))
    keep = rng.random(ms) < 0.7
    keep[0, 0, 0, 0] = False                      # row 0 sees only key 0: nothing is left
    template = kernel_for("attention")
    plan = template.choose(call, chip)
    b = ProgramBuilder(chip)
    template.emit(call, plan, chip, b)
    o = call.output
    poison = np.full(o.shape, np.nan, np.float32)
    init = {(p.space, p.addr): x for p, x in zip((*call.inputs, o), (q, k, v, keep.astype(np.int32), poison))}
    res = simulate(b.build(), chip, memory_init=init)
    got = res.read(o.space, o.addr, o.shape, NP[o.dtype]).astype(np.float64)
    want = attention.reference(q, k, v, keep, causal=True, scale=0.25)
    assert np.all(got[:, :, 0] == 0)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("qs,ks,ms,mdt,dtype", [
    ((2, 4, 1, 16), (2, 4, 96, 16), (2, 1, 1, 96), "int32", "fp32"),
    ((1, 8, 1, 32), (1, 2, 128, 32), (1, 1, 1, 128), "int32", "bf16"),
    ((1, 2, 16, 32), (1, 2, 64, 32), (1, 1, 16, 64), "fp32", "fp32"),
    ((1, 2, 16, 32), (1, 2, 64, 32), (1, 1, 1, 64), "int32", "bf16"),
])
def test_masked_cost_model_tracks_the_simulator(qs, ks, ms, mdt, dtype):
    assert_cost_model_tracks(_call(qs, ks, ms, mdt, dtype, False), load_chip("tiny"))


def test_integer_masks_other_than_i1_stay_on_the_host():
    template = kernel_for("attention")
    from ops.registry import TensorSpec
    q, k = TensorSpec((1, 2, 4, 8), "f32"), TensorSpec((1, 2, 6, 8), "f32")
    assert template.accepts("attention", [q, k, k, TensorSpec((1, 1, 4, 6), "i1")], q, {})
    assert not template.accepts("attention", [q, k, k, TensorSpec((1, 1, 4, 6), "i32")], q, {})
