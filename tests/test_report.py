"""The per-op compile report: one row per accelerator op, with the user's source line."""
from __future__ import annotations

import io

import torch
from rich.console import Console

import ember
from ember.report import per_op_table
from tests.helpers import Mlp


def test_per_op_table_lists_every_kernel_with_predicted_simulated_and_roofline():
    x = torch.randn(8, 32)
    cm = ember.compile(Mlp(torch.relu).eval(), (x,), chip="tiny", dtype="fp32")
    cm.run(x, device="sim")
    kernels = [s for s in cm.last_run.steps if s.kind == "kernel"]
    table = per_op_table(cm.last_run)
    assert table.row_count == len(kernels) >= 2
    out = io.StringIO()
    Console(file=out, width=200).print(table)
    text = out.getvalue()
    assert "helpers.py:" in text          # the model's own line (tests/helpers.py), not torch's
    for s in kernels:
        assert f"{s.cycles:,}" in text and f"{s.predicted_cycles:,}" in text
    assert per_op_table(cm.last_run, limit=1).row_count == 1
