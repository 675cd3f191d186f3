"""Scaled dot-product attention: `ember.attention(query, key, value, mask?)` {causal, scale}.

query (..., Hq, L, E), key (..., Hk, S, E), value (..., Hk, S, Ev) -> (..., Hq, L, Ev):
softmax(query @ key^T * scale + mask) @ value, with
- grouped-query attention when Hk < Hq: Hk divides Hq and key/value head j serves query heads
  j * Hq/Hk ... (j + 1) * Hq/Hk - 1 (torch's `enable_gqa`, i.e. repeat_interleave);
- `mask` broadcastable to (..., Hq, L, S): i1 (true = attend) or additive, in query's type;
- `causal`: query i attends to keys j <= i (top-left aligned, torch's `tril(ones(L, S))`);
- rows with no key to attend to give zeros (torch's `_safe_softmax`).
Leading batch dims of query and key/value broadcast.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ops.registry import Attr, Sample, Unsupported, broadcast_shapes, define_op, lowers, samples
from ops.softmax import stable_softmax

aten = torch.ops.aten


def _infer(q, k, v, mask, causal, scale):
    if not q.is_float:
        raise ValueError(f"attention needs floating-point operands, got {q.dtype}")
    if len({q.dtype, k.dtype, v.dtype}) != 1:
        raise ValueError(f"query, key and value element types differ: {q.dtype}, {k.dtype}, {v.dtype}")
    if min(q.rank, k.rank, v.rank) < 2:
        raise ValueError("query, key and value need rank >= 2")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"query and key head sizes differ: {q.shape[-1]} and {k.shape[-1]}")
    if k.shape[:-1] != v.shape[:-1]:
        raise ValueError(f"key {k.shape} and value {v.shape} differ before the last dim")
    hq = q.shape[-3] if q.rank >= 3 else 1
    hk = k.shape[-3] if k.rank >= 3 else 1
    if hq % hk:
        raise ValueError(f"{hk} key/value heads do not divide {hq} query heads")
    batch = broadcast_shapes(q.shape[:-3], k.shape[:-3])
    heads = (hq,) if max(q.rank, k.rank) >= 3 else ()
    out = (*batch, *heads, q.shape[-2], v.shape[-1])
    if mask is not None:
        if mask.dtype != "i1" and mask.dtype != q.dtype:
            raise ValueError(f"mask must be i1 or {q.dtype}, got {mask.dtype}")
        scores = (*batch, *heads, q.shape[-2], k.shape[-2])
        if broadcast_shapes(mask.shape, scores) != scores:
            raise ValueError(f"mask shape {mask.shape} does not broadcast to the scores' {scores}")
    return q.with_(shape=out)


def _reference(q, k, v, mask, causal, scale):
    q, k, v = (np.asarray(t).astype(np.float64) for t in (q, k, v))
    if q.ndim >= 3 and k.ndim >= 3 and k.shape[-3] != q.shape[-3]:
        rep = q.shape[-3] // k.shape[-3]
        k, v = np.repeat(k, rep, axis=-3), np.repeat(v, rep, axis=-3)
    scores = np.matmul(q, np.swapaxes(k, -1, -2)) * scale
    length, source = scores.shape[-2:]
    if causal:
        scores = np.where(np.tril(np.ones((length, source), dtype=bool)), scores, -np.inf)
    if mask is not None:
        if mask.dtype == np.bool_:
            scores = np.where(mask, scores, -np.inf)
        else:
            scores = scores + mask.astype(np.float64)
    return np.matmul(stable_softmax(scores, -1), v)


def _torch_impl(q, k, v, mask, causal, scale):
    if causal and mask is not None:   # sdpa takes one or the other: fold causality into the mask
        length, source = q.shape[-2], k.shape[-2]
        keep = torch.ones(length, source, dtype=torch.bool, device=q.device).tril()
        mask = mask & keep if mask.dtype == torch.bool else mask.masked_fill(~keep, float("-inf"))
        causal = False
    gqa = q.dim() >= 3 and k.dim() >= 3 and k.shape[-3] != q.shape[-3]
    if q.shape[:-3] != k.shape[:-3]:   # leading batch dims broadcast
        batch = tuple(broadcast_shapes(q.shape[:-3], k.shape[:-3]))
        q, k, v = q.expand(*batch, *q.shape[-3:]), k.expand(*batch, *k.shape[-3:]), v.expand(*batch, *v.shape[-3:])
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=scale,
                                                            enable_gqa=gqa)


attention = define_op(
    "attention", operands=("query", "key", "value", "mask?"), attrs={"causal": Attr.BOOL, "scale": Attr.FLOAT},
    infer=_infer, reference=_reference, torch_impl=_torch_impl,
    doc="softmax(query @ key^T * scale + mask) @ value, optionally causal (top-left aligned), with "
        "grouped-query heads when key/value have fewer heads than query.")


def emit_attention(b, q, k, v, mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    if dropout_p:
        raise Unsupported(f"attention with dropout_p={dropout_p} (dropout is training-only)")
    dtype = b.result_spec(0).dtype
    q, k, v = (b.cast(t, dtype) for t in (q, k, v))
    if q.rank < 2 or k.rank < 2:
        raise Unsupported("attention on operands of rank < 2")
    hq = q.shape[-3] if q.rank >= 3 else 1
    hk = k.shape[-3] if k.rank >= 3 else 1
    if hq != hk and not enable_gqa and hk != 1:
        raise ValueError(f"{hk} key/value heads and {hq} query heads without enable_gqa")
    if mask is not None and mask.dtype != "i1":
        mask = b.cast(mask, dtype)
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    out = b.emit(attention, q, k, v, mask, causal=bool(is_causal), scale=float(scale))
    want = b.result_spec(0).shape
    return out if out.shape == want else b.emit("reshape", out, shape=want)


@lowers(aten.scaled_dot_product_attention.default)
def _sdpa(b, q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, *, scale=None, enable_gqa=False):
    return emit_attention(b, q, k, v, attn_mask, dropout_p, is_causal, scale, enable_gqa)


@lowers(aten._scaled_dot_product_flash_attention_for_cpu.default)
def _sdpa_flash_cpu(b, q, k, v, dropout_p=0.0, is_causal=False, *, attn_mask=None, scale=None):
    return emit_attention(b, q, k, v, attn_mask, dropout_p, is_causal, scale), None


@lowers(aten._scaled_dot_product_efficient_attention.default)
def _sdpa_efficient(b, q, k, v, attn_bias, compute_log_sumexp, dropout_p=0.0, is_causal=False, *, scale=None):
    return emit_attention(b, q, k, v, attn_bias, dropout_p, is_causal, scale), None, None, None


@lowers(aten._scaled_dot_product_flash_attention.default)
def _sdpa_flash(b, q, k, v, dropout_p=0.0, is_causal=False, return_debug_mask=False, *, scale=None):
    return (emit_attention(b, q, k, v, None, dropout_p, is_causal, scale),) + (None,) * 8


# ----------------------------------------------------------------------------- samples

_F = torch.nn.functional


def _causal_gqa(q, k, v):
    return _F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)


def _masks(q, k, v, bias):
    keep = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).tril(diagonal=2)
    a = _F.scaled_dot_product_attention(q, k, v, attn_mask=keep, scale=0.3)
    return a + _F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


def _padding_mask(q, k, v, lengths):
    # (B, 1, 1, S) key padding mask from a runtime tensor, as encoder models build it
    keep = (torch.arange(k.shape[-2]) < lengths[:, None])[:, None, None, :]
    return _F.scaled_dot_product_attention(q, k, v, attn_mask=keep)


def _internal_variants(q, k, v, bias):
    # (the CUDA-only _scaled_dot_product_efficient_attention / _flash_attention cannot run here)
    a = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, True)[0]
    return a + torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, attn_mask=bias, scale=0.2)[0]


def _masked_out_query(q, k, v):
    # query row 2 may attend to nothing: its output is zeros, as torch's
    keep = torch.arange(q.shape[-2])[:, None] != 2
    return _F.scaled_dot_product_attention(q, k, v, attn_mask=keep)


samples(
    Sample("causal-gqa", _causal_gqa,
           lambda: (torch.randn(2, 4, 6, 8), torch.randn(2, 2, 6, 8), torch.randn(2, 2, 6, 8))),
    Sample("bool-and-float-mask", _masks,
           lambda: (torch.randn(1, 2, 5, 8), torch.randn(1, 2, 7, 8), torch.randn(1, 2, 7, 4), torch.randn(5, 7))),
    Sample("padding-mask-decode", _padding_mask,
           lambda: (torch.randn(2, 3, 1, 8), torch.randn(2, 3, 9, 8), torch.randn(2, 3, 9, 8),
                    torch.randint(1, 10, (2,)))),
    Sample("causal-rectangular-3d", lambda q, k, v: _F.scaled_dot_product_attention(q, k, v, is_causal=True),
           lambda: (torch.randn(3, 4, 16), torch.randn(3, 6, 16), torch.randn(3, 6, 16))),
    Sample("fully-masked-row", _masked_out_query,
           lambda: (torch.randn(1, 2, 4, 8), torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8))),
    Sample("causal-bf16", lambda q, k, v: _F.scaled_dot_product_attention(q, k, v, is_causal=True),
           lambda: tuple(torch.randn(1, 2, 6, 16).to(torch.bfloat16) for _ in range(3)), rtol=2e-2),
    Sample("flash-attention-for-cpu", _internal_variants,
           lambda: (torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 8), torch.randn(1, 1, 4, 4))),
)
