"""The backend end to end: Program phases, the Program file, the sim device, timing-only runs."""
from __future__ import annotations

import os
import zipfile

import pytest
import torch
from torch_mlir import ir

import ember
from simulator.isa.artifact import VERSION, ProgramFileError
from tests.helpers import rel_err


class Elementwise(torch.nn.Module):
    """Ops with SIMD kernels, and one (log1p) without."""

    def forward(self, x, y):
        return torch.relu(x * y + x) - torch.exp(-torch.log1p(y * y)), torch.sigmoid(x) * 0.5


def _inputs():
    return torch.randn(48, 40), torch.randn(48, 40)


@pytest.mark.parametrize("dtype,tol", [("fp32", 1e-4), ("bf16", 2e-2)])
def test_sim_matches_torch(dtype, tol):
    model = Elementwise().eval()
    cm = ember.compile(model, _inputs(), chip="tiny", dtype=dtype, to="program")
    x, y = _inputs()
    out = cm.run(x, y, device="sim")
    assert rel_err(out, model(x, y)) <= tol
    run = cm.last_run
    assert run.cycles > 0 and run.seconds == pytest.approx(run.cycles / cm.chip.clock_hz)
    kernels = [s for s in run.steps if s.kind == "kernel"]
    assert kernels and all(s.cycles >= s.roofline_cycles for s in kernels)
    assert any(s.kind == "host" for s in run.steps)          # log1p has no kernel: it ran on the host
    assert run.stats["bytes"]["host_link"] > 0


def test_sim_is_deterministic():
    model = Elementwise().eval()
    cm = ember.compile(model, _inputs(), chip="tiny", dtype="bf16", to="program")
    x, y = _inputs()
    a = cm.run(x, y, device="sim")
    cycles = cm.last_run.cycles
    b = cm.run(x, y, device="sim")
    assert cm.last_run.cycles == cycles
    assert all(torch.equal(p, q) for p, q in zip(a, b))


def test_tiled_ir_reparses_with_targets_and_plans():
    cm = ember.compile(Elementwise().eval(), _inputs(), chip="tiny", dtype="fp32", to="tiled")
    text = cm.ir("tiled")
    assert 'ember.target = "accelerator"' in text and 'ember.target = "host"' in text and "ember.plan" in text
    with ember.mlir_context():
        assert ir.Module.parse(text).operation.verify()
    with pytest.raises(ValueError, match="to='program'"):
        cm.run(*_inputs(), device="sim")


def test_program_file_round_trip_and_refusals(tmp_path):
    model = Elementwise().eval()
    cm = ember.compile(model, _inputs(), chip="tiny", dtype="fp32", to="program")
    path = str(tmp_path / "m.ember")
    cm.save(path)
    x, y = _inputs()
    loaded = ember.load(path)
    out = loaded.run(x, y, device="sim")
    assert rel_err(out, model(x, y)) <= 1e-4
    again = cm.run(x, y, device="sim")
    assert loaded.last_run.cycles == cm.last_run.cycles
    assert all(torch.equal(p, q) for p, q in zip(out, again))
    # a flipped byte inside the file: refused before anything runs
    raw = bytearray(open(path, "rb").read())
    bad = str(tmp_path / "bad.ember")
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(bad, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename.startswith("arrays/const"):
                data = data[:-1] + bytes([data[-1] ^ 1])
            dst.writestr(item, data)
    with pytest.raises(ProgramFileError, match="checksum"):
        ember.load(bad)
    # another format version
    other = str(tmp_path / "v99.ember")
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(other, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "header.json":
                data = data.replace(f'"version": {VERSION}'.encode(), b'"version": 99')
            dst.writestr(item, data)
    with pytest.raises(ProgramFileError, match="version 99"):
        ember.load(other)
    with open(bad, "wb") as f:
        f.write(raw[: len(raw) // 2])          # truncated
    with pytest.raises(ProgramFileError):
        ember.load(bad)


def test_timing_only_on_meta_device():
    with torch.device("meta"):
        model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU())
        x = torch.randn(32, 64)
    cm = ember.compile(model.eval(), (x,), chip="mtia2i", dtype="bf16", to="program")
    out = cm.run(x, device="sim", timing_only=True)
    assert out.is_meta and out.shape == (32, 64)
    assert cm.last_run.cycles > 0
    with pytest.raises(ValueError, match="timing_only"):
        cm.run(x, device="sim")


def test_trace_file(tmp_path):
    cm = ember.compile(Elementwise().eval(), _inputs(), chip="tiny", dtype="fp32", to="program")
    cm.run(*_inputs(), device="sim")
    path = tmp_path / "trace.json"
    cm.last_run.write_trace(str(path))
    import json
    events = json.loads(path.read_text())["traceEvents"]
    assert any(e.get("ph") == "X" for e in events)
    assert os.path.getsize(path) > 0
