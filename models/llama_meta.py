"""A Llama-2-7B-shaped Hugging Face causal LM on the meta device: no weights in memory, for
timing-only compiles and simulations of a real model's shape (`models:hf-llama-2-7b`).

The sizes are those of meta-llama/Llama-2-7b-hf's config.json: 32 layers, hidden 4096, 32
attention heads with as many key/value heads (multi-head attention), MLP 11008 (SwiGLU),
vocabulary 32000, 4096 positions, RMSNorm eps 1e-5.
"""
from __future__ import annotations

import torch

from models.registry import register_model

LLAMA_2_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                  num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5)
#: prompt positions of the example inputs
PROMPT_LEN = 2048


def llama_2_7b(prompt_len: int = PROMPT_LEN, batch: int = 1):
    """`(LlamaForCausalLM on meta, (input_ids,))` with the Llama-2-7B shape."""
    import transformers
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        with torch.device("meta"):
            model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA_2_7B)).eval()
    finally:
        transformers.logging.set_verbosity(verbosity)
    return model, (torch.empty(batch, prompt_len, dtype=torch.int64, device="meta"),)


@register_model("hf-llama-2-7b", meta=True)
def hf_llama_2_7b():
    """[text] Llama-2-7B-shaped LlamaForCausalLM on the meta device, a 2048-token prompt."""
    return llama_2_7b()
