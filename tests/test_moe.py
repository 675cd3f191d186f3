"""Mixture-of-experts decoders on the chip: Qwen2-MoE, OLMoE and Mixtral built from configs, with
their experts as transformers' batched_mm (experts' weights gathered per token, a batched matmul),
compiled with no `allow_unsupported` and compared with eager on the simulated chip on fresh
random token ids. The router's softmax and top-k, the gathers, the per-expert matmuls and the
weighted sum over the k experts all run on the chip: no step is left on the host."""
from __future__ import annotations

import pytest
import torch

import ember
from tests.helpers import rel_err

pytest.importorskip("transformers")

TOLERANCE = {"fp32": 1e-4, "bf16": 2e-2}
CASES = [("hf-qwen2-moe", "fp32"), ("hf-qwen2-moe", "bf16"), ("hf-olmoe", "fp32"), ("hf-mixtral", "fp32")]


@pytest.mark.slow
@pytest.mark.parametrize("spec, dtype", CASES, ids=[f"{s}-{d}" for s, d in CASES])
def test_a_moe_decoder_runs_on_the_chip(spec, dtype):
    torch.manual_seed(0)
    model, example = ember.load_model(f"models:{spec}")
    cm = ember.compile(model, example, chip="tiny", dtype=dtype)
    _, fresh = ember.load_model(f"models:{spec}")
    with torch.no_grad():
        ref = model(*fresh)
    out = cm.run(*fresh, device="sim")
    assert rel_err(out, ref) <= TOLERANCE[dtype]
    assert not [s.op for s in cm.last_run.steps if s.kind == "host"]
    ops = {s["op"] for s in cm.program.steps if s["kind"] == "kernel"}
    assert {"topk", "gather", "index_select", "matmul"} <= ops, ops


def test_the_grouped_mm_experts_error_says_what_runs_on_the_chip():
    model, example = ember.load_model("models:hf-mixtral-grouped-mm")
    with pytest.raises(ember.UnsupportedOpsError, match="_experts_implementation = 'batched_mm'"):
        ember.compile(model, example, chip="tiny", dtype="fp32", to="graph")
