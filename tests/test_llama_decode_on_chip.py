"""A Hugging Face Llama decode step through transformers' StaticCache runs on the chip: the
token embedding, the position arithmetic, the attention mask comparison, the rotary angles
(an int64 -> float cast), the KV-cache writes (`index_copy`, in place) and the masked attention
are kernels, no step is left on the host, and the logits and the updated caches match eager
PyTorch on fresh ids, positions and caches."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch_mlir import ir

import ember
from compiler.lowered import kernels_from_lowered
from simulator import IndexOutOfRange
from tests.helpers import rel_err

transformers = pytest.importorskip("transformers")
from transformers.cache_utils import StaticCache  # noqa: E402

CACHE_LEN = 16
ON_CHIP = {"embedding", "index_put", "binary", "cast", "attention"}


class Decode(torch.nn.Module):
    """forward(ids, pos, *caches): one step of a tiny Llama against a static KV cache whose
    layers are the cache inputs (updated in place, as `StaticCache.update` does)."""

    def __init__(self, return_caches: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.config = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                               num_attention_heads=4, num_key_value_heads=2, vocab_size=128)
        self.model = transformers.LlamaForCausalLM(self.config).eval()
        self.return_caches = return_caches

    def forward(self, ids, pos, *caches):
        cfg = self.config
        cache = StaticCache(config=cfg, max_cache_len=CACHE_LEN)
        for i, layer in enumerate(cache.layers):
            layer.keys, layer.values = caches[2 * i], caches[2 * i + 1]
            layer.is_initialized = True
            layer.cumulative_length = pos[0].clone()
            layer.batch_size, layer.num_heads = ids.shape[0], cfg.num_key_value_heads
            layer.k_head_dim = layer.v_head_dim = cfg.hidden_size // cfg.num_attention_heads
            layer.device, layer.dtype = ids.device, caches[0].dtype
        logits = self.model(input_ids=ids, cache=cache, cache_position=pos, use_cache=True,
                            logits_to_keep=1).logits
        return (logits, *(c + 0.0 for c in caches)) if self.return_caches else logits


def _inputs(steps: int, start: int):
    heads, dim = 2, 8
    return (torch.randint(0, 128, (1, steps)), torch.arange(start, start + steps),
            *(torch.randn(1, heads, CACHE_LEN, dim) for _ in range(4)))


def _compile(steps: int, chip="tiny", dtype="fp32", return_caches=False):
    model = Decode(return_caches).eval()
    return model, ember.compile(model, _inputs(steps, 3), chip=chip, dtype=dtype)


@pytest.fixture(scope="module", params=[1, 3], ids=["S=1", "S=3"])
def decode(request):
    return request.param, *_compile(request.param)


def _check_on_chip(cm):
    steps = cm.last_run.steps
    host = {s.op for s in steps if s.kind == "host"}
    assert not host, f"ran on the host: {sorted(host)}"
    assert ON_CHIP <= {s.op for s in steps if s.kind == "kernel"}
    program = cm.program
    writes = [s for s in program.steps if s["op"] == "index_put"]
    assert len(writes) == 4 and all(s["kind"] == "kernel" for s in writes)
    for s in writes:            # each KV-cache write updates its cache in place
        cache, new = program.tensors[s["operands"][0]], program.tensors[s["results"][0]]
        assert (cache["space"], cache["addr"]) == (new["space"], new["addr"])


def test_decode_step_matches_eager(decode):
    steps, model, cm = decode
    for start in (0, CACHE_LEN - steps):
        fresh = _inputs(steps, start)
        with torch.no_grad():
            ref = model(*(x.clone() for x in fresh))
        assert rel_err(cm.run(*fresh, device="sim"), ref) <= 1e-5
        _check_on_chip(cm)


def test_decode_program_round_trips_through_the_lowered_ir(decode):
    steps, _, cm = decode
    text = cm.ir("program")
    assert 'indexed = "src"' in text and 'indexed = "dst"' in text      # the embedding, the cache writes
    with ember.mlir_context():
        module = ir.Module.parse(text)
        assert module.operation.verify()
        rebuilt = kernels_from_lowered(module)
    for a, b in zip(cm.program.kernels, rebuilt):
        assert np.array_equal(a.commands, b.commands) and np.array_equal(a.strides, b.strides)


def test_decode_step_writes_the_caches_as_eager_does():
    model, cm = _compile(3, return_caches=True)
    fresh = _inputs(3, 9)
    with torch.no_grad():
        ref = model(*(x.clone() for x in fresh))
    assert rel_err(cm.run(*fresh, device="sim"), ref) <= 1e-5


def test_a_position_past_the_cache_is_a_run_time_error(decode):
    steps, _, cm = decode
    fresh = list(_inputs(steps, 0))
    fresh[1] = torch.arange(CACHE_LEN, CACHE_LEN + steps)
    with pytest.raises(IndexOutOfRange, match=rf"index {CACHE_LEN} .*\[0, {CACHE_LEN}\)"):
        cm.run(*fresh, device="sim")


def test_decode_step_on_mtia2i_in_bf16():
    model, cm = _compile(1, chip="mtia2i", dtype="bf16")
    fresh = _inputs(1, 7)
    with torch.no_grad():
        ref = model(*(x.clone() for x in fresh))
    assert rel_err(cm.run(*fresh, device="sim"), ref) <= 2e-2
    _check_on_chip(cm)
