"""sin, cos and exact GELU run on the SIMD engine (compared with torch on fresh inputs)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import ember
from tests.helpers import as_module, rel_err


def _fns(x, angles):
    return F.gelu(x), torch.cos(angles), torch.sin(angles)


def _inputs():
    return torch.randn(4, 300) * 3, torch.rand(8, 64) * 500


@pytest.mark.parametrize("dtype,tol", [("fp32", 1e-4), ("bf16", 2e-2)])
def test_unary_functions_on_chip(dtype, tol):
    model = as_module(_fns)
    cm = ember.compile(model, _inputs(), chip="tiny", dtype=dtype, to="program")
    assert not [s["op"] for s in cm.program.steps if s["kind"] == "host"]
    fresh = _inputs()
    assert rel_err(cm.run(*fresh, device="sim"), model(*fresh)) <= tol
