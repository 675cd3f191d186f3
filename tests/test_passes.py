"""The pass pipeline: one list of named passes with one signature, dumps after any pass, passes
switched off one at a time (and refused where a later one needs them)."""
from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from dataclasses import dataclass

import pytest
import torch

import ember
from compiler import pipeline
from compiler.passes.base import OpsPass
from compiler.pipeline import CompileOptions, passes
from tests.helpers import Mlp, rel_err


def test_every_pass_is_a_named_frozen_dataclass_with_one_signature():
    names = [p.name for _, p in passes()]
    assert len(names) == len(set(names))
    for phase, p in passes():
        assert phase in pipeline.PHASES
        assert dataclasses.is_dataclass(p) and type(p).__dataclass_params__.frozen, p
        assert re.fullmatch(r"[a-z]+(-[a-z0-9]+)*", p.name), p.name
        assert (type(p).__doc__ or "").strip(), p.name
        assert list(type(p).run.__code__.co_varnames[1:2]) == ["state"], p.name
    assert [ph for ph, _ in passes()] == sorted((ph for ph, _ in passes()), key=pipeline.PHASES.index)


def test_ember_passes_lists_them():
    out = subprocess.run([sys.executable, "-m", "ember.cli", "passes"], capture_output=True, text=True,
                         env={"COLUMNS": "200", "PATH": ""}, check=True).stdout
    for _, p in passes():
        assert p.name in out


@pytest.fixture(scope="module")
def tiny():
    model, inputs = ember.load_model("models:multimodal-tiny")
    return model, inputs


def test_print_ir_after_all_dumps_after_every_pass(tiny, capfd):
    model, inputs = tiny
    ember.compile(model, inputs, chip="tiny", dtype="fp32", print_ir_after_all=True)
    err = capfd.readouterr().err
    named = re.findall(r"// ----- (?:IR after )?pass '([a-z0-9-]+)' \(phase (\w+)\)", err)
    assert [n for n, _ in named] == [p.name for _, p in passes()]
    assert "skipped: not needed by this compile" in err            # calibrate: int8 per-tensor only
    # what a pass decided is in the IR after it: placements after memory-plan, plans after tile-and-map
    after = {m.group(1): m.group(2) for m in re.finditer(r"IR after pass '([a-z0-9-]+)'[^\n]*\n(.*?)(?=\n// -----|\Z)",
                                                        err, re.S)}
    assert "ember.placement" not in after["in-place-state"] and "ember.placement" in after["memory-plan"]
    assert "ember.plan" not in after["memory-plan"] and "ember.plan" in after["tile-and-map"]
    assert "ember.dma" in after["codegen"]                          # the lowered IR


def test_print_ir_after_one_pass(tiny, capfd):
    model, inputs = tiny
    ember.compile(model, inputs, chip="tiny", dtype="fp32", to="tiled", print_ir_after="fuse-rotary")
    err = capfd.readouterr().err
    assert re.findall(r"IR after pass '([a-z0-9-]+)'", err) == ["fuse-rotary"]
    assert '"ember.rotary"' not in err.split("IR after pass")[0] and "rotary" in err


def test_disabling_fuse_epilogues_gives_the_same_numbers_with_more_kernels(tiny):
    model, inputs = tiny
    fused = ember.compile(model, inputs, chip="tiny", dtype="fp32")
    plain = ember.compile(model, inputs, chip="tiny", dtype="fp32", disable_passes=["fuse-epilogues"])
    kernels = [sum(s["kind"] == "kernel" for s in cm.program.steps) for cm in (fused, plain)]
    assert kernels[1] > kernels[0]
    _, fresh = ember.load_model("models:multimodal-tiny")
    assert rel_err(plain.run(*fresh, device="sim"), fused.run(*fresh, device="sim")) <= 1e-6
    assert plain.options.key() != fused.options.key()              # the cache tells them apart


@pytest.mark.parametrize("name", ["memory-plan", "partition", "codegen", "capture"])
def test_a_pass_a_later_one_needs_cannot_be_disabled(name):
    with pytest.raises(ValueError, match=rf"pass '{name}' cannot be disabled: .+"):
        CompileOptions(disable_passes=(name,))
    with pytest.raises(ValueError, match="unknown pass 'no-such-pass'.*memory-plan"):
        CompileOptions(disable_passes=("no-such-pass",))
    CompileOptions(to="graph", disable_passes=("memory-plan",))   # a phase not reached needs nothing
    with pytest.raises(ValueError, match="pass 'calibrate' cannot be disabled"):
        CompileOptions(dtype="int8", int8_activations="per-tensor", disable_passes=("calibrate",))
    CompileOptions(dtype="int8", disable_passes=("calibrate",))    # per-row scales need no calibration


def test_dumps_do_not_key_the_cache_but_skip_it(tmp_path, capfd):
    model = Mlp().eval()
    x = torch.randn(4, 32)
    first = ember.compile(model, (x,), chip="tiny", dtype="fp32", cache=tmp_path)
    assert CompileOptions(print_ir_after=("memory-plan",)).key() == CompileOptions().key()
    dumped = ember.compile(model, (x,), chip="tiny", dtype="fp32", cache=tmp_path, print_ir_after="memory-plan")
    assert "IR after pass 'memory-plan'" in capfd.readouterr().err and "memory-plan" in dumped.timings
    assert rel_err(dumped.run(x, device="sim"), first.run(x, device="sim")) == 0.0


# ---------------------------------------------------------------------- the README's example pass
@dataclass(frozen=True)
class HostSmallOps(OpsPass):
    """Run elementwise ops on fewer than `elements` values on the host (no kernel launch)."""
    name: str = "host-small-ops"
    elements: int = 64

    def rewrite(self, ops) -> int:
        moved = 0
        for op in ops.ops:
            if op.target == "accelerator" and op.name in ("unary", "binary") \
                    and ops.specs[op.results[0]].numel < self.elements:
                op.target = "host"
                moved += 1
        return moved


def with_pass(new, after: str):
    """PIPELINE with `new` right after the pass named `after`."""
    return tuple((phase, tuple(q for p in ps for q in ((p, new) if p.name == after else (p,))))
                 for phase, ps in pipeline.PIPELINE)


class SmallTail(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(32, 8)

    def forward(self, x):
        y = self.fc(x)
        return torch.tanh(y) * 0.5 + y.sum(-1, keepdim=True)


def test_a_new_pass_joins_the_pipeline(monkeypatch, capfd):
    monkeypatch.setattr(pipeline, "PIPELINE", with_pass(HostSmallOps(), after="partition"))
    model = SmallTail().eval()
    x = torch.randn(2, 32)
    cm = ember.compile(model, (x,), chip="tiny", dtype="fp32", print_ir_after="host-small-ops",
                       disable_passes=["fuse-epilogues"])
    assert "IR after pass 'host-small-ops'" in capfd.readouterr().err
    host = [s["op"] for s in cm.program.steps if s["kind"] == "host"]
    assert host and set(host) <= {"unary", "binary"}
    with torch.no_grad():
        assert rel_err(cm.run(x, device="sim"), model(x)) <= 1e-6
