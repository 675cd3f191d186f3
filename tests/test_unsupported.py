"""What the importer cannot lower is reported, never an unnamed crash: every such node is in one
`UnsupportedOpsError` with its source line, including the nodes whose lowering rule failed and
the ones whose result shape depends on the data."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

import ember
from ops import registry
from ops.registry import rule_for

HERE = Path(__file__).resolve()


class SpreadAndMedian(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(8, 8)

    def forward(self, x, ids):
        h = self.fc(x)
        spread = h[0].repeat_interleave(ids[0], dim=0)    # a data-dependent shape Ember does not lower
        middle = torch.median(h, dim=-1).values           # no lowering
        return h.sum() + spread.sum() + middle.sum()


def _inputs():
    return torch.randn(2, 5, 8), torch.randint(0, 5, (2, 5))


def test_an_unsupported_op_and_a_data_dependent_one_are_named_together():
    with pytest.raises(ember.UnsupportedOpsError) as err:
        ember.compile(SpreadAndMedian().eval(), _inputs(), chip="tiny", dtype="fp32", to="graph")
    names = {u.target: u for u in err.value.unsupported}
    assert {"aten.repeat_interleave.self_Tensor", "aten.median.dim"} <= set(names), names
    for target, line in (("aten.repeat_interleave.self_Tensor", "spread = h[0]"), ("aten.median.dim", "torch.median")):
        path, lineno = names[target].source.rsplit(":", 1)
        assert Path(path).resolve() == HERE and line in HERE.read_text().splitlines()[int(lineno) - 1]
    assert "per-element repeat counts" in names["aten.repeat_interleave.self_Tensor"].reason


def test_allow_unsupported_refuses_a_data_dependent_shape_by_name():
    with pytest.raises(ember.UnsupportedOpsError, match="cannot run on the host either") as err:
        ember.compile(SpreadAndMedian().eval(), _inputs(), chip="tiny", dtype="fp32", to="graph",
                      allow_unsupported=True)
    (spread,) = [u for u in err.value.unsupported if u.target == "aten.repeat_interleave.self_Tensor"]
    assert "depends on the data" in spread.reason


def test_ops_after_an_unsupported_multi_result_op_are_not_lowered_from_nothing():
    class Split(torch.nn.Module):
        def forward(self, x):
            counts = torch.logcumsumexp(x, 1).reshape(2, 16)
            a, b = counts.chunk(2)                       # parts of an unsupported op's result
            return torch.nn.functional.silu(a) + b

    with pytest.raises(ember.UnsupportedOpsError) as err:
        ember.compile(Split().eval(), (torch.randn(4, 8),), chip="tiny", dtype="fp32", to="graph")
    assert [u.target for u in err.value.unsupported] == ["aten.logcumsumexp.default"]


def test_a_lowering_rule_that_fails_is_reported_with_its_op_and_line(monkeypatch):
    rule = rule_for(torch.ops.aten.tanh.default)

    def broken(b, *args, **kwargs):
        raise AttributeError("'NoneType' object has no attribute 'dtype'")

    monkeypatch.setitem(registry._RULES, torch.ops.aten.tanh.default, dataclasses.replace(rule, fn=broken))

    class Tanh(torch.nn.Module):
        def forward(self, x):
            return torch.tanh(x) * 2

    with pytest.raises(ember.UnsupportedOpsError) as err:
        ember.compile(Tanh().eval(), (torch.randn(3, 4),), chip="tiny", dtype="fp32", to="graph")
    (u,) = err.value.unsupported
    assert u.target == "aten.tanh.default" and "AttributeError" in u.reason and "cannot lower it" in u.reason
    assert Path(u.source.rsplit(":", 1)[0]).resolve() == HERE
    # with allow_unsupported, the op runs on the host and the model still matches eager
    x = torch.randn(3, 4)
    cm = ember.compile(Tanh().eval(), (x,), chip="tiny", dtype="fp32", allow_unsupported=True)
    assert torch.allclose(cm.run(x, device="sim"), torch.tanh(x) * 2, atol=1e-6)
