"""Mixture-of-experts decoders on the chip: Qwen2-MoE, OLMoE and Mixtral built from configs,
compiled with no `allow_unsupported` and compared with eager on the simulated chip on fresh
random token ids. Both of transformers' experts paths: batched_mm (experts' weights gathered per
token, a batched matmul) and grouped_mm (rows sorted by expert, counted with a histogram, one
grouped matmul whose group sizes the chip reads when it runs). The router's softmax and top-k,
the gathers, the experts' matmuls and the weighted sum over the k experts all run on the chip:
no step is left on the host."""
from __future__ import annotations

import pytest
import torch

import ember
from tests.helpers import rel_err

pytest.importorskip("transformers")

TOLERANCE = {"fp32": 1e-4, "bf16": 2e-2}
CASES = [("hf-qwen2-moe", "fp32"), ("hf-qwen2-moe", "bf16"), ("hf-olmoe", "fp32"), ("hf-olmoe", "bf16"),
         ("hf-mixtral", "fp32"), ("hf-mixtral", "bf16"),
         ("hf-mixtral-grouped-mm", "fp32"), ("hf-mixtral-grouped-mm", "bf16")]
KERNELS = {"batched_mm": {"topk", "gather", "index_select", "matmul"},
           "grouped_mm": {"topk", "gather", "index_select", "grouped_matmul", "scan"}}


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
    assert KERNELS["grouped_mm" if "grouped" in spec else "batched_mm"] <= ops, ops
