"""ember.check: the compatibility report model teams read."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

import ember


class Mixed(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(16, 32)

    def forward(self, x):
        return torch.lgamma(torch.relu(self.lin(x)) + 1.0).softmax(-1)   # lgamma has no lowering


def test_report_says_what_runs_where_and_how_accurately():
    report = ember.check(Mixed().eval(), (torch.randn(8, 16),), chip="tiny", dtype="fp32")
    assert report.ops_on_accelerator.get("linear") == 1
    assert "host:aten.lgamma.default" in report.ops_on_host
    assert any("lgamma" in u and "test_check.py" in u for u in report.unsupported)
    assert report.reference_error is not None and report.reference_error <= 1e-4
    assert report.simulated_error is not None and report.simulated_error <= 1e-4
    assert report.latency_s and report.latency_s > 0
    assert report.weight_bytes == (16 * 32 + 32) * 4 and report.fits_sram
    assert "linear x1" in str(report)
    assert json.loads(report.to_json())["fits_dram"] is True
    assert report.to_html().startswith("<html>")


def test_meta_model_gets_latency_without_numbers():
    with torch.device("meta"):
        model = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.ReLU())
        x = torch.randn(64, 256)
    report = ember.check(model.eval(), (x,), chip="mtia2i", dtype="bf16")
    assert report.reference_error is None and report.latency_s > 0


def test_cli_check_json():
    exe = os.path.join(os.path.dirname(sys.executable), "ember")
    out = subprocess.run([exe, "check", "models:resnet-tiny", "--chip", "tiny", "--dtype", "fp32", "--format", "json"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-500:]
    data = json.loads(out.stdout)
    assert data["reference_error"] <= 1e-4 and data["ops_on_accelerator"]
