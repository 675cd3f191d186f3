"""The front end's contract with users: errors that say what is wrong, IR that round-trips."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch
from torch_mlir import ir

import ember
from tests.helpers import rel_err


class Unsupported(torch.nn.Module):
    """Two ops Ember has no lowering for (lgamma twice, i0 once) between supported ones."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(8, 8)

    def forward(self, x):
        y = torch.lgamma(self.lin(x).abs() + 1.0)   # UNSUPPORTED-LINE-1
        y = torch.special.i0(y) + torch.lgamma(y + 2.0)   # UNSUPPORTED-LINE-2
        return y * 0.5


def _line(marker: str) -> int:
    with open(__file__) as f:
        return next(i for i, text in enumerate(f, 1) if marker in text and "_line(" not in text)


def test_unsupported_ops_are_all_listed_with_source_lines():
    with pytest.raises(ember.UnsupportedOpsError) as info:
        ember.compile(Unsupported().eval(), (torch.randn(3, 8),), chip="tiny", dtype="fp32", to="graph")
    listed = {u.target: u for u in info.value.unsupported}
    assert set(listed) == {"aten.lgamma.default", "aten.special_i0.default"} or \
        set(listed) == {"aten.lgamma.default", "aten.i0.default"}, listed
    lgamma = listed["aten.lgamma.default"]
    assert lgamma.count == 2
    me = os.path.basename(__file__)
    lines = {int(src.rsplit(":", 1)[1]) for src, _ in lgamma.sources if me in src}
    assert lines == {_line("UNSUPPORTED-LINE-1"), _line("UNSUPPORTED-LINE-2")}
    message = str(info.value)
    assert "lgamma" in message and "i0" in message and f"{me}:{_line('UNSUPPORTED-LINE-1')}" in message


def test_allow_unsupported_lists_them_and_still_runs():
    model, x = Unsupported().eval(), torch.randn(3, 8)
    cm = ember.compile(model, (x,), chip="tiny", dtype="fp32", to="graph", allow_unsupported=True)
    assert {u.target for u in cm.unsupported} >= {"aten.lgamma.default"}
    assert sum(u.count for u in cm.unsupported) == 3
    assert cm.ir("graph").count("call @host") == 3
    assert cm.op_counts()["host:aten.lgamma.default"] == 2
    with ember.mlir_context():
        assert ir.Module.parse(cm.ir("graph")).operation.verify()
    fresh = torch.randn(3, 8)
    with torch.no_grad():
        assert rel_err(cm.run(fresh, device="reference"), model(fresh)) <= 1e-4


def test_host_calls_take_operands_of_mixed_types():
    class Mixed(torch.nn.Module):
        def forward(self, x, y):
            return torch.nextafter(x, y) * 2.0   # y broadcasts: two operand types, one host call

    model, args = Mixed().eval(), (torch.randn(3, 8), torch.randn(8))
    cm = ember.compile(model, args, chip="tiny", dtype="fp32", to="graph", allow_unsupported=True)
    assert [u.target for u in cm.unsupported] == ["aten.nextafter.default"]
    with ember.mlir_context():
        assert ir.Module.parse(cm.ir("graph")).operation.verify()
    fresh = (torch.randn(3, 8), torch.randn(8))
    assert rel_err(cm.run(*fresh, device="reference"), model(*fresh)) == 0.0


def test_runtime_checks_are_not_ops():
    class Checked(torch.nn.Module):
        def forward(self, ids, x):
            torch._check_tensor_all(ids >= 0)    # a chain of scalar ops ending in an assertion
            return x[ids] * 2.0

    model = Checked().eval()
    args = (torch.randint(0, 6, (4,)), torch.randn(6, 3))
    cm = ember.compile(model, args, chip="tiny", dtype="fp32", to="graph")
    assert cm.unsupported == []
    assert rel_err(cm.run(*args, device="reference"), model(*args)) == 0.0


def test_bad_arguments_say_what_was_expected():
    lin = torch.nn.Linear(4, 4).eval()
    with pytest.raises(TypeError, match="nn.Module"):
        ember.compile(lambda x: x, (torch.randn(2, 4),), chip="tiny", to="graph")
    with pytest.raises(TypeError, match="tensors"):
        ember.compile(lin, (3.0,), chip="tiny", to="graph")
    with pytest.raises(ValueError, match="tiny"):   # the error lists the known chips
        ember.compile(lin, (torch.randn(2, 4),), chip="no-such-chip", to="graph")
    with pytest.raises(ValueError, match="dtype"):
        ember.compile(lin, (torch.randn(2, 4),), chip="tiny", dtype="fp7", to="graph")
    with pytest.raises(ember.EmberError, match="could not capture"):
        ember.compile(lin, (torch.randn(2, 5),), chip="tiny", to="graph")
    with pytest.raises(ValueError, match="multimodal-tiny"):   # the error lists the known models
        ember.load_model("models:no-such-model")
    cm = ember.compile(lin, (torch.randn(2, 4),), chip="tiny", dtype="fp32", to="graph")
    with pytest.raises(ValueError, match=r"input 0 .* compiled for \(2, 4\) torch.float32"):
        cm.run(torch.randn(3, 4), device="reference")
    with pytest.raises(TypeError, match="1 input"):
        cm.run(torch.randn(2, 4), torch.randn(2, 4), device="reference")
    with pytest.raises(ValueError, match="device"):
        cm.run(torch.randn(2, 4), device="tpu")
    with pytest.raises(ember.EmberError, match="not reached"):
        cm.ir("program")


def test_ir_round_trips_and_the_verifier_checks_types():
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.SiLU()).eval()
    cm = ember.compile(model, (torch.randn(2, 6),), chip="tiny", dtype="fp32", to="graph")
    text = cm.ir("graph")
    with ember.mlir_context():
        module = ir.Module.parse(text)
        assert module.operation.verify()
        assert str(module) == text
    broken = text.replace("tensor<5x6xf32>", "tensor<5x7xf32>")   # the weight no longer fits the input
    assert broken != text
    with ember.mlir_context(), pytest.raises(ir.MLIRError, match="ember.linear"):
        ir.Module.parse(broken)


def test_irdl_file_lets_upstream_mlir_verify_our_ir(tmp_path):
    opt = shutil.which("torch-mlir-opt", path=os.path.dirname(sys.executable))
    if opt is None:
        pytest.skip("torch-mlir-opt is not installed")
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.GELU()).eval()
    cm = ember.compile(model, (torch.randn(2, 6),), chip="tiny", dtype="fp32", to="graph")
    irdl, mlir = tmp_path / "ember.irdl.mlir", tmp_path / "model.mlir"
    subprocess.run([os.path.join(os.path.dirname(sys.executable), "ember"), "dialect", "--irdl", str(irdl)], check=True)
    mlir.write_text(cm.ir("graph"))
    ok = subprocess.run([opt, f"--irdl-file={irdl}", str(mlir)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "ember.linear" in ok.stdout
    mlir.write_text(cm.ir("graph").replace('"ember.unary"', '"ember.no_such_op"'))
    bad = subprocess.run([opt, f"--irdl-file={irdl}", str(mlir)], capture_output=True, text=True)
    assert bad.returncode != 0


def test_weights_stay_out_of_the_ir_and_meta_models_import():
    with torch.device("meta"):
        model = torch.nn.Sequential(torch.nn.Linear(4096, 4096), torch.nn.ReLU(), torch.nn.Linear(4096, 64))
        x = torch.randn(8, 4096)
    cm = ember.compile(model.eval(), (x,), chip="tiny", dtype="fp32", to="graph")
    assert all(t.is_meta for t in cm.graph.weights.values())
    assert len(cm.ir("graph")) < 4000
    with pytest.raises(ValueError, match="meta"):
        cm.run(x, device="reference")
