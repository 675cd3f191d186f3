"""Reorders: `ember.flip` reverses dimensions; aten.roll lowers to slices and a concat."""
from __future__ import annotations

import numpy as np
import torch

from ops.registry import Attr, Sample, define_op, lowers, norm_dim, samples

aten = torch.ops.aten


def _infer(x, dims):
    if len(set(dims)) != len(dims) or any(not 0 <= d < x.rank for d in dims):
        raise ValueError(f"dims {dims} are not distinct dimensions of a rank {x.rank} tensor")
    return x


flip = define_op(
    "flip", operands=("input",), attrs={"dims": Attr.INTS}, infer=_infer,
    reference=lambda x, dims: np.flip(x, tuple(dims)).copy() if dims else x,
    torch_impl=lambda x, dims: torch.flip(x, dims) if dims else x,
    doc="The input with the order of its elements reversed along each of `dims`.")


@lowers(aten.flip)
def _flip(b, x, dims):
    dims = sorted({norm_dim(d, x.rank) for d in dims}) if x.rank else []
    dims = [d for d in dims if x.shape[d] > 1]
    return b.emit(flip, x, dims=dims) if dims else x


def _roll_dim(b, x, shift, dim):
    size = x.shape[dim]
    shift = shift % size if size else 0
    if shift == 0:
        return x
    from ops.slice import emit_slice
    head = emit_slice(b, x, dim, size - shift, size)
    tail = emit_slice(b, x, dim, 0, size - shift)
    return b.emit("concat", head, tail, dim=dim)


@lowers(aten.roll)
def _roll(b, x, shifts, dims=()):
    shifts = [shifts] if isinstance(shifts, int) else [int(s) for s in shifts]
    dims = [dims] if isinstance(dims, int) else [int(d) for d in dims]
    if not dims:
        shape = x.shape
        flat = b.emit("reshape", x, shape=(int(np.prod(shape)),)) if x.rank != 1 else x
        y = _roll_dim(b, flat, shifts[0], 0)
        return y if y.shape == shape else b.emit("reshape", y, shape=shape)
    if len(shifts) != len(dims):
        raise ValueError(f"roll shifts {shifts} and dims {dims} differ in length")
    for s, d in zip(shifts, dims):
        x = _roll_dim(b, x, s, norm_dim(d, x.rank))
    return x


samples(
    Sample("flip", lambda x: torch.flip(x, (0, -1)) + x.flip(1), lambda: (torch.randn(3, 4, 5),)),
    Sample("roll", lambda x: torch.roll(x, 2, 1) + torch.roll(x, (-1, 3), (0, 2)) + torch.roll(x, 5),
           lambda: (torch.randn(3, 4, 5),)),
)
