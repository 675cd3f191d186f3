"""Sorting small integer keys by counting: the sort of a mixture-of-experts layer's expert ids.

A sort of n keys by the vector core's selection (`topk` with k = n) makes n passes over the keys.
When the keys are known to lie in [0, m) with m small (they are the positions `topk` or an
argmax picked along a dim of size m: expert ids), a counting sort does the same work in a few
passes over an n x m table, spread over every PE:

    hits[i, v]  = key_i == v                        (0 or 1, fp32: counts stay exact below 2**24)
    seen[i, v]  = hits[0..i, v] summed               (a scan along the keys)
    before[v]   = how many keys are smaller than v   (the counts' running sum, less the counts)
    place_i     = before[key_i] + seen[i, key_i] - 1
    order[place_i] = i                               (a scatter)

The order is stable (equal keys keep their order), which is one of the orders torch's sort may
give. A descending sort counts the keys m - 1 - key.
"""
from __future__ import annotations

import numpy as np
import torch

from ops.registry import Sample, samples

#: The largest key range counted: beyond it the n x m table outweighs n selection passes.
MAX_KEYS = 4096
#: Value-preserving ops a key bound is traced through.
_THROUGH = ("reshape", "cast")


def key_bound(b, x) -> int | None:
    """m when every value of the integer tensor `x` is a position in [0, m) that topk or an
    arg_reduce picked (traced back through reshapes and casts), else None."""
    if x.spec.is_float:
        return None
    made = b.producer(x)
    while made is not None and made[0] in _THROUGH:
        made = b.producer(made[2][0])
    if made is None or made[0] not in ("topk", "arg_reduce"):
        return None
    name, attrs, operands = made
    src = operands[0]
    return src.shape[attrs["dim"]] if src.rank else 1


def counting_sort(b, x, bound: int, descending: bool):
    """The positions that sort the 1-d integer keys `x` (each in [0, bound)), stably, as i64."""
    n = x.shape[0]
    keys = b.cast(x, "f32")
    if descending:
        keys = b.emit("binary", b.constant(bound - 1, "f32"), keys, kind="sub")
    column = b.emit("reshape", keys, shape=(n, 1))
    hits = b.cast(b.emit("binary", column, b.constant(np.arange(bound), "f32"), kind="eq"), "f32")  # [n, m]
    seen_by_key = b.emit("scan", b.emit("transpose", hits, perm=(1, 0)), kind="sum", dim=1)          # [m, n]
    seen = b.emit("transpose", seen_by_key, perm=(1, 0))
    counts = b.emit("reshape", b.emit("slice", seen_by_key, starts=(0, n - 1), ends=(bound, n), steps=(1, 1)),
                    shape=(bound,))                                                                   # [m]
    before = b.emit("binary", b.emit("scan", counts, kind="sum", dim=0), counts, kind="sub")
    start = _sum(b, b.emit("binary", hits, before, kind="mul"), 1)                                   # [n]
    rank = _sum(b, b.emit("binary", hits, seen, kind="mul"), 1)
    place = b.cast(b.emit("binary", b.emit("binary", start, rank, kind="add"), b.constant(1, "f32"), kind="sub"),
                   "i64")
    order = b.constant(np.zeros(n, np.int64), "i64")
    return b.emit("index_put", order, place, b.constant(np.arange(n), "i64"), dim=0, accumulate=False)


def _sum(b, x, dim):
    return b.emit("reduce", x, kind="sum", dims=(dim,), keepdim=False, correction=0.0)


def _sorted_expert_ids(logits):
    picked = torch.topk(logits, 3, dim=-1).indices.reshape(-1)
    up, up_order = torch.sort(picked, stable=True)
    down, down_order = torch.sort(picked, descending=True, stable=True)
    return up, up_order, down, down_order


samples(Sample("counting-sort-of-expert-ids", _sorted_expert_ids, lambda: (torch.randn(9, 6),)))
