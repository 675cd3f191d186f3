"""A chain of two-input concats (torch.cat of N tensors) runs as one copy of its inputs."""
from __future__ import annotations

import pytest
import torch

import ember
from tests.helpers import as_module, rel_err


def _stack(x, y):
    parts = [(x * (i + 1) + y).unsqueeze(0) for i in range(5)]
    return torch.cat(parts, dim=0), torch.cat((x, y, x + y), dim=-1)


@pytest.mark.parametrize("dtype,tol", [("fp32", 1e-4), ("bf16", 2e-2)])
def test_concat_chain_is_one_copy(dtype, tol):
    model = as_module(_stack)
    inputs = (torch.randn(3, 8, 16), torch.randn(3, 8, 16))
    cm = ember.compile(model, inputs, chip="tiny", dtype=dtype, to="program")
    steps = [s for s in cm.program.steps if s["op"] == "concat"]
    assert sum(bool(s.get("elided")) for s in steps) == 3 + 1
    assert sorted(len(s["reads"]) for s in steps if "reads" in s) == [3, 5]
    fresh = (torch.randn(3, 8, 16), torch.randn(3, 8, 16))
    out = cm.run(*fresh, device="sim")
    assert rel_err(out, model(*fresh)) <= tol
    elided = [r for r in cm.last_run.steps if r.op == "concat" and r.cycles == 0]
    assert len(elided) == 4
