"""Tensors made from a shape and a value: full, zeros, ones, empty, scalar_tensor, their `*_like` and
`new_*` forms, and the functional fill.

When nothing they depend on is computed by the model, the importer folds these at import time. This
family covers the rest: a `*_like` of a tensor the model computes (only its shape and element type
matter), and factories too large to fold. Each lowers to an inline 0-d `ember.constant` broadcast to
the result shape (`ember.broadcast`), or for `fill.Tensor` the given 0-d value broadcast; no op of
its own. `empty` tensors are zeros (any content is valid).
"""
from __future__ import annotations

import torch

from ops.registry import Sample, Unsupported, lowers, samples

aten = torch.ops.aten

_ZERO = {aten.zeros_like.default, aten.empty_like.default, aten.new_zeros.default, aten.new_empty.default,
         aten.zeros.default, aten.empty.memory_format}
_ONE = {aten.ones_like.default, aten.new_ones.default, aten.ones.default}


def _arguments(b, args, kwargs) -> dict:
    names = [a.name for a in b.node.target._schema.arguments]
    return {**dict(zip(names, args)), **kwargs}


def _filled(b, value):
    out = b.result_spec()
    if hasattr(value, "spec"):   # a 0-d tensor computed by the model
        if value.rank != 0:
            raise Unsupported(f"fill with a value of shape {value.shape}")
        scalar = b.cast(value, out.dtype)
    elif isinstance(value, (bool, int, float)):
        scalar = b.constant(value, out.dtype)
    else:
        raise Unsupported(f"fill value {value!r} of type {type(value).__name__}")
    return scalar if out.shape == () else b.emit("broadcast", scalar, shape=out.shape)


@lowers(aten.full_like.default, aten.zeros_like.default, aten.ones_like.default, aten.empty_like.default,
        aten.new_full.default, aten.new_zeros.default, aten.new_ones.default, aten.new_empty.default,
        aten.fill.Scalar, aten.fill.Tensor, aten.full.default, aten.zeros.default, aten.ones.default,
        aten.empty.memory_format, aten.scalar_tensor.default)
def _fill(b, *args, **kwargs):
    target = b.node.target
    if target in _ZERO:
        return _filled(b, 0)
    if target in _ONE:
        return _filled(b, 1)
    a = _arguments(b, args, kwargs)
    for name in ("fill_value", "value", "s"):
        if name in a:
            return _filled(b, a[name])
    raise Unsupported(f"{target} without a fill value")


def _likes(x):
    y = x * torch.full_like(x, 2.5) + torch.ones_like(x) - torch.zeros_like(x, dtype=torch.int32)
    return y + x.new_full((3, 4), 7.0) * x.new_ones((3, 4)) + torch.empty_like(x).zero_()


def _mask_like(x):
    keep = torch.full_like(x, True, dtype=torch.bool) & (x > 0)
    return torch.where(keep, x, torch.full_like(x, -1.0)) + x.sum().fill_(3.0)


samples(
    Sample("like-factories", _likes, lambda: (torch.randn(3, 4),)),
    Sample("bool-and-fill", _mask_like, lambda: (torch.randn(2, 5),)),
    Sample("int-full-like", lambda i: i + torch.full_like(i, 3) * torch.ones_like(i, dtype=torch.int64),
           lambda: (torch.randint(-5, 5, (4, 3), dtype=torch.int32),)),
)
