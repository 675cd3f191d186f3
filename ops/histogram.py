"""Counting values against edges: `torch.histc` (a mixture-of-experts layer's rows per expert) and
`torch.bucketize` (patch positions of a vision encoder), as compares of every value with every
edge and a sum over the edges or the values; no op of their own, so they run where compares and
sums run (on the chip).
"""
from __future__ import annotations

import numpy as np
import torch

from ops.registry import DTYPE_TO_TORCH, Sample, Unsupported, lowers, samples

aten = torch.ops.aten


def _sum(b, x, dim):
    return b.emit("reduce", x, kind="sum", dims=(dim,), keepdim=False, correction=0.0)


@lowers(aten.histc.default)
def _histc(b, x, bins=100, min=0, max=0):
    """Counts of x in `bins` equal bins over [min, max] (the last bin closed; values outside are
    not counted), as a compare of every value with every bin and a sum over the values: the
    row counts of a mixture-of-experts layer's experts."""
    lo, hi = float(min), float(max)
    if lo == hi:
        raise Unsupported("histc with min == max (its range is the data's minimum and maximum)")
    out = b.result_spec().dtype
    if not x.spec.is_float:          # integer values (expert ids) compare exactly in fp32 below 2**24
        x = b.cast(x, "f32")
    # bin i holds edges[i] <= x < edges[i + 1], the last one x <= max: torch's edges (linspace)
    edges = torch.linspace(lo, hi, bins + 1, dtype=DTYPE_TO_TORCH[x.dtype]).double().numpy()
    upper = np.append(edges[1:-1], np.inf)
    flat = b.emit("reshape", x, shape=(x.spec.numel, 1))
    inside = b.emit("binary", flat, b.constant(hi, x.dtype), kind="le")
    above = b.emit("binary", flat, b.constant(edges[:-1], x.dtype), kind="ge")
    below = b.emit("binary", flat, b.constant(upper, x.dtype), kind="lt")
    hits = b.emit("binary", b.emit("binary", above, below, kind="and"), inside, kind="and")
    by_bin = b.emit("transpose", b.cast(hits, x.dtype), perm=(1, 0))     # [bins, values]: a sum along rows
    return b.cast(_sum(b, by_bin, 1), out)


@lowers(aten.bucketize.Tensor)
def _bucketize(b, x, boundaries, *, out_int32=False, right=False):
    """The bucket of each value: how many boundaries lie below it (`right`: at or below it)."""
    if boundaries.rank != 1:
        raise Unsupported(f"bucketize with boundaries of shape {boundaries.shape}")
    dtype = "f32" if x.spec.is_float or boundaries.spec.is_float else "i32"
    column = b.emit("reshape", b.cast(x, dtype), shape=(*x.shape, 1))
    below = b.emit("binary", column, b.cast(boundaries, dtype), kind="ge" if right else "gt")
    return b.cast(_sum(b, b.cast(below, "f32"), x.rank), b.result_spec().dtype)


samples(
    Sample("histc", lambda x, ids: (torch.histc(x, bins=7, min=-1, max=1.5),
                                    torch.histc(ids.float(), bins=5, min=0, max=4)),
           lambda: (torch.randn(40), torch.randint(0, 5, (3, 8)))),
    Sample("bucketize", lambda x, edges: (torch.bucketize(x, edges), torch.bucketize(x, edges, right=True),
                                          torch.bucketize(x.clamp(0, 1), torch.arange(0, 1, 0.25), right=True)),
           lambda: (torch.randn(3, 7), torch.sort(torch.randn(5)).values)),
)
