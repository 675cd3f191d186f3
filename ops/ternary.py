"""Ternary elementwise ops: `ember.ternary` with a `kind` (select by a predicate)."""
from __future__ import annotations

import numpy as np
import torch

from ops.registry import Attr, Sample, broadcast_shapes, define_op, lowers, samples

aten = torch.ops.aten

TERNARY_KINDS = {"where": lambda c, x, y: np.where(c, x, y)}
TORCH_TERNARY_KINDS = {"where": torch.where}


def _infer(a, b, c, kind):
    if kind not in TERNARY_KINDS:
        raise ValueError(f"unknown ternary kind '{kind}'")
    if a.dtype != "i1":
        raise ValueError(f"the predicate of 'where' must be i1, got {a.dtype}")
    if b.dtype != c.dtype:
        raise ValueError(f"selected operands differ in element type: {b.dtype} and {c.dtype}")
    return b.with_(shape=broadcast_shapes(a.shape, b.shape, c.shape))


ternary = define_op(
    "ternary", operands=("first", "second", "third"), attrs={"kind": Attr.STR}, infer=_infer,
    reference=lambda a, b, c, kind: TERNARY_KINDS[kind](a, b, c),
    torch_impl=lambda a, b, c, kind: TORCH_TERNARY_KINDS[kind](a, b, c),
    doc="Elementwise `kind`(first, second, third); `where` selects second where first is true, else third.")


@lowers(aten.where.self, aten.where.ScalarSelf, aten.where.ScalarOther, aten.where.Scalar)
def _where(b, cond, x, y):
    dtype = b.result_spec().dtype
    return b.emit(ternary, b.cast(cond, "i1"), b.scalar_or_value(x, dtype), b.scalar_or_value(y, dtype), kind="where")


@lowers(aten.masked_fill.Scalar, aten.masked_fill.Tensor)
def _masked_fill(b, x, mask, value):
    dtype = b.result_spec().dtype
    return b.emit(ternary, b.cast(mask, "i1"), b.scalar_or_value(value, dtype), b.cast(x, dtype), kind="where")


samples(
    Sample("where-and-masked-fill", lambda x, y: torch.where(x > 0, x, y).masked_fill(y > 0.5, -3.0),
           lambda: (torch.randn(4, 6), torch.randn(1, 6))),
)
