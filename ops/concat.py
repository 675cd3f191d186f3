"""Concatenation: `ember.concat` joins two tensors of one rank and element type along `dim`.

It takes two operands, not a variadic list: the dialect's IRDL definition binds every element of
a variadic operand to one type (an IRDL constraint variable), so a variadic concat of inputs of
different sizes would not re-parse. N inputs are a left-leaning chain of concats.

Lowers aten.cat (torch's type promotion is applied by casting first; legacy empty 1-d inputs are
dropped) and aten.stack (each input reshaped to size 1 at `dim`, then a concat).
"""
from __future__ import annotations

import numpy as np
import torch

from ops.registry import Attr, Sample, define_op, lowers, norm_dim, samples

aten = torch.ops.aten


def _infer(lhs, rhs, dim):
    inputs = [lhs, rhs]
    if not inputs:
        raise ValueError("concat needs at least one input")
    first = inputs[0]
    if not 0 <= dim < max(first.rank, 1) or first.rank == 0:
        raise ValueError(f"dim {dim} is out of range for rank {first.rank}")
    total = 0
    for x in inputs:
        if x.dtype != first.dtype:
            raise ValueError(f"inputs differ in element type: {first.dtype} and {x.dtype}")
        if x.rank != first.rank or any(a != c for i, (a, c) in enumerate(zip(x.shape, first.shape)) if i != dim):
            raise ValueError(f"input shapes {first.shape} and {x.shape} differ outside dim {dim}")
        total += x.shape[dim]
    return first.with_(shape=first.shape[:dim] + (total,) + first.shape[dim + 1:])


concat = define_op(
    "concat", operands=("lhs", "rhs"), attrs={"dim": Attr.INT}, infer=_infer,
    reference=lambda lhs, rhs, dim: np.concatenate([lhs, rhs], axis=dim),
    torch_impl=lambda lhs, rhs, dim: torch.cat([lhs, rhs], dim),
    doc="lhs then rhs along dimension `dim` (a non-negative index).")


def emit_concat(b, xs, dim):
    """Concatenate Values `xs` (non-empty) along `dim`; a single input is returned as is."""
    xs = list(xs)
    dim = norm_dim(dim, xs[0].rank)
    y = xs[0]
    for x in xs[1:]:
        y = b.emit(concat, y, x, dim=dim)
    return y


@lowers(aten.cat, aten.concat, aten.concatenate)
def _cat(b, tensors, dim=0):
    out = b.result_spec()
    xs = [b.cast(t, out.dtype) for t in tensors if not (t.rank == 1 and t.shape[0] == 0)]
    if not xs:
        return b.cast(tensors[0], out.dtype)
    dim = norm_dim(dim, out.rank)
    return emit_concat(b, [x for x in xs if x.shape[dim] > 0] or xs[:1], dim)


@lowers(aten.stack)
def _stack(b, tensors, dim=0):
    out = b.result_spec()
    dim = norm_dim(dim, out.rank)
    xs = []
    for t in tensors:
        t = b.cast(t, out.dtype)
        shape = t.shape[:dim] + (1,) + t.shape[dim:]
        xs.append(b.emit("reshape", t, shape=shape))
    return emit_concat(b, xs, dim)


def _kv_cache(cache, new, x):
    # append new keys to a cache; join image and text tokens; stack per-head outputs
    k = torch.cat([cache, new], dim=2)
    seq = torch.cat((x[:, :2], x, x[:, -1:]), 1)
    st = torch.stack([x, x * 2, -x], dim=-1) * 3
    return k + 1, seq * 2, st, torch.stack([x, x], 0)


samples(
    Sample("kv-cache-and-stack", _kv_cache,
           lambda: (torch.randn(1, 2, 5, 4), torch.randn(1, 2, 1, 4), torch.randn(2, 3, 4))),
    Sample("cat-promote", lambda x, i: torch.cat([x, i], dim=0) * 1.5,
           lambda: (torch.randn(2, 3), torch.randint(-4, 4, (1, 3)))),
)
