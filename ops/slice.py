"""Slices: `ember.slice` takes a strided box of a tensor (a view of its buffer on the chip).

One op covers every dimension: `starts`, `ends` and `steps` hold one entry per dimension, already
clamped to [0, size] as torch clamps them, with `steps` >= 1. Lowers aten.slice, select, narrow,
split / split_with_sizes / chunk / unbind / tensor_split (several slices), and slice_scatter /
select_scatter with step 1 (slices and a concat).
"""
from __future__ import annotations

import torch

from ops.concat import emit_concat
from ops.registry import Attr, Sample, Unsupported, define_op, lowers, norm_dim, samples

aten = torch.ops.aten


def _infer(x, starts, ends, steps):
    if not len(starts) == len(ends) == len(steps) == x.rank:
        raise ValueError(f"starts {starts}, ends {ends} and steps {steps} need one entry per dimension of {x.shape}")
    shape = []
    for size, s, e, k in zip(x.shape, starts, ends, steps):
        if k < 1:
            raise ValueError(f"steps {steps} must be >= 1")
        if not 0 <= s <= e <= size:
            raise ValueError(f"slice [{s}:{e}] is outside [0, {size}] (or reversed)")
        shape.append((e - s + k - 1) // k)
    return x.with_(shape=tuple(shape))


def _reference(x, starts, ends, steps):
    return x[tuple(slice(s, e, k) for s, e, k in zip(starts, ends, steps))]


slice_op = define_op(
    "slice", operands=("input",), attrs={"starts": Attr.INTS, "ends": Attr.INTS, "steps": Attr.INTS},
    infer=_infer, reference=_reference, torch_impl=_reference,   # basic indexing: a view in torch
    doc="input[starts[0]:ends[0]:steps[0], ...]: one clamped [start, end) range and step >= 1 per dimension.")


def _clamp(index, size, default):
    if index is None:
        return default
    index = int(index)
    if index < 0:
        index += size
    return min(max(index, 0), size)


def emit_slice(b, x, dim, start=None, end=None, step=1):
    """`x` sliced along `dim` as torch's `x.slice(dim, start, end, step)` (clamped), or `x` when whole."""
    if x.rank == 0:
        raise ValueError("cannot slice a 0-d tensor")
    dim = norm_dim(dim, x.rank)
    step = int(step)
    if step < 1:
        raise Unsupported(f"slice with step {step} (torch requires a positive step)")
    size = x.shape[dim]
    s = _clamp(start, size, 0)
    e = max(_clamp(end, size, size), s)
    if s == 0 and e == size and step == 1:
        return x
    starts, ends, steps = [0] * x.rank, list(x.shape), [1] * x.rank
    starts[dim], ends[dim], steps[dim] = s, e, step
    return b.emit(slice_op, x, starts=starts, ends=ends, steps=steps)


def _reshape(b, x, shape):
    shape = tuple(shape)
    return x if x.shape == shape else b.emit("reshape", x, shape=shape)


@lowers(aten.slice.Tensor, aten.slice_copy.Tensor)
def _slice(b, x, dim=0, start=None, end=None, step=1):
    return emit_slice(b, x, dim, start, end, step)


@lowers(aten.select.int, aten.select_copy.int)
def _select(b, x, dim, index):
    dim = norm_dim(dim, x.rank)
    size = x.shape[dim]
    if not -size <= index < size:
        raise ValueError(f"index {index} is out of range for dimension {dim} of size {size}")
    index %= size
    y = emit_slice(b, x, dim, index, index + 1)
    return _reshape(b, y, x.shape[:dim] + x.shape[dim + 1:])


@lowers(aten.narrow.default, aten.narrow_copy.default)
def _narrow(b, x, dim, start, length):
    if not isinstance(start, int):
        raise Unsupported("narrow with a tensor start")
    dim = norm_dim(dim, x.rank)
    if start < 0:
        start += x.shape[dim]
    return emit_slice(b, x, dim, start, start + length)


def _pieces(b, x, dim, sizes):
    dim = norm_dim(dim, x.rank)
    out, at = [], 0
    for n in sizes:
        out.append(emit_slice(b, x, dim, at, at + n))
        at += n
    return out


@lowers(aten.split.Tensor, aten.split_copy.Tensor, aten.unsafe_split.Tensor)
def _split(b, x, split_size, dim=0):
    size = x.shape[norm_dim(dim, x.rank)]
    split_size = int(split_size)
    sizes = [min(split_size, size - i) for i in range(0, size, split_size)] if split_size else [0]
    return _pieces(b, x, dim, sizes or [0])


@lowers(aten.split_with_sizes, aten.split_with_sizes_copy, aten.unsafe_split_with_sizes, aten.split.sizes)
def _split_with_sizes(b, x, split_sizes, dim=0):
    return _pieces(b, x, dim, [int(s) for s in split_sizes])


@lowers(aten.chunk.default)
def _chunk(b, x, chunks, dim=0):
    size = x.shape[norm_dim(dim, x.rank)]
    per = -(-size // chunks) if size else 0
    sizes = [min(per, size - i) for i in range(0, size, per)] if per else [0]
    return _pieces(b, x, dim, sizes)


@lowers(aten.tensor_split.sections, aten.tensor_split.indices)
def _tensor_split(b, x, sections_or_indices, dim=0):
    size = x.shape[norm_dim(dim, x.rank)]
    if isinstance(sections_or_indices, int):
        n = sections_or_indices
        sizes = [size // n + 1] * (size % n) + [size // n] * (n - size % n)
        return _pieces(b, x, dim, sizes)
    bounds = [0] + [_clamp(i, size, size) for i in sections_or_indices] + [size]
    return [emit_slice(b, x, dim, s, max(s, e)) for s, e in zip(bounds, bounds[1:])]


@lowers(aten.unbind.int, aten.unbind_copy.int)
def _unbind(b, x, dim=0):
    dim = norm_dim(dim, x.rank)
    rest = x.shape[:dim] + x.shape[dim + 1:]
    return [_reshape(b, emit_slice(b, x, dim, i, i + 1), rest) for i in range(x.shape[dim])]


def _scatter_range(b, x, src, dim, start, end):
    """`x` with its [start, end) range along `dim` replaced by `src` (same extent)."""
    dtype = b.result_spec().dtype
    x, src = b.cast(x, dtype), b.cast(src, dtype)
    parts = [emit_slice(b, x, dim, 0, start), src, emit_slice(b, x, dim, end, None)]
    parts = [p for p in parts if p.shape[dim] > 0]
    return emit_concat(b, parts, dim)


@lowers(aten.slice_scatter.default)
def _slice_scatter(b, x, src, dim=0, start=None, end=None, step=1):
    dim = norm_dim(dim, x.rank)
    if step != 1:
        raise Unsupported(f"slice_scatter with step {step}")
    size = x.shape[dim]
    s = _clamp(start, size, 0)
    e = max(_clamp(end, size, size), s)
    return _scatter_range(b, x, src, dim, s, e)


@lowers(aten.select_scatter.default)
def _select_scatter(b, x, src, dim, index):
    dim = norm_dim(dim, x.rank)
    index %= x.shape[dim]
    src = _reshape(b, src, x.shape[:dim] + (1,) + x.shape[dim + 1:])
    return _scatter_range(b, x, src, dim, index, index + 1)


def _rotary(x):
    # rotate_half as in Llama-style rotary embeddings, plus a strided slice
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    return torch.cat((-x2, x1), dim=-1) * x, x[:, 1:-1:2] * 2


def _splits(x):
    q, k, v = x.split(8, dim=-1)
    a, b_ = x.chunk(2, dim=1)
    u = x.unbind(0)
    p, r = torch.split(x, [5, 19], dim=2)
    return q * k + v, a - b_, u[1] * u[2], p * 2, r * 3


def _scatter(x, y):
    x = torch.slice_scatter(x, y, dim=1, start=2, end=5)
    return torch.select_scatter(x, y[:, 0] * 2, 1, -1) + 1, torch.slice_scatter(x, y * 3, 1, 3)


samples(
    Sample("rotate-half", _rotary, lambda: (torch.randn(2, 7, 8),)),
    Sample("select-narrow", lambda x: (x[:, -1] + x.select(1, 0) + x.narrow(1, 2, 1).squeeze(1), x[1, 2, -5:] * 2),
           lambda: (torch.randn(3, 4, 6),)),
    Sample("split-chunk-unbind", _splits, lambda: (torch.randn(3, 6, 24),)),
    Sample("slice-scatter", _scatter, lambda: (torch.randn(4, 6, 3), torch.randn(4, 3, 3))),
    Sample("slice-int", lambda x: x[:, ::3] * x[:, 1::3] + x[:, -1:],
           lambda: (torch.randint(-5, 5, (3, 9)),)),
)
