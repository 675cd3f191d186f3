"""Gathers: `ember.embedding`, `ember.index_select` {dim}, `ember.gather` {dim}, and the scatter
`ember.index_put` {dim, accumulate}; aten.index.Tensor (advanced indexing) lowers onto them.

Indices are integer tensors; a negative index counts from the end of its dimension, as in torch
indexing (`x[idx]`). On the chip (ops/kernels/gather.py) embedding, index_select and index_put
without accumulation are indexed DMAs on indices in device memory; an embedding id outside
[0, V) stops the run there (torch raises too).
"""
from __future__ import annotations

import numpy as np
import torch

from ops.data_dependent import index_by_mask
from ops.registry import Attr, Sample, Unsupported, define_op, lowers, norm_dim, samples

aten = torch.ops.aten

INT_DTYPES = frozenset({"i64", "i32", "i16", "i8", "ui8"})


def _check_index(index, what="indices"):
    if index.dtype not in INT_DTYPES:
        raise ValueError(f"{what} must be an integer tensor, got {index.dtype}")


def _as_i64(ix):
    return np.asarray(ix).astype(np.int64)


def _long(index):
    """An index tensor as torch's gathers take it (int64; a no-op when it already is)."""
    return index.long()


# ----------------------------------------------------------------------------- embedding

def _embedding_infer(table, indices):
    if table.rank != 2:
        raise ValueError(f"the embedding table must have rank 2, got shape {table.shape}")
    _check_index(indices)
    return table.with_(shape=(*indices.shape, table.shape[1]))


embedding = define_op(
    "embedding", operands=("table", "indices"), infer=_embedding_infer,
    reference=lambda table, indices: np.take(table, _as_i64(indices), axis=0),
    torch_impl=lambda table, indices: torch.nn.functional.embedding(_long(indices), table),
    doc="Rows of table[V, D] picked by integer `indices` of any shape: result indices.shape + (D,).")


@lowers(aten.embedding.default)
def _embedding(b, weight, indices, padding_idx=-1, scale_grad_by_freq=False, sparse=False):
    # padding_idx only changes gradients: irrelevant at inference
    if weight.rank != 2:
        raise Unsupported(f"embedding with a rank-{weight.rank} table")
    return b.emit(embedding, weight, indices)


# ----------------------------------------------------------------------------- index_select

def _index_select_infer(x, index, dim):
    _check_index(index)
    if x.rank == 0:
        raise ValueError("index_select needs an input of rank >= 1")
    if not 0 <= dim < x.rank:
        raise ValueError(f"dimension {dim} is out of range for rank {x.rank}")
    if index.rank > 1:
        raise ValueError(f"index must have rank 0 or 1, got shape {index.shape}")
    shape = list(x.shape)
    shape[dim] = index.numel
    return x.with_(shape=tuple(shape))


index_select = define_op(
    "index_select", operands=("input", "index"), attrs={"dim": Attr.INT}, infer=_index_select_infer,
    reference=lambda x, index, dim: np.take(x, _as_i64(index).reshape(-1), axis=dim),
    # x[-1 - i] lowers here with negative positions: wrap them as indexing does
    torch_impl=lambda x, index, dim: torch.index_select(x, dim, _long(index).reshape(-1).remainder(x.shape[dim])),
    doc="The slices of `input` along `dim` at the positions in the 1-d `index`, in index order.")


def emit_index_select(b, x, index, dim):
    if index.rank != 1:
        index = b.emit("reshape", index, shape=(index.spec.numel,))
    return b.emit(index_select, x, index, dim=dim)


@lowers(aten.index_select.default)
def _index_select(b, x, dim, index):
    if x.rank == 0:
        raise Unsupported("index_select of a 0-d tensor")
    y = b.emit(index_select, x, index, dim=norm_dim(dim, x.rank))
    out = b.result_spec().shape
    return y if y.shape == out else b.emit("reshape", y, shape=out)


# ----------------------------------------------------------------------------- gather

def _gather_infer(x, index, dim):
    _check_index(index)
    if x.rank != index.rank:
        raise ValueError(f"input {x.shape} and index {index.shape} must have the same rank")
    if x.rank and not 0 <= dim < x.rank:
        raise ValueError(f"dimension {dim} is out of range for rank {x.rank}")
    for d, (s, i) in enumerate(zip(x.shape, index.shape)):
        if d != dim and i > s:
            raise ValueError(f"index size {i} exceeds input size {s} in dimension {d}")
    return x.with_(shape=index.shape)


def _gather_reference(x, index, dim):
    if x.ndim == 0:
        return x
    window = tuple(slice(None) if d == dim else slice(0, s) for d, s in enumerate(index.shape))
    return np.take_along_axis(x[window], _as_i64(index), axis=dim)


gather = define_op(
    "gather", operands=("input", "index"), attrs={"dim": Attr.INT}, infer=_gather_infer,
    reference=_gather_reference,
    torch_impl=lambda x, index, dim: x if x.dim() == 0 else torch.gather(x, dim, _long(index)),
    doc="torch.gather: result[i][j][k] = input[index[i][j][k]][j][k] for dim 0 (and so on); the "
        "result has index's shape.")


@lowers(aten.gather.default)
def _gather(b, x, dim, index, *, sparse_grad=False):
    return b.emit(gather, x, index, dim=norm_dim(dim, x.rank) if x.rank else 0)


# ----------------------------------------------------------------------------- advanced indexing

def _index_tensor(b, x, indices):
    """x[indices]: integer index tensors (None = the whole dim), broadcast together."""
    indices = list(indices)
    positions = [i for i, t in enumerate(indices) if t is not None]
    if not positions:
        return x
    if len(indices) > x.rank:
        raise ValueError(f"{len(indices)} indices for a rank-{x.rank} tensor")
    tensors = [indices[i] for i in positions]
    if len(tensors) == 1 and tensors[0].dtype == "i1":
        return index_by_mask(b, x, tensors[0], positions[0])
    if any(t.dtype == "i1" for t in tensors):
        raise Unsupported("indexing with a boolean mask and other index tensors together")
    if any(t.dtype not in INT_DTYPES for t in tensors):
        raise Unsupported(f"indexing with {', '.join(t.dtype for t in tensors)} index tensors")
    out_shape = b.result_spec().shape
    if positions != list(range(positions[0], positions[-1] + 1)):
        # Non-adjacent index tensors: torch puts the broadcast index dims first. Move the
        # indexed dims to the front (in order) and index them there.
        rest = [d for d in range(x.rank) if d not in positions]
        x = b.emit("transpose", x, perm=(*positions, *rest))
        positions = list(range(len(positions)))
    start, k = positions[0], len(positions)
    if k == 1:
        y = emit_index_select(b, x, tensors[0], start)
        return y if y.shape == out_shape else b.emit("reshape", y, shape=out_shape)
    # Several adjacent index tensors: one linear index into the merged indexed dims.
    sizes = x.shape[start:start + k]
    linear = None
    stride = 1
    for t, size in reversed(list(zip(tensors, sizes))):
        t = b.cast(t, "i64")
        t = b.emit("binary", t, b.constant(size, "i64"), kind="remainder")   # wrap negative indices
        if stride != 1:
            t = b.emit("binary", t, b.constant(stride, "i64"), kind="mul")
        linear = t if linear is None else b.emit("binary", t, linear, kind="add")
        stride *= size
    merged = b.emit("reshape", x, shape=(*x.shape[:start], stride, *x.shape[start + k:]))
    y = emit_index_select(b, merged, linear, start)
    return y if y.shape == out_shape else b.emit("reshape", y, shape=out_shape)


@lowers(aten.index.Tensor, aten.index.Tensor_hacked_twin, aten._unsafe_index.Tensor)
def _index(b, x, indices):
    return _index_tensor(b, x, indices)


# ----------------------------------------------------------------------------- index_put

def _index_put_infer(x, index, values, dim, accumulate):
    _check_index(index)
    if index.rank != 1:
        raise ValueError(f"index must have rank 1, got shape {index.shape}")
    if not 0 <= dim < x.rank:
        raise ValueError(f"dimension {dim} is out of range for rank {x.rank}")
    if values.dtype != x.dtype:
        raise ValueError(f"values element type {values.dtype} differs from input's {x.dtype}")
    window = list(x.shape)
    window[dim] = index.shape[0]
    if values.rank > len(window) or any(v not in (1, w) for v, w in zip(reversed(values.shape), reversed(window))):
        raise ValueError(f"values shape {values.shape} does not broadcast to {tuple(window)}")
    return x


def _index_put_reference(x, index, values, dim, accumulate):
    out = np.array(x, copy=True)
    index = _as_i64(index) % max(x.shape[dim], 1)
    window = list(x.shape)
    window[dim] = index.shape[0]
    values = np.broadcast_to(values, window)
    moved, vals = np.moveaxis(out, dim, 0), np.moveaxis(values, dim, 0)
    if accumulate:
        if out.dtype.kind == "f" or out.dtype.name == "bfloat16":
            acc = moved.astype(np.float64)
            np.add.at(acc, index, vals.astype(np.float64))
            moved[...] = acc
        else:
            np.add.at(moved, index, vals)
    else:
        moved[index] = vals   # repeated indices: the last write wins
    return out


def _index_put_torch(x, index, values, dim, accumulate):
    return aten.index_put.default(x, [None] * dim + [_long(index)], values, accumulate)   # out of place


index_put = define_op(
    "index_put", operands=("input", "index", "values"), attrs={"dim": Attr.INT, "accumulate": Attr.BOOL},
    infer=_index_put_infer, reference=_index_put_reference, torch_impl=_index_put_torch,
    doc="A copy of `input` whose slices along `dim` at the positions in the 1-d `index` are replaced "
        "by (or, with `accumulate`, increased by) `values`, broadcast to the indexed window.")


@lowers(aten.index_put.default)
def _index_put(b, x, indices, values, accumulate=False):
    positions = [i for i, t in enumerate(indices) if t is not None]
    if len(positions) != 1:
        raise Unsupported("index_put with more than one index tensor")
    index = indices[positions[0]]
    dim = positions[0]
    values = b.cast(values, x.dtype)
    if index.dtype == "i1":
        return _masked_put(b, x, dim, index, values, accumulate)
    if index.dtype not in INT_DTYPES:
        raise Unsupported(f"index_put with a {index.dtype} index")
    if index.rank != 1:
        raise Unsupported(f"index_put with a rank-{index.rank} index tensor")
    if values.rank > x.rank:
        # leading size-1 dims of values beyond the indexed window
        if any(s != 1 for s in values.shape[:values.rank - x.rank]):
            raise Unsupported(f"index_put values of shape {values.shape}")
        values = b.emit("reshape", values, shape=values.shape[values.rank - x.rank:])
    return b.emit(index_put, x, index, values, dim=dim, accumulate=bool(accumulate))


def _masked_put(b, x, dim, mask, values, accumulate):
    """x[..., mask] = v (or +=) for a boolean mask and one value: a select, no data-dependent shape."""
    if values.spec.numel != 1:
        raise Unsupported("index_put by a boolean mask with more than one value (how many elements "
                          "the mask selects depends on the data)")
    if tuple(x.shape[dim:dim + mask.rank]) != mask.shape:
        raise Unsupported(f"index_put by a boolean mask of shape {mask.shape} on dims {dim}.. of {x.shape}")
    trailing = x.rank - dim - mask.rank
    if trailing:
        mask = b.emit("reshape", mask, shape=(*mask.shape, *(1,) * trailing))
    if values.rank:
        values = b.emit("reshape", values, shape=())
    if accumulate:
        added = b.emit("ternary", mask, values, b.constant(0, x.dtype), kind="where")
        return b.emit("binary", x, added, kind="add")
    y = b.emit("ternary", mask, values, x, kind="where")
    return y if y.shape == x.shape else b.emit("reshape", y, shape=x.shape)


@lowers(aten.index_copy.default)
def _index_copy(b, x, dim, index, source):
    if index.rank != 1:
        raise Unsupported(f"index_copy with a rank-{index.rank} index")
    return b.emit(index_put, x, index, b.cast(source, x.dtype), dim=norm_dim(dim, x.rank), accumulate=False)


@lowers(aten.index_add.default)
def _index_add(b, x, dim, index, source, *, alpha=1):
    if index.rank != 1:
        raise Unsupported(f"index_add with a rank-{index.rank} index")
    source = b.cast(source, x.dtype)
    if alpha != 1:
        source = b.emit("binary", source, b.constant(alpha, x.dtype), kind="mul")
    return b.emit(index_put, x, index, source, dim=norm_dim(dim, x.rank), accumulate=True)


# ----------------------------------------------------------------------------- scatter

SCATTER_REDUCE = {"none": None, "add": np.add, "prod": np.multiply, "amax": np.maximum, "amin": np.minimum}
TORCH_SCATTER_REDUCE = {"none": None, "add": "sum", "prod": "prod", "amax": "amax", "amin": "amin"}


def _scatter_infer(x, index, src, dim, reduce):
    _check_index(index)
    if reduce not in SCATTER_REDUCE:
        raise ValueError(f"unknown scatter reduction '{reduce}' (known: {', '.join(SCATTER_REDUCE)})")
    if x.rank != index.rank or (src.rank and src.rank != index.rank):
        raise ValueError(f"input {x.shape}, index {index.shape} and src {src.shape} must have one rank "
                         "(src may be 0-d)")
    if x.rank and not 0 <= dim < x.rank:
        raise ValueError(f"dimension {dim} is out of range for rank {x.rank}")
    if src.dtype != x.dtype:
        raise ValueError(f"src element type {src.dtype} differs from input's {x.dtype}")
    for d, i in enumerate(index.shape):
        if (d != dim and i > x.shape[d]) or (src.rank and i > src.shape[d]):
            raise ValueError(f"index size {i} exceeds input or src size in dimension {d}")
    return x


def _scatter_reference(x, index, src, dim, reduce):
    wide = x.dtype.kind == "f" or x.dtype.name == "bfloat16"
    out = np.array(x, dtype=np.float64 if wide else x.dtype, copy=True)
    if x.ndim == 0:
        return out if index.size == 0 else np.asarray(src, out.dtype)
    idx = _as_i64(index) % max(x.shape[dim], 1)
    if src.ndim:
        src = src[tuple(slice(0, s) for s in index.shape)]
    src = np.broadcast_to(np.asarray(src).astype(out.dtype), index.shape)
    target = list(np.indices(index.shape, sparse=True))
    target[dim] = idx
    target = tuple(np.broadcast_to(t, index.shape) for t in target)
    fn = SCATTER_REDUCE[reduce]
    if fn is None:
        out[target] = src   # repeated positions: the last write wins
    else:
        fn.at(out, target, src)
    return out


def _scatter_torch(x, index, src, dim, reduce):
    index = _long(index)
    if src.dim() == 0:
        src = src.expand(index.shape)
    how = TORCH_SCATTER_REDUCE[reduce]
    if how is None:
        return torch.scatter(x, dim, index, src)
    return torch.scatter_reduce(x, dim, index, src, how, include_self=True)


scatter = define_op(
    "scatter", operands=("input", "index", "src"), attrs={"dim": Attr.INT, "reduce": Attr.STR},
    infer=_scatter_infer, reference=_scatter_reference, torch_impl=_scatter_torch,
    doc="torch.scatter: a copy of `input` with out[index[i][j]][j] = src[i][j] for dim 0 (and so "
        "on), or combined with the old value by `reduce` (add, prod, amax, amin); src is 0-d or "
        "covers index's shape.")


def _emit_scatter(b, x, dim, index, src, reduce):
    src = b.scalar_or_value(src, x.dtype)
    return b.emit(scatter, x, index, src, dim=norm_dim(dim, x.rank) if x.rank else 0, reduce=reduce)


@lowers(aten.scatter.src, aten.scatter.value)
def _scatter(b, x, dim, index, src):
    return _emit_scatter(b, x, dim, index, src, "none")


@lowers(aten.scatter.reduce, aten.scatter.value_reduce)
def _scatter_legacy_reduce(b, x, dim, index, src, *, reduce):
    kind = {"add": "add", "multiply": "prod"}.get(reduce)
    if kind is None:
        raise Unsupported(f"scatter with reduce={reduce!r}")
    return _emit_scatter(b, x, dim, index, src, kind)


@lowers(aten.scatter_add.default)
def _scatter_add(b, x, dim, index, src):
    return _emit_scatter(b, x, dim, index, src, "add")


@lowers(aten.scatter_reduce.two)
def _scatter_reduce(b, x, dim, index, src, reduce, *, include_self=True):
    kind = {"sum": "add", "prod": "prod", "amax": "amax", "amin": "amin"}.get(reduce)
    if kind is None:
        raise Unsupported(f"scatter_reduce with reduce={reduce!r}")
    if not include_self:
        raise Unsupported("scatter_reduce with include_self=False")
    return _emit_scatter(b, x, dim, index, src, kind)


# ----------------------------------------------------------------------------- samples

class _Embed(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.tok = torch.nn.Embedding(50, 8, padding_idx=0)
        self.pos = torch.nn.Embedding(16, 8)

    def forward(self, ids, positions):
        return self.tok(ids) + self.pos(positions)


def _select_and_gather(x, idx, gidx):
    a = torch.index_select(x, 1, idx)
    g = torch.gather(x, 2, gidx)
    return a.sum(-1), g


def _advanced(x, i, j):
    # x[i], x[:, j], x[i, j], x[:, i, j] (adjacent pairs broadcast), x[i, :, j] (non-adjacent), x[-1-i]
    return (x[i], x[:, j], x[i[:, None], j[None, :]], x[:, i[:3], j[:3]], x[i[:2], :, j[:2]], x[-1 - i])


def _scatters(x, idx, v):
    aten = torch.ops.aten
    y = aten.index_put(x, [None, idx], v)
    z = aten.index_put(x, [idx], v[:1].transpose(0, 1), True)
    w = x.clone()
    w[x > 0.5] = -1.0   # boolean-mask assignment of one value
    u = aten.index_put(x, [None, x[0] > 0], torch.tensor(2.0), True)
    return y, z, x.index_copy(1, idx, v), x.index_add(0, idx[:2], x[1:3] * 0.5, alpha=2.0), w, u


def _scatter_family(x, perm, idx, src):
    # perm: a permutation per row (no repeated targets for the plain scatter)
    a = x.scatter(1, perm[:, :3], src[:, :3])
    c = x.scatter(1, perm[:, :2], 2.5)
    d = x.scatter_add(0, idx, src)
    e = x.scatter_reduce(1, idx, src, "amax") + x.scatter_reduce(1, idx, src, "prod")
    f = x.scatter(0, idx, src, reduce="add")
    return a, c, d, e, f


samples(
    Sample("scatter-and-scatter-reduce", _scatter_family,
           lambda: (torch.randn(4, 6), torch.argsort(torch.rand(4, 6), dim=1), torch.randint(0, 4, (3, 6)),
                    torch.randn(4, 6))),
    Sample("embedding", _Embed(), lambda: (torch.randint(0, 50, (2, 7)), torch.randint(0, 16, (1, 7)))),
    Sample("index-select-and-gather", _select_and_gather,
           lambda: (torch.randn(3, 6, 5), torch.randint(0, 6, (4,)), torch.randint(0, 5, (3, 4, 2)))),
    Sample("advanced-indexing", _advanced,
           lambda: (torch.randn(5, 6, 4), torch.randint(-5, 5, (4,)), torch.randint(-4, 4, (3,)))),
    Sample("index-put-copy-add", _scatters,
           lambda: (torch.randn(4, 5), torch.randperm(4)[:3].sort().values, torch.randn(4, 3))),
)
