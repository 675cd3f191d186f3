"""Attention in column sweeps (ops/kernels/attention_sweep.py): the PEs of a grid column share
each K/V block, which one DMA multicasts down the column. Compiled for the tiny chip with the
sweep plans forced, run on the simulator against torch (causal or not, grouped-query heads,
keys walked backwards in every other column); the cost model against the simulator; and the
schedule's claim, K and V read from memory once per sweep."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import ember
from ops.kernel import KernelCall, kernel_for
from ops.kernels import attention_sweep as sweep
from ops.kernels.attention_work import dims_of
from simulator import ProgramBuilder, load_chip, simulate
from simulator.isa import Op, Space
from tests.helpers import as_module, place, rel_err

TOL = {"fp32": 1e-4, "bf16": 2e-2}
TORCH_DTYPE = {"fp32": torch.float32, "bf16": torch.bfloat16}


@pytest.fixture
def sweeps_only(monkeypatch):
    """Choose among the sweep plans only (optionally only staggered or unstaggered ones)."""
    template = kernel_for("attention")
    want = {}

    def choose(self, call, chip):
        plans = [p for p in self.plans(call, chip) if isinstance(p, sweep.SweepPlan)
                 and want.get("stagger", p.stagger) == p.stagger]
        assert plans, "no sweep plan"
        return min(plans, key=lambda p: self.predict(call, p, chip))

    monkeypatch.setattr(type(template), "choose", choose)
    return want


CASES = [
    # (query, key/value, causal, dtype, staggered)
    ((1, 2, 64, 64), (1, 2, 256, 64), False, "fp32", False),
    ((2, 48, 32), (2, 256, 32), False, "bf16", False),         # no batch dim
    ((1, 4, 96, 64), (1, 1, 96, 64), True, "bf16", False),     # grouped heads, one key/value head
    ((1, 4, 96, 64), (1, 1, 96, 64), True, "bf16", True),
    ((2, 2, 40, 32), (2, 2, 300, 32), True, "fp32", True),     # more keys than queries, ragged blocks
    ((1, 1, 260, 32), (1, 1, 240, 32), True, "fp32", False),   # more queries than keys
]


@pytest.mark.parametrize("qs,ks,causal,dtype,stagger", CASES)
def test_sweep_matches_torch(qs, ks, causal, dtype, stagger, sweeps_only):
    sweeps_only["stagger"] = stagger
    tdt = TORCH_DTYPE[dtype]

    vs = (*ks[:-1], ks[-1] - 16) if not causal else ks        # a value head of its own size

    def make():
        return tuple(torch.randn(*s).to(tdt) for s in (qs, ks, vs))

    model = as_module(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True))
    cm = ember.compile(model, make(), chip="tiny", dtype=dtype, to="program")
    assert any(s["op"] == "attention" and s.get("plan", "").startswith("SweepPlan") for s in cm.program.steps)
    inputs = make()
    assert rel_err(cm.run(*inputs, device="sim"), model(*inputs)) <= TOL[dtype]
    kernels = [s for s in cm.last_run.steps if s.kind == "kernel" and s.op == "attention"]
    assert kernels and all(s.cycles >= s.roofline_cycles for s in kernels)


def _call(qs, ks, dtype, causal, space="dram"):
    *inputs, out = place([(qs, dtype), (ks, dtype), (ks, dtype), (qs, dtype)], space)
    return KernelCall("attention", (*inputs, None), out, {"causal": causal, "scale": 0.2})


@pytest.mark.parametrize("qs,ks,dtype,causal", [
    ((1, 2, 64, 64), (1, 2, 256, 64), "fp32", False),
    ((2, 2, 40, 32), (2, 2, 300, 32), "bf16", True),
    ((1, 4, 96, 64), (1, 1, 96, 64), "bf16", True),
])
def test_sweep_cost_model_tracks_the_simulator(qs, ks, dtype, causal):
    call = _call(qs, ks, dtype, causal)
    chip = load_chip("tiny")
    template = kernel_for("attention")
    for plan in [p for p in template.plans(call, chip) if isinstance(p, sweep.SweepPlan)]:
        b = ProgramBuilder(chip)
        template.emit(call, plan, chip, b)
        simulated = simulate(b.build(), chip, timing_only=True).cycles
        assert abs(template.predict(call, plan, chip) - simulated) <= 0.25 * simulated, plan


def test_keys_and_values_cross_the_memory_once_per_sweep():
    """Each K/V block is one multicast DMA down a column: with every query row of a head in
    one sweep, K and V are read from DRAM exactly once (the key-block schedule reads them once
    per query block)."""
    chip = load_chip("tiny")
    call = _call((1, 2, 64, 64), (1, 2, 256, 64), "fp32", False)
    template = kernel_for("attention")
    plan = max((p for p in template.plans(call, chip) if isinstance(p, sweep.SweepPlan)), key=lambda p: p.rows)
    assert len(sweep._sweeps(dims_of(call), plan, False, chip.pe_grid.rows)) == 2     # one per head
    b = ProgramBuilder(chip)
    template.emit(call, plan, chip, b)
    k, v = call.inputs[1], call.inputs[2]
    reads = [c for c in b.build().commands if c["op"] == Op.DMA and c["src_space"] == Space.DRAM
             and k.addr <= c["a"][0] < v.addr + v.nbytes]
    assert sum(int(c["a"][2]) * int(c["a"][3]) for c in reads) == k.nbytes + v.nbytes
    assert all((int(c["flags"]) >> 1) & 3 == 2 for c in reads)        # multicast down the column


@pytest.mark.slow
def test_long_prefill_on_mtia2i_chooses_a_sweep():
    """Causal 2048-position prefill with K/V in DRAM (a served model's caches): K and V cross
    DRAM once per sweep, well under the key-block schedule's reloads."""
    chip = load_chip("mtia2i")
    call = _call((1, 32, 2048, 128), (1, 8, 2048, 128), "bf16", True)
    assert isinstance(kernel_for("attention").choose(call, chip), sweep.SweepPlan)
