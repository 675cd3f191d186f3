"""`ember.generate`: greedy tokens against transformers' own `generate` and against eager greedy
decoding, the KV cache on the device, and the inputs it refuses."""
from __future__ import annotations

import pytest
import torch

import ember
from compiler.errors import DeviceMemoryError
from models.multimodal import CONFIGS, build_multimodal, prefill_inputs
from models.serving import NotADecoderError
from ember.generation import CacheTooShortError

T = pytest.importorskip("transformers")
from models.huggingface import TEXT  # noqa: E402


@pytest.fixture(scope="module")
def llama():
    torch.manual_seed(0)
    return T.LlamaForCausalLM(T.LlamaConfig(**TEXT, num_key_value_heads=2)).eval()


@pytest.mark.parametrize("batch", [1, 2])
def test_tokens_match_transformers_generate(llama, batch):
    ids = torch.randint(0, TEXT["vocab_size"], (batch, 8))
    gen = ember.generate(llama, ids, max_new_tokens=16, chip="tiny", dtype="fp32")
    with torch.no_grad():
        ref = llama.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16,
                             do_sample=False)[:, ids.shape[1]:]
    assert gen.tokens.shape == (batch, 16) and gen.tokens.dtype == torch.int64
    assert torch.equal(gen.tokens, ref)
    assert len(gen.step_s) == 15 and gen.ttft_s > 0 and gen.tpot_s > 0
    assert gen.tokens_per_s == pytest.approx(batch / gen.tpot_s)
    step = gen.breakdown["step"]
    assert sum(step.values()) == pytest.approx(gen.tpot_s, rel=1e-6)
    # the greedy pick runs on the chip: in a step, the position goes up and the token ids come
    # down (int32 on the chip), and the logits never cross the host link
    link = (4 + batch * 4) / ember.load_chip("tiny").host_link.bytes_per_s
    assert step["host_link"] == pytest.approx(link, rel=0.05) and step["host"] == 0.0
    for run in gen.runs.values():
        assert not [s.op for s in run.steps if s.kind == "host"]
        assert run.stats["engine_utilization"]["vec"] > 0


def test_the_multimodal_model_generates_from_every_modality():
    cfg = CONFIGS["multimodal-tiny"]
    model = build_multimodal(cfg)
    prompt = prefill_inputs(cfg)
    gen = ember.generate(model, prompt, max_new_tokens=6, chip="tiny", dtype="fp32")
    text, image, audio, video = prompt
    tokens = []
    with torch.no_grad():      # eager greedy decoding, the whole sequence each step
        for _ in range(6):
            token = model(text, image, audio, video)[0][:, -1].argmax(-1, keepdim=True)
            tokens.append(token)
            text = torch.cat([text, token], dim=1)
    assert torch.equal(gen.tokens, torch.cat(tokens, dim=1))
    assert gen.prompt_len == cfg.prefill_len and gen.max_cache_len == cfg.prefill_len + 5


def test_timing_only_on_the_meta_device():
    with torch.device("meta"):
        model = T.LlamaForCausalLM(T.LlamaConfig(**TEXT, num_key_value_heads=2)).eval()
    ids = torch.empty(1, 12, dtype=torch.int64, device="meta")
    gen = ember.generate(model, ids, max_new_tokens=3, chip="tiny", dtype="bf16", timing_only=True)
    assert gen.tokens is None and gen.ttft_s > 0 and len(gen.step_s) == 2
    assert gen.step_s[0] == gen.step_s[1]            # deterministic, and the cache is static


def test_bad_requests_are_refused_by_name(llama):
    ids = torch.randint(0, TEXT["vocab_size"], (1, 8))
    with pytest.raises(CacheTooShortError, match=r"prompt \(8 positions\) and 16 new tokens need 23 cache "
                                                 r"positions, but the cache holds 16"):
        ember.generate(llama, ids, max_new_tokens=16, chip="tiny", dtype="fp32", max_cache_len=16)
    with pytest.raises(CacheTooShortError, match="max_position_embeddings"):
        ember.generate(llama, torch.randint(0, 128, (1, 60)), max_new_tokens=16, chip="tiny", dtype="fp32")
    with pytest.raises(DeviceMemoryError, match=r"at batch 2048 with 47 cache positions does not fit tiny: weights "
                                                r"[0-9.]+ KiB \+ KV cache 23.5 MiB > 17.0 MiB"):
        ember.generate(llama, torch.randint(0, 128, (2048, 32)), max_new_tokens=16, chip="tiny", dtype="fp32")
    bert = T.BertModel(T.BertConfig(**TEXT)).eval()
    with pytest.raises(NotADecoderError, match="BertModel is not one"):
        ember.generate(bert, ids, max_new_tokens=4, chip="tiny")
    with pytest.raises(TypeError, match=r"\(batch, length\) torch.int64"):
        ember.generate(llama, ids.float(), max_new_tokens=4, chip="tiny")


def test_a_decode_step_keeps_everything_on_the_device():
    model, inputs = ember.load_model("models:multimodal-tiny-decode")
    cm = ember.compile(model, inputs, chip="tiny", dtype="bf16")
    with cm.session("sim") as sess:
        held = [sess.put(x) for x in inputs]
        sess.run(*held)
        run = sess.last_run
    assert not [s.op for s in run.steps if s.kind == "host"]
    assert run.breakdown["host_link"] == 0.0 and run.breakdown["host"] == 0.0
