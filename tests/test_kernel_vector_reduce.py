"""Reductions over leading or middle dims on the vector core (ops/kernels/vector_reduce.py):
compiled models on the sim against eager PyTorch on fresh random inputs, with no step on the
host. max and min are exact (NaN included); sums and means add in another order than PyTorch's
CPU kernels, so they are compared within fp32 tolerance (a few units in the last place)."""
from __future__ import annotations

import pytest
import torch

import ember
from tests.helpers import as_module


def _with_nan(*shape):
    x = torch.randn(shape)
    return torch.where(torch.rand(shape) < 0.1, float("nan"), x)


CASES = {
    # a mixture-of-experts layer's sum over its k experts: [tokens, k, hidden] -> [tokens, hidden]
    "moe-combine": (lambda x: x.sum(1), lambda: (torch.randn(16, 2, 32),)),
    "keepdim": (lambda x: x.sum(1, keepdim=True), lambda: (torch.randn(2, 32, 3),)),
    # a weight norm over every dim but the last
    "weight-norm": (lambda x: x.pow(2).sum((0, 1), keepdim=True), lambda: (torch.randn(32, 8, 16),)),
    "mean-max-min": (lambda x: (x.mean(1), x.amax(1), x.amin((0, 1))), lambda: (torch.randn(3, 40, 21),)),
    "nan": (lambda x: (x.amax(0), x.amin(1), x.sum(0)), lambda: (_with_nan(7, 9, 5),)),
    "bf16": (lambda x: x.sum(1), lambda: (torch.randn(4, 30, 20).bfloat16(),)),
}


@pytest.fixture(scope="module")
def compiled():
    torch.manual_seed(0)
    return {name: ember.compile(as_module(fn), make(), chip="tiny", dtype="fp32") for name, (fn, make) in CASES.items()}


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_reduction_over_middle_dims_runs_on_the_vector_core(compiled, name):
    fn, make = CASES[name]
    cm = compiled[name]
    for seed in range(2):
        torch.manual_seed(40 + seed)
        args = make()
        out, ref = cm.run(*args, device="sim"), fn(*args)
        for o, r in zip(out if isinstance(out, tuple) else (out,), ref if isinstance(ref, tuple) else (ref,), strict=True):
            assert o.dtype == r.dtype and o.shape == r.shape
            tol = torch.finfo(r.dtype).eps * 8
            torch.testing.assert_close(o, r, rtol=tol, atol=tol * r.abs().nan_to_num().max().item(), equal_nan=True)
    assert not [s.op for s in cm.last_run.steps if s.kind == "host"], "a step ran on the host"
    assert cm.last_run.stats["engine_utilization"]["vec"] > 0


def test_max_and_min_are_exact(compiled):
    torch.manual_seed(50)
    fn, make = CASES["mean-max-min"]
    (x,) = make()
    _, hi, lo = compiled["mean-max-min"].run(x, device="sim")
    assert torch.equal(hi, x.amax(1)) and torch.equal(lo, x.amin((0, 1)))
