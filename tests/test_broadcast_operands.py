"""materialize-broadcasts: broadcasting binary ops run on the accelerator (compared with torch)."""
from __future__ import annotations

import pytest
import torch

import ember
from tests.helpers import as_module, rel_err


def _rotary(x, cos, sin, bias):
    half = x.shape[-1] // 2
    rot = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return (x * cos + rot * sin) + bias


def _inputs():
    return (torch.randn(1, 4, 6, 32), torch.randn(1, 1, 6, 32), torch.randn(1, 1, 6, 32), torch.randn(32))


@pytest.mark.parametrize("dtype,tol", [("fp32", 1e-4), ("bf16", 2e-2)])
def test_broadcasting_binary_runs_on_chip(dtype, tol):
    model = as_module(_rotary)
    cm = ember.compile(model, _inputs(), chip="tiny", dtype=dtype, to="program")
    assert not [s["op"] for s in cm.program.steps if s["kind"] == "host"]
    assert any(s["op"] == "broadcast" for s in cm.program.steps)
    fresh = _inputs()
    out = cm.run(*fresh, device="sim")
    assert rel_err(out, model(*fresh)) <= tol
