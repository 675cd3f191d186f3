"""A Qwen3-30B-A3B-shaped mixture-of-experts causal LM on the meta device: no weights in memory,
for timing-only compiles and simulations of a 2026-scale MoE decoder (`models:hf-qwen3-moe-30b-a3b`).

The sizes are those of Qwen/Qwen3-30B-A3B's config.json: 48 layers, hidden 2048, 32 query heads
of 128 and 4 key/value heads, 128 experts per layer of which each token takes 8 (SwiGLU, 768
wide, the top-k weights renormalized), no shared expert, vocabulary 151936, RMSNorm eps 1e-6,
RoPE theta 1e6. Its experts run as transformers' grouped_mm experts (its default).
"""
from __future__ import annotations

import torch

from models.registry import register_model

QWEN3_30B_A3B = dict(hidden_size=2048, intermediate_size=6144, moe_intermediate_size=768, num_hidden_layers=48,
                     num_attention_heads=32, num_key_value_heads=4, head_dim=128, num_experts=128,
                     num_experts_per_tok=8, norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[],
                     vocab_size=151936, max_position_embeddings=40960, rms_norm_eps=1e-6, rope_theta=1e6,
                     tie_word_embeddings=False)
#: prompt positions of the example inputs
PROMPT_LEN = 2048


def qwen3_moe(prompt_len: int = PROMPT_LEN, batch: int = 1, **overrides):
    """`(Qwen3MoeForCausalLM on meta, (input_ids,))` with the Qwen3-30B-A3B shape (`overrides`:
    config fields to change, e.g. fewer layers)."""
    import transformers
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        with torch.device("meta"):
            config = transformers.Qwen3MoeConfig(**{**QWEN3_30B_A3B, **overrides})
            model = transformers.Qwen3MoeForCausalLM(config).eval()
    finally:
        transformers.logging.set_verbosity(verbosity)
    return model, (torch.empty(batch, prompt_len, dtype=torch.int64, device="meta"),)


@register_model("hf-qwen3-moe-30b-a3b", meta=True)
def hf_qwen3_moe_30b_a3b():
    """[text] Qwen3-30B-A3B-shaped Qwen3MoeForCausalLM (128 experts, 8 per token) on the meta device, a 2048-token prompt."""
    return qwen3_moe(use_cache=False)
