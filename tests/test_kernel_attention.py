"""Attention kernel (ops/kernels/attention.py) end to end: torch's scaled_dot_product_attention,
causal or not, with grouped-query heads, compiled for the tiny chip and run on the simulator
against torch in fp32 and bf16; its cost model against the simulated cycles."""
from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F

import ember
from ops.kernel import KernelCall, kernel_for
from simulator import load_chip
from tests.helpers import as_module, assert_cost_model_tracks, place, rel_err

TOL = {"fp32": 1e-4, "bf16": 2e-2}
TORCH_DTYPE = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _sdpa(causal: bool, scale=None):
    return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale, enable_gqa=True)


CASES = [
    # (query shape, key/value shape, causal, scale, dtype)
    ((2, 4, 16, 8), (2, 4, 16, 8), False, None, "fp32"),
    ((2, 4, 16, 8), (2, 4, 16, 8), True, None, "fp32"),
    ((1, 8, 64, 32), (1, 2, 64, 32), True, None, "fp32"),
    ((1, 8, 64, 32), (1, 2, 64, 32), False, 0.3, "bf16"),
    ((2, 4, 16, 8), (2, 2, 16, 8), True, None, "bf16"),
    ((2, 4, 20, 8), (2, 2, 13, 8), True, None, "fp32"),     # more queries than keys, ragged blocks
    ((1, 2, 5, 16), (1, 2, 9, 16), True, None, "fp32"),     # fewer queries than keys
    ((3, 4, 16), (3, 6, 16), True, None, "fp32"),           # no batch dim
    ((2, 3, 1, 8), (2, 3, 9, 8), False, None, "fp32"),      # one query (decode)
    # key rows longer than local memory holds: key blocks with an online softmax
    ((1, 2, 32, 64), (1, 2, 256, 64), False, None, "fp32"),
    ((1, 4, 128, 64), (1, 2, 128, 64), True, None, "fp32"),
    ((1, 4, 96, 64), (1, 1, 96, 64), True, None, "bf16"),
    ((2, 2, 8, 32), (2, 2, 300, 32), False, None, "bf16"),  # a ragged last block
]


@pytest.mark.parametrize("qs,ks,causal,scale,dtype", CASES)
def test_attention_kernel_matches_torch(qs, ks, causal, scale, dtype):
    tdt = TORCH_DTYPE[dtype]
    vs = (*ks[:-1], ks[-1] + 4) if len(ks) == 4 and not causal else ks

    def make():
        return torch.randn(*qs).to(tdt), torch.randn(*ks).to(tdt), torch.randn(*vs).to(tdt)

    model = as_module(_sdpa(causal, scale))
    cm = ember.compile(model, make(), chip="tiny", dtype=dtype, to="program")
    inputs = make()
    out = cm.run(*inputs, device="sim")
    assert rel_err(out, model(*inputs)) <= TOL[dtype]
    kernels = [s for s in cm.last_run.steps if s.kind == "kernel" and s.op == "attention"]
    assert kernels, f"attention did not run as a kernel: {[(s.kind, s.op) for s in cm.last_run.steps]}"
    assert not [s for s in cm.last_run.steps if s.kind == "host" and s.op == "attention"]
    for s in kernels:
        assert s.cycles >= s.roofline_cycles


def test_constant_mask_runs_as_a_kernel():
    """A constant mask that is not the causal pattern (ops/kernels/attention_blocked.py)."""
    def fn(q, k, v):
        keep = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).tril(diagonal=2)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=keep)

    model = as_module(fn)
    args = tuple(torch.randn(1, 2, 8, 8) for _ in range(3))
    cm = ember.compile(model, args, chip="tiny", dtype="fp32", to="program")
    assert rel_err(cm.run(*args, device="sim"), model(*args)) <= 1e-4
    assert [s for s in cm.last_run.steps if s.kind == "kernel" and s.op == "attention"]


def _call(qs, ks, dtype, causal, space):
    *inputs, out = place([(s, dtype) for s in (qs, ks, ks, qs)], space, gap=0)
    return KernelCall("attention", tuple(inputs), out, {"causal": causal, "scale": 0.2})


@pytest.mark.parametrize("qs,ks,dtype,causal,space", [
    ((1, 8, 64, 32), (1, 2, 64, 32), "fp32", False, "sram"),
    ((1, 8, 64, 32), (1, 2, 64, 32), "fp32", True, "dram"),
    ((2, 4, 128, 32), (2, 4, 128, 32), "bf16", True, "sram"),
    ((1, 2, 64, 64), (1, 2, 256, 64), "fp32", False, "dram"),      # key blocks
    ((2, 4, 128, 64), (2, 4, 128, 64), "bf16", True, "sram"),
])
def test_cost_model_tracks_the_simulator(qs, ks, dtype, causal, space):
    """Every plan's predicted cycles within 25% of the simulated ones, and the chosen plan no
    more than 10% slower than the best."""
    assert_cost_model_tracks(_call(qs, ks, dtype, causal, space), load_chip("tiny"))


def test_long_key_rows_use_key_blocks():
    chip = load_chip("tiny")
    template = kernel_for("attention")
    plans = list(template.plans(_call((1, 2, 64, 64), (1, 2, 256, 64), "fp32", False, "sram"), chip))
    assert plans and all(p.ks for p in plans)
    # rows that fit are not cut into key blocks (four query heads stacked per item may not fit)
    fits = _call((1, 8, 64, 32), (1, 2, 64, 32), "fp32", False, "sram")
    assert not any(p.ks for p in template.plans(fits, chip) if p.group == 1)


def test_flops_halve_for_causal():
    template = kernel_for("attention")
    full = _call((2, 4, 16, 8), (2, 4, 16, 8), "fp32", False, "sram")
    causal = _call((2, 4, 16, 8), (2, 4, 16, 8), "fp32", True, "sram")
    assert template.flops(full) == 4 * 2 * 4 * 16 * 16 * 8
    assert template.flops(causal) == template.flops(full) // 2


@pytest.mark.parametrize("qs,ks,causal,dtype", [
    ((1, 8, 64, 32), (1, 2, 64, 32), True, "fp32"),      # whole key rows, four heads per item
    ((2, 4, 16, 8), (2, 2, 16, 8), False, "bf16"),
    ((1, 4, 128, 64), (1, 2, 128, 64), True, "fp32"),     # key blocks
    ((1, 4, 96, 64), (1, 1, 96, 64), True, "bf16"),
    ((2, 8, 1, 16), (2, 2, 40, 16), False, "fp32"),       # one query per head (decode)
])
def test_grouped_query_heads_share_key_value_loads(qs, ks, causal, dtype, monkeypatch):
    """Plans that stack the query heads of one key/value head into one item give torch's numbers."""
    template = kernel_for("attention")
    choose = type(template).choose

    def grouped(self, call, chip):
        plans = [p for p in self.plans(call, chip) if p.group > 1]
        assert plans, "no grouped plan"
        return min(plans, key=lambda p: self.predict(call, p, chip))

    monkeypatch.setattr(type(template), "choose", grouped)
    tdt = TORCH_DTYPE[dtype]

    def make():
        return torch.randn(*qs).to(tdt), torch.randn(*ks).to(tdt), torch.randn(*ks).to(tdt)

    model = as_module(_sdpa(causal))
    cm = ember.compile(model, make(), chip="tiny", dtype=dtype, to="program")
    assert any("group=" in s.get("plan", "") and "group=1)" not in s["plan"]
               for s in cm.program.steps if s["op"] == "attention")
    inputs = make()
    assert rel_err(cm.run(*inputs, device="sim"), model(*inputs)) <= TOL[dtype]
    monkeypatch.setattr(type(template), "choose", choose)
