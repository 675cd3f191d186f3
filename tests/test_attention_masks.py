"""fold-attention-masks: constant causal / all-true boolean masks become the attention op's own
attributes; any other mask stays, as an operand the attention kernel reads (the attention runs
on the chip either way)."""
from __future__ import annotations

import pytest
import torch

import ember
from compiler.passes.attention_masks import mask_pattern
from tests.helpers import rel_err

F = torch.nn.functional


class MaskedAttention(torch.nn.Module):
    """Self-attention whose boolean mask is built from positions, as transformers builds it."""

    def __init__(self, mask: str, heads: int = 2, dim: int = 32):
        super().__init__()
        self.mask, self.heads = mask, heads
        self.qkv = torch.nn.Linear(dim, 3 * dim)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        pos = torch.arange(n)
        if self.mask == "causal":
            keep = pos[None, :] <= pos[:, None]
        elif self.mask == "all":
            keep = pos[None, :] >= 0
        else:   # a sliding window of 3: not a pattern the op states by itself
            keep = (pos[None, :] <= pos[:, None]) & (pos[:, None] - pos[None, :] < 3)
        keep = keep[None, None].expand(b, 1, n, n)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=keep).transpose(1, 2).reshape(b, n, d)


@pytest.mark.parametrize("mask,causal,folded", [("causal", True, True), ("all", False, True),
                                                 ("window", False, False)])
def test_constant_masks_fold_into_the_op(mask, causal, folded):
    torch.manual_seed(0)
    model = MaskedAttention(mask).eval()
    cm = ember.compile(model, (torch.randn(2, 8, 32),), chip="tiny", dtype="fp32")
    tiled = cm.ir("tiled")
    attention = [line for line in tiled.splitlines() if '"ember.attention"' in line]
    assert attention and all(("xi1>" in line) != folded for line in attention)
    assert all(f"causal = {str(causal).lower()}" in line for line in attention)
    steps = [s for s in cm.program.steps if s["op"] == "attention"]
    assert steps and all(s["kind"] == "kernel" for s in steps)
    x = torch.randn(2, 8, 32)
    with torch.no_grad():
        ref = model(x)
    for device in ("sim", "cpu", "reference"):
        assert rel_err(cm.run(x, device=device), ref) <= 1e-4, device


def test_mask_patterns_are_top_left_aligned_like_torch():
    length, source = 3, 5
    tril = torch.ones(length, source, dtype=torch.bool).tril()
    assert mask_pattern(tril, length, source) == "causal"
    assert mask_pattern(tril[None, None].expand(2, 4, length, source), length, source) == "causal"
    assert mask_pattern(torch.ones(1, source, dtype=torch.bool), length, source) == "all"
    assert mask_pattern(torch.ones(length, source, dtype=torch.bool).triu(), length, source) is None
    bottom_right = torch.ones(length, source, dtype=torch.bool).tril(source - length)
    assert mask_pattern(bottom_right, length, source) is None
    padded = tril[None].repeat(2, 1, 1)
    padded[1, :, 0] = False            # one sequence of the batch has padding
    assert mask_pattern(padded, length, source) is None
