"""Sliding windows: `x.unfold(dim, size, step)` (time-series patching, PatchTST-style models).

The result replaces dimension `dim` (length L) by the n = (L - size) // step + 1 window starts and
appends a trailing dimension of `size` elements. No op of its own: `ember.index_select` gathers the
n * size positions `start * step + offset` along `dim`, `ember.reshape` splits them into (n, size),
and `ember.transpose` moves the window elements last.
"""
from __future__ import annotations

import numpy as np
import torch

from ops.registry import Sample, Unsupported, lowers, norm_dim, samples

aten = torch.ops.aten


def window_positions(length: int, size: int, step: int) -> np.ndarray:
    """The (n, size) input positions of each window along the unfolded dimension."""
    n = (length - size) // step + 1
    return np.arange(n)[:, None] * step + np.arange(size)[None, :]


@lowers(aten.unfold.default)
def _unfold(b, x, dimension, size, step):
    if x.rank == 0:
        raise Unsupported("unfold of a 0-d tensor")
    if size <= 0 or step <= 0:
        raise Unsupported(f"unfold with size {size} and step {step}")
    d = norm_dim(dimension, x.rank)
    positions = window_positions(x.shape[d], size, step)
    n = positions.shape[0]
    y = b.emit("index_select", x, b.constant(positions.reshape(-1), "i64"), dim=d)
    split = (*x.shape[:d], n, size, *x.shape[d + 1:])
    if y.shape != split:
        y = b.emit("reshape", y, shape=split)
    if d + 1 != len(split) - 1:   # move the window elements (axis d + 1) last
        perm = [i for i in range(len(split)) if i != d + 1] + [d + 1]
        y = b.emit("transpose", y, perm=perm)
    return y


def _patches(x):
    """PatchTST's patching: (batch, time, channels) -> (batch, channels, patches, patch length)."""
    return x.transpose(-1, -2).unfold(-1, 4, 2) * 2.0


samples(
    Sample("unfold-patches", _patches, lambda: (torch.randn(2, 11, 3),)),
    Sample("unfold-middle-dim", lambda x: x.unfold(1, 3, 3) + x.unfold(1, 3, 3).flip(-1),
           lambda: (torch.randn(2, 10, 4),)),
    Sample("unfold-overlapping", lambda x: x.unfold(0, 5, 1).sum(-1), lambda: (torch.randn(9),)),
)
