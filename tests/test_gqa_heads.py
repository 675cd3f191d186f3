"""fold-kv-head-expansion: attention over repeated key/value heads reads the grouped heads."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import ember
from tests.helpers import as_module, rel_err


def _gqa(q, k, v):
    b, hk, s, d = k.shape
    rep = q.shape[1] // hk
    k = k.unsqueeze(2).expand(b, hk, rep, s, d).reshape(b, hk * rep, s, d)
    v = v.unsqueeze(2).expand(b, hk, rep, s, d).reshape(b, hk * rep, s, d)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def _inputs():
    return torch.randn(2, 4, 16, 8), torch.randn(2, 2, 16, 8), torch.randn(2, 2, 16, 8)


@pytest.mark.parametrize("dtype,tol", [("fp32", 1e-4), ("bf16", 2e-2)])
def test_attention_reads_grouped_heads(dtype, tol):
    model = as_module(_gqa)
    cm = ember.compile(model, _inputs(), chip="tiny", dtype=dtype, to="program")
    ops = [s["op"] for s in cm.program.steps if s["kind"] != "view"]
    assert "broadcast" not in ops and "attention" in ops
    att = next(s for s in cm.program.steps if s["op"] == "attention")
    assert cm.program.tensors[att["operands"][1]]["shape"] == [2, 2, 16, 8]
    fresh = _inputs()
    assert rel_err(cm.run(*fresh, device="sim"), model(*fresh)) <= tol
