"""memory-plan when weights do not fit on die: activations keep SRAM, weights go above them."""
from __future__ import annotations

import torch

import ember
from tests.helpers import rel_err
from tests.test_relocation import Stack


def test_activations_keep_sram_when_weights_overflow():
    torch.manual_seed(3)
    model = Stack(layers=4, d=64, f=256).eval()      # 4 * 2 * 64 * 256 * 4 B ~ 0.5 MiB of weights
    x = torch.randn(16, 64)
    chip = ember.load_chip("tiny").with_(sram__bytes=136 * 1024)
    cm = ember.compile(model, (x,), chip=chip, dtype="fp32", to="program")
    tensors = cm.program.tensors
    produced = {t for s in cm.program.steps for t in s["results"]}
    acts = [tensors[t] for s in cm.program.steps if s["kind"] == "kernel" for t in s["results"]]
    weights = [e for t, e in tensors.items() if t not in produced and t not in cm.program.inputs and "space" in e]
    assert all(e["space"] == "sram" for e in acts)
    assert any(e["space"] == "dram" for e in weights)
    top = max(e["addr"] for e in acts)
    assert all(e["addr"] > top for e in weights if e["space"] == "sram")
    xs = torch.randn(16, 64)
    with torch.no_grad():
        ref = model(xs)
    assert rel_err(cm.run(xs, device="sim"), ref) <= 1e-4
