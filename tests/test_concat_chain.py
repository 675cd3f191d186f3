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


def test_concat_chain_inputs_made_in_place():
    """When the memory plan places buffers by density (activations overflow SRAM), inputs whose
    slots are contiguous are made in their slots of the result, and the chain copies nothing."""
    from tests.test_memory_plan_spill import assert_no_clobber
    model = as_module(lambda x, y: torch.cat([(x * (i + 1) + y).unsqueeze(0) for i in range(5)], dim=0))
    inputs = (torch.randn(16, 64), torch.randn(16, 64))
    chip = ember.load_chip("tiny").with_(sram__bytes=16 * 1024)
    cm = ember.compile(model, inputs, chip=chip, dtype="fp32", to="program")
    last = next(s for s in cm.program.steps if "reads" in s)
    assert len(cm.program.kernels[last["kernel"]]) == 0
    assert_no_clobber(cm.program)
    fresh = (torch.randn(16, 64), torch.randn(16, 64))
    assert rel_err(cm.run(*fresh, device="sim"), model(*fresh)) <= 1e-4
