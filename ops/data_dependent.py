"""Ops whose result size is the data's: boolean-mask indexing, `nonzero`, `masked_select`, and the
value of `.item()` (`aten._local_scalar_dense`) where a graph sizes tensors by it.

The chip runs static shapes, so the Program is compiled for the sizes the example inputs give
(`compiler/unbacked.py`): `x[mask]` keeps the example's count n of rows. The positions of the set
elements of a mask, in order, are a stable counting sort of the mask (set first) cut to its
first n (`selected_positions`); the rows are picked from them by indirect DMA. Each such op
checks on the chip that the data gives the size it was compiled for (`ember.expect`): the run
stops there, naming the op and its source line, when another input gives another count; a
timing-only run lists what it assumed instead (`RunResult.assumed`).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ops.concat import emit_concat
from ops.counting_sort import counting_sort
from ops.registry import Attr, Sample, Unsupported, define_op, lowers, samples

aten = torch.ops.aten


class DataSizeError(RuntimeError):
    """The data gives another size than the one a Program was compiled for."""


def check_size(x, equals: int, what: str) -> None:
    """Raise `DataSizeError` (saying what) where an element of `x` is not `equals`."""
    found = sorted({int(v) for v in np.asarray(x).reshape(-1)} - {equals})
    if found:
        raise DataSizeError(f"{what}; this input gives {found[0]}. Compile with an example input of that size.")


def _expect_reference(x, equals, what):
    check_size(x, equals, what)
    return np.asarray(x).copy()


def _expect_torch(x, equals, what):
    check_size(x.cpu().numpy(), equals, what)
    return x.clone()


expect = define_op(
    "expect", operands=("x",), attrs={"equals": Attr.INT, "what": Attr.STR},
    infer=lambda x, equals, what: x, reference=_expect_reference, torch_impl=_expect_torch, effects=True,
    doc="`x` itself, once every element of the integer tensor `x` is checked to equal `equals`: the "
        "size the Program was compiled for, which the data gave (the run stops with `what` when it "
        "differs). Kept when its result is unused.")


def expect_size(b, count, n: int) -> None:
    """Check on the chip that the integer `count` (one element) the data gives is n."""
    count = b.emit("reshape", b.cast(count, "i32"), shape=(1,))
    b.emit(expect, count, equals=n, what=f"{b.where()} was compiled for the example's size {n}")


def selected_positions(b, mask, n: int):
    """The i64 positions of the set elements of the 1-d boolean `mask`, in order: the first n
    of them, where the data sets n (checked on the chip)."""
    if n == 0:
        raise Unsupported("the example selects nothing: compile with an example that selects what a run will")
    if mask.shape[0] >= 1 << 24:
        raise Unsupported(f"a mask of {mask.shape[0]} elements (counted in fp32, exact below 2**24)")
    order = counting_sort(b, b.cast(mask, "i64"), 2, descending=True)      # set first, each in order
    expect_size(b, b.emit("reduce", b.cast(mask, "f32"), kind="sum", dims=(0,), keepdim=False, correction=0.0), n)
    return order if n == mask.shape[0] else b.emit("slice", order, starts=(0,), ends=(n,), steps=(1,))


def result_spec(b):
    """The node's result spec at the example's sizes; Unsupported where the example does not fix
    them (the model's weights on the meta device: nothing to run the example on)."""
    val = b.example_value()
    if not isinstance(val, torch.Tensor) or not all(isinstance(d, int) for d in val.shape):
        raise Unsupported("its result shape depends on the data, and no example input fixes it "
                          "(the graph does not run on the example: weights on the meta device?)")
    return b.result_spec()


def index_by_mask(b, x, mask, dim: int):
    """x[(:,) * dim + (mask,)]: the rows of `x` (its dims dim.. covered by `mask`) where `mask` is set."""
    k = mask.rank
    if k == 0 or tuple(x.shape[dim:dim + k]) != tuple(mask.shape):
        raise Unsupported(f"a boolean mask of shape {mask.shape} indexing dims {dim}.. of shape {x.shape}")
    out = result_spec(b)
    flat = math.prod(mask.shape)
    positions = selected_positions(b, b.emit("reshape", mask, shape=(flat,)), out.shape[dim])
    merged = x if k == 1 else b.emit("reshape", x, shape=(*x.shape[:dim], flat, *x.shape[dim + k:]))
    return b.emit("index_select", merged, positions, dim=dim)


@lowers(aten._local_scalar_dense.default)
def _item(b, x):
    value = b.example_value()
    if isinstance(value, float) or x.spec.is_float:
        raise Unsupported("a float read from the data into the graph's shapes")
    if not isinstance(value, (int, bool)):
        raise Unsupported("its value depends on the data, and the example's value is unknown")
    if not -(1 << 31) <= int(value) < 1 << 31:
        raise Unsupported(f"a value read from the data ({int(value)}) beyond the chip's int32")
    expect_size(b, x, int(value))
    return int(value)


@lowers(aten.nonzero.default)
def _nonzero(b, x):
    out = result_spec(b)
    flat = b.emit("reshape", x, shape=(x.spec.numel,))
    positions = selected_positions(b, b.emit("binary", flat, b.constant(0, x.dtype), kind="ne"), out.shape[0])
    coords, stride = [], x.spec.numel
    for size in x.shape:
        stride //= size
        c = b.emit("binary", positions, b.constant(stride, "i64"), kind="div_floor") if stride > 1 else positions
        c = b.emit("binary", c, b.constant(size, "i64"), kind="remainder")
        coords.append(b.emit("reshape", c, shape=(out.shape[0], 1)))
    return emit_concat(b, coords, 1)


@lowers(aten.masked_select.default)
def _masked_select(b, x, mask):
    shape = tuple(torch.broadcast_shapes(x.shape, mask.shape))
    n = math.prod(shape)
    x = b.emit("reshape", b.emit("broadcast", x, shape=shape) if x.shape != shape else x, shape=(n,))
    mask = b.emit("reshape", b.emit("broadcast", mask, shape=shape) if mask.shape != shape else mask, shape=(n,))
    return index_by_mask(b, x, mask, 0)


def _rows_kept(x, keep):
    return x[keep > 0] * 2.0


def _nonzero_of(x):
    return torch.nonzero(x > 0).float() + 1.0


def _masked_select_of(x, y):
    return torch.masked_select(x, y > 0) * 3.0


# the masks are fixed and the values fresh: a fresh input keeps the sizes the example gives
samples(
    Sample("bool-mask-rows", _rows_kept, lambda: (torch.randn(3, 5), torch.tensor([1.0, -1.0, 2.0]))),
    Sample("nonzero", _nonzero_of, lambda: ((torch.rand(2, 3) + 0.1) * torch.tensor([[1.0, -1.0, 1.0], [1.0, 1.0, -1.0]]),)),
    Sample("masked-select", _masked_select_of, lambda: (torch.randn(3, 4), torch.tensor([0.5, -1.0, 2.0, 1.0]))),
)
