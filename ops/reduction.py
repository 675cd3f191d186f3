"""Reductions: `ember.reduce` {kind, dims, keepdim, correction}, `ember.arg_reduce` {kind, dim,
keepdim} and prefix scans `ember.scan` {kind, dim}.

`dims` lists the reduced dimensions (non-negative, sorted); an empty list reduces every
dimension. `correction` is the divisor offset of var/std (N - correction) and is 0 for every
other kind. The rules cast the input to the element type torch gives the result first (sum of
ints in i64, `dtype=` keyword arguments), so the ops compute in their result type; any/all give
i1 and arg_reduce gives i64 indices.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ops.counting_sort import MAX_KEYS, counting_sort, key_bound
from ops.registry import (
    Attr,
    Sample,
    Unsupported,
    define_op,
    lowers,
    norm_dim,
    samples,
    wide,
)

aten = torch.ops.aten


def _var(x, axis, keepdims, correction):
    n = np.prod([x.shape[a] for a in axis], dtype=np.int64) if axis else 1
    mean = np.mean(x, axis=axis, keepdims=True)
    with np.errstate(all="ignore"):
        return np.sum((x - mean) ** 2, axis=axis, keepdims=keepdims) / max(n - correction, 0)


def _logsumexp(x, axis, keepdims, correction):
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(all="ignore"):
        out = np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)) + m
    return out if keepdims else np.squeeze(out, axis=axis)


REDUCE_KINDS = {
    "sum": lambda x, ax, kd, c: np.sum(x, axis=ax, keepdims=kd),
    "mean": lambda x, ax, kd, c: np.mean(x, axis=ax, keepdims=kd),
    "prod": lambda x, ax, kd, c: np.prod(x, axis=ax, keepdims=kd),
    "max": lambda x, ax, kd, c: np.max(x, axis=ax, keepdims=kd),
    "min": lambda x, ax, kd, c: np.min(x, axis=ax, keepdims=kd),
    "any": lambda x, ax, kd, c: np.any(x != 0, axis=ax, keepdims=kd),
    "all": lambda x, ax, kd, c: np.all(x != 0, axis=ax, keepdims=kd),
    "var": _var,
    "std": lambda x, ax, kd, c: np.sqrt(_var(x, ax, kd, c)),
    "logsumexp": _logsumexp,
}
FLOAT_ONLY = frozenset({"mean", "var", "std", "logsumexp"})


def _check_dims(dims, rank):
    if rank == 0:
        if any(d not in (0, -1) for d in dims):
            raise ValueError(f"dims {list(dims)} are out of range for a 0-d input")
        return ()
    if list(dims) != sorted(set(dims)) or any(not 0 <= d < rank for d in dims):
        raise ValueError(f"dims {list(dims)} must be distinct, sorted and in [0, {rank})")
    return tuple(dims) if dims else tuple(range(rank))


def _reduced_shape(shape, axes, keepdim):
    if keepdim:
        return tuple(1 if i in axes else s for i, s in enumerate(shape))
    return tuple(s for i, s in enumerate(shape) if i not in axes)


def _reduce_infer(x, kind, dims, keepdim, correction):
    if kind not in REDUCE_KINDS:
        raise ValueError(f"unknown reduction kind '{kind}' (known: {', '.join(sorted(REDUCE_KINDS))})")
    if kind in FLOAT_ONLY and not x.is_float:
        raise ValueError(f"'{kind}' needs a floating-point input, got {x.dtype}")
    if kind not in ("var", "std") and correction != 0:
        raise ValueError(f"correction must be 0 for '{kind}'")
    axes = _check_dims(dims, x.rank)
    dtype = "i1" if kind in ("any", "all") else x.dtype
    return x.with_(shape=_reduced_shape(x.shape, axes, keepdim), dtype=dtype)


def _reduce_reference(x, kind, dims, keepdim, correction):
    axes = tuple(dims) if dims else tuple(range(x.ndim))
    if x.ndim == 0:
        axes = ()
    x = wide(x)
    if kind in ("sum", "prod") and x.dtype.kind in "iub":
        x = x.astype(np.int64)
    with np.errstate(all="ignore"):
        return REDUCE_KINDS[kind](x, axes, keepdim, correction)


def _prod(x, dims, keepdim):
    # torch.prod takes one dim at a time
    for d in sorted(dims, reverse=True):
        x = torch.prod(x, d, keepdim=keepdim)
    return x


TORCH_REDUCE_KINDS = {
    "sum": lambda x, dims, kd, c: torch.sum(x, dims, keepdim=kd),
    "mean": lambda x, dims, kd, c: torch.mean(x, dims, keepdim=kd),
    "prod": lambda x, dims, kd, c: _prod(x, dims, kd),
    "max": lambda x, dims, kd, c: torch.amax(x, dims, keepdim=kd),
    "min": lambda x, dims, kd, c: torch.amin(x, dims, keepdim=kd),
    "any": lambda x, dims, kd, c: torch.any(x, dims, keepdim=kd),
    "all": lambda x, dims, kd, c: torch.all(x, dims, keepdim=kd),
    "var": lambda x, dims, kd, c: torch.var(x, dims, correction=c, keepdim=kd),
    "std": lambda x, dims, kd, c: torch.std(x, dims, correction=c, keepdim=kd),
    "logsumexp": lambda x, dims, kd, c: torch.logsumexp(x, dims, keepdim=kd),
}


def _reduce_torch(x, kind, dims, keepdim, correction):
    out = torch.bool if kind in ("any", "all") else x.dtype
    if x.dim() == 0:
        return x.to(out) if kind not in ("any", "all") else x != 0
    dims = tuple(dims) if dims else tuple(range(x.dim()))
    # integer sums and products come back as int64 in torch; the result keeps the input's type
    return TORCH_REDUCE_KINDS[kind](x, dims, keepdim, correction).to(out)


reduce = define_op(
    "reduce", operands=("input",),
    attrs={"kind": Attr.STR, "dims": Attr.INTS, "keepdim": Attr.BOOL, "correction": Attr.FLOAT},
    infer=_reduce_infer, reference=_reduce_reference, torch_impl=_reduce_torch,
    doc="Reduce `input` over `dims` (all when empty) with `kind`: sum, mean, prod, max, min, any, all, "
        "var, std (divisor N - correction), logsumexp. Reduced dims stay as size 1 when `keepdim`.")


ARG_KINDS = {"argmax": np.argmax, "argmin": np.argmin}
TORCH_ARG_KINDS = {"argmax": torch.argmax, "argmin": torch.argmin}


def _arg_infer(x, kind, dim, keepdim):
    if kind not in ARG_KINDS:
        raise ValueError(f"unknown arg reduction kind '{kind}' (known: argmax, argmin)")
    if x.rank == 0:
        if dim not in (0, -1):
            raise ValueError(f"dimension {dim} is out of range for a 0-d input")
        return x.with_(dtype="i64")
    if not 0 <= dim < x.rank:
        raise ValueError(f"dimension {dim} is out of range for rank {x.rank}")
    return x.with_(shape=_reduced_shape(x.shape, (dim,), keepdim), dtype="i64")


def _arg_reference(x, kind, dim, keepdim):
    if x.ndim == 0:
        return np.zeros((), np.int64)
    return ARG_KINDS[kind](wide(x), axis=dim, keepdims=keepdim)


def _arg_torch(x, kind, dim, keepdim):
    if x.dim() == 0:
        return torch.zeros((), dtype=torch.int64, device=x.device)
    if x.dtype == torch.bool:
        x = x.to(torch.uint8)
    return TORCH_ARG_KINDS[kind](x, dim, keepdim)


arg_reduce = define_op(
    "arg_reduce", operands=("input",), attrs={"kind": Attr.STR, "dim": Attr.INT, "keepdim": Attr.BOOL},
    infer=_arg_infer, reference=_arg_reference, torch_impl=_arg_torch,
    doc="The i64 index of the largest (argmax) or smallest (argmin) element along `dim`; ties give "
        "the first index.")


SCAN_KINDS = {"sum": np.cumsum, "prod": np.cumprod}
TORCH_SCAN_KINDS = {"sum": torch.cumsum, "prod": torch.cumprod}


def _scan_infer(x, kind, dim):
    if kind not in SCAN_KINDS:
        raise ValueError(f"unknown scan kind '{kind}' (known: sum, prod)")
    norm_dim(dim, x.rank)
    return x


def _scan_reference(x, kind, dim):
    if x.ndim == 0:
        return x
    x = wide(x)
    if x.dtype.kind in "iub":
        x = x.astype(np.int64)
    return SCAN_KINDS[kind](x, axis=norm_dim(dim, x.ndim))


def _scan_torch(x, kind, dim):
    if x.dim() == 0:
        return x
    return TORCH_SCAN_KINDS[kind](x, dim).to(x.dtype)   # integer scans come back as int64


scan = define_op(
    "scan", operands=("input",), attrs={"kind": Attr.STR, "dim": Attr.INT}, infer=_scan_infer,
    reference=_scan_reference, torch_impl=_scan_torch,
    doc="Inclusive prefix `kind` (sum or prod) of `input` along `dim`.")


def _topk_infer(x, k, dim, largest):
    if x.rank == 0:
        if dim not in (0, -1) or k not in (0, 1):
            raise ValueError(f"k={k}, dim={dim} do not fit a 0-d input")
        return x.with_(dtype="i64")
    if not 0 <= dim < x.rank:
        raise ValueError(f"dimension {dim} is out of range for rank {x.rank}")
    if not 0 <= k <= x.shape[dim]:
        raise ValueError(f"k={k} is out of range for size {x.shape[dim]}")
    shape = list(x.shape)
    shape[dim] = k
    return x.with_(shape=tuple(shape), dtype="i64")


def _topk_reference(x, k, dim, largest):
    if x.ndim == 0:
        return np.zeros((), np.int64)
    key = wide(x)
    if key.dtype.kind in "iub":
        key = key.astype(np.int64)
    order = np.argsort(-key if largest else key, axis=dim, kind="stable")
    return np.take(order, np.arange(k), axis=dim)


def _topk_torch(x, k, dim, largest):
    if x.dim() == 0:
        return torch.zeros((), dtype=torch.int64, device=x.device)
    if x.dtype == torch.bool:
        x = x.to(torch.uint8)
    if k == x.shape[dim]:   # a sort: stable, as the reference
        return torch.sort(x, stable=True, dim=dim, descending=largest).indices
    # torch.topk, as eager runs it: equal elements may come in another order than the reference's
    return torch.topk(x, k, dim, largest, sorted=True).indices


topk = define_op(
    "topk", operands=("input",), attrs={"k": Attr.INT, "dim": Attr.INT, "largest": Attr.BOOL},
    infer=_topk_infer, reference=_topk_reference, torch_impl=_topk_torch,
    doc="The i64 indices of the `k` largest (or smallest) elements along `dim`, in order (equal "
        "elements keep their input order); `ember.gather` by them gives the values. A sort is "
        "topk with k = the dim's size.")


# ----------------------------------------------------------------------------- lowering helpers

def _dims(x, dim) -> tuple[int, ...]:
    """torch's `dim` argument (None, an int or a list; empty means all) as sorted non-negative dims."""
    if dim is None:
        return ()
    if isinstance(dim, int):
        dim = [dim]
    if x.rank == 0:
        for d in dim:
            norm_dim(d, 0)
        return ()
    out = sorted({norm_dim(d, x.rank) for d in dim})
    return () if len(out) == x.rank else tuple(out)


def emit_reduce(b, x, kind, dim=None, keepdim=False, correction=0.0, index=0):
    """`ember.reduce` of `x`, in the element type torch gives result `index` (i1 for any/all)."""
    out = b.result_spec(index).dtype
    dims = _dims(x, dim)
    if x.dtype == "i1" and kind in BOOL_AS_FLOAT and math.prod(x.shape[d] for d in dims or range(x.rank)) < 1 << 24:
        # counts and tests of a mask, in fp32 (exact below 2**24), where the chip reduces
        y = b.emit(reduce, b.cast(x, "f32"), kind=BOOL_AS_FLOAT[kind], dims=dims, keepdim=bool(keepdim), correction=0.0)
        return b.cast(y, out)
    if kind not in ("any", "all"):
        x = b.cast(x, out)
    return b.emit(reduce, x, kind=kind, dims=dims, keepdim=bool(keepdim), correction=float(correction))


#: Reductions of a boolean mask computed on its fp32 cast: kind -> the fp32 reduction.
BOOL_AS_FLOAT = {"sum": "sum", "any": "max", "all": "min"}


def _used_results(b) -> set[int]:
    """Which results of a multi-result node are read (by getitem users)."""
    import operator
    used = set()
    for user in b.node.users:
        if user.target is operator.getitem:
            used.add(user.args[1])
        else:
            return {0, 1, 2, 3}
    return used


def _reduce_rule(kind):
    def rule(b, x, dim=None, keepdim=False, *, dtype=None):
        return emit_reduce(b, x, kind, dim, keepdim)
    rule.__module__ = __name__
    return rule


lowers(aten.sum.default, aten.sum.dim_IntList)(_reduce_rule("sum"))
lowers(aten.mean.default, aten.mean.dim)(_reduce_rule("mean"))
lowers(aten.prod.default, aten.prod.dim_int)(_reduce_rule("prod"))
lowers(aten.amax.default, aten.max.default)(_reduce_rule("max"))
lowers(aten.amin.default, aten.min.default)(_reduce_rule("min"))
lowers(aten.any.default, aten.any.dim, aten.any.dims)(_reduce_rule("any"))
lowers(aten.all.default, aten.all.dim, aten.all.dims)(_reduce_rule("all"))
lowers(aten.logsumexp.default)(_reduce_rule("logsumexp"))


def _correction(correction, unbiased=True):
    if correction is None:
        return 1.0 if unbiased else 0.0
    return float(correction)


@lowers(aten.var.correction, aten.std.correction)
def _var_correction(b, x, dim=None, *, correction=None, keepdim=False):
    kind = "var" if b.node.target == aten.var.correction else "std"
    return emit_reduce(b, x, kind, dim, keepdim, _correction(correction))


@lowers(aten.var.default, aten.std.default)
def _var_unbiased(b, x, unbiased=True):
    kind = "var" if b.node.target == aten.var.default else "std"
    return emit_reduce(b, x, kind, None, False, 1.0 if unbiased else 0.0)


@lowers(aten.var.dim, aten.std.dim)
def _var_dim(b, x, dim=None, unbiased=True, keepdim=False):
    kind = "var" if b.node.target == aten.var.dim else "std"
    return emit_reduce(b, x, kind, dim, keepdim, 1.0 if unbiased else 0.0)


@lowers(aten.var_mean.correction, aten.std_mean.correction)
def _var_mean(b, x, dim=None, *, correction=None, keepdim=False):
    kind = "var" if b.node.target == aten.var_mean.correction else "std"
    used = _used_results(b)
    first = emit_reduce(b, x, kind, dim, keepdim, _correction(correction), 0) if 0 in used else None
    mean = emit_reduce(b, x, "mean", dim, keepdim, 0.0, 1) if 1 in used else None
    return first, mean


@lowers(aten.max.dim, aten.min.dim)
def _max_dim(b, x, dim, keepdim=False):
    is_max = b.node.target == aten.max.dim
    used = _used_results(b)
    values = emit_reduce(b, x, "max" if is_max else "min", dim, keepdim) if 0 in used else None
    indices = None
    if 1 in used:
        d = norm_dim(dim, x.rank) if x.rank else 0
        indices = b.emit(arg_reduce, x, kind="argmax" if is_max else "argmin", dim=d, keepdim=bool(keepdim))
    return values, indices


@lowers(aten.argmax.default, aten.argmin.default)
def _argmax(b, x, dim=None, keepdim=False):
    kind = "argmax" if b.node.target == aten.argmax.default else "argmin"
    if dim is None:
        flat = x if x.rank <= 1 else b.emit("reshape", x, shape=(x.spec.numel,))
        y = b.emit(arg_reduce, flat, kind=kind, dim=0, keepdim=False)
        out = b.result_spec().shape
        return y if y.shape == out else b.emit("reshape", y, shape=out)
    d = norm_dim(dim, x.rank) if x.rank else 0
    return b.emit(arg_reduce, x, kind=kind, dim=d, keepdim=bool(keepdim))


@lowers(aten.cumsum.default, aten.cumprod.default)
def _cumsum(b, x, dim, *, dtype=None):
    kind = "sum" if b.node.target == aten.cumsum.default else "prod"
    x = b.cast(x, b.result_spec().dtype)
    return b.emit(scan, x, kind=kind, dim=norm_dim(dim, x.rank) if x.rank else 0)


def _emit_topk(b, x, k, dim, largest):
    d = norm_dim(dim, x.rank) if x.rank else 0
    if x.rank == 0:
        raise Unsupported("topk/sort of a 0-d tensor")
    indices = b.emit(topk, x, k=int(k), dim=d, largest=bool(largest))
    values = b.emit("gather", x, indices, dim=d) if 0 in _used_results(b) else None
    return values, indices


@lowers(aten.topk.default)
def _topk(b, x, k, dim=-1, largest=True, sorted=True):
    return _emit_topk(b, x, k, dim, largest)


@lowers(aten.sort.default, aten.sort.stable)
def _sort(b, x, *args, **kwargs):
    if b.node.target == aten.sort.stable:
        dim, descending = kwargs.get("dim", -1), kwargs.get("descending", False)
    else:
        dim = args[0] if args else kwargs.get("dim", -1)
        descending = args[1] if len(args) > 1 else kwargs.get("descending", False)
    if x.rank == 0:
        raise Unsupported("sort of a 0-d tensor")
    bound = key_bound(b, x) if x.rank == 1 else None
    if bound is not None and bound <= MAX_KEYS:       # small integer keys (expert ids): count them
        order = counting_sort(b, x, bound, bool(descending))
        return (b.emit("gather", x, order, dim=0) if 0 in _used_results(b) else None), order
    return _emit_topk(b, x, x.shape[norm_dim(dim, x.rank)], dim, descending)


def _unary(b, x, kind, alpha=0.0):
    return b.emit("unary", x, kind=kind, alpha=float(alpha), beta=0.0)


@lowers(aten.linalg_vector_norm.default)
def _vector_norm(b, x, ord=2, dim=None, keepdim=False, *, dtype=None):
    """||x||_ord over `dim` from elementwise ops and sums (F.normalize, torch.norm)."""
    x = b.cast(x, b.result_spec().dtype)
    ord = float(ord)
    if ord == 0:
        nonzero = b.cast(b.emit("binary", x, b.constant(0, x.dtype), kind="ne"), x.dtype)
        return emit_reduce(b, nonzero, "sum", dim, keepdim)
    a = _unary(b, x, "abs")
    if ord in (float("inf"), float("-inf")):
        return emit_reduce(b, a, "max" if ord > 0 else "min", dim, keepdim)
    if ord == 1:
        return emit_reduce(b, a, "sum", dim, keepdim)
    if ord == 2:
        return _unary(b, emit_reduce(b, b.emit("binary", x, x, kind="mul"), "sum", dim, keepdim), "sqrt")
    return _unary(b, emit_reduce(b, _unary(b, a, "pow", ord), "sum", dim, keepdim), "pow", 1.0 / ord)


def _sums(x):
    return (x.sum() + x.sum(dim=1).mean() + x.sum(dim=(0, 2), keepdim=True).sum() + x.mean()
            + x.mean(dim=-1, keepdim=True).sum() + x.prod(dim=1).sum()
            + torch.logsumexp(x, dim=(1, 2)).sum()).unsqueeze(0)   # (1,): 0-d outputs come back as (1,)


def _extremes(x):
    v, i = x.max(dim=1)
    w, j = torch.min(x, dim=-1, keepdim=True)
    return (v + x.amax(dim=(0, 2)).sum() - x.amin(dim=-1).mean() + x.max() - x.min() + w.sum(),
            i, j, x.argmax().unsqueeze(0), x.argmin(dim=0, keepdim=True), torch.argmax(x, dim=2))


def _stats(x):
    return (x.var(dim=-1) + x.std(dim=-1, unbiased=False) + x.var(dim=-1, correction=0) * 2
            + torch.var_mean(x, dim=-1)[0] + torch.std_mean(x, dim=-1, keepdim=False)[1], x.std().unsqueeze(0), x.var().unsqueeze(0))


samples(
    Sample("sum-mean-prod-logsumexp", _sums, lambda: (torch.rand(3, 4, 5) + 0.5,)),
    Sample("max-min-arg", _extremes, lambda: (torch.randn(3, 6, 5),)),
    Sample("var-std", _stats, lambda: (torch.randn(4, 9),)),
    Sample("any-all-bool-sum", lambda x: ((x > 0).any(dim=-1).float() + (x > -1).all(dim=0).sum()
                                          + (x > 0).sum(dim=1, keepdim=True) + (x > 0).all().float(), x.sum(dtype=torch.float64).unsqueeze(0)),
           lambda: (torch.randn(5, 7),)),
    Sample("cumsum-positions", lambda mask: (torch.cumsum(mask, dim=-1) * mask - 1, torch.cumsum(mask.float() * 0.5, 0)),
           lambda: (torch.randint(0, 2, (2, 9)),)),
    Sample("topk-and-sort", lambda x: (torch.topk(x, 3, dim=-1), torch.topk(x, 2, dim=0, largest=False),
                                       torch.sort(x, dim=1, descending=True), torch.sort(x, dim=-1, stable=True)),
           lambda: (torch.randn(4, 7),)),
    Sample("vector-norm", lambda x: (torch.nn.functional.normalize(x, dim=-1), x.norm(dim=(0, 2), keepdim=True),
                                     torch.linalg.vector_norm(x, 1, dim=1), torch.linalg.vector_norm(x, float("inf"), -1),
                                     torch.linalg.vector_norm(x, 3, dim=-1), torch.linalg.vector_norm(x, 0, dim=-1)),
           lambda: (torch.randn(3, 5, 6),)),
    Sample("reductions-bf16", lambda x: (x.sum(-1), x.mean(dim=(0, 1)), x.amax(-1), x.var(-1), x.max(dim=-1),
                                         torch.logsumexp(x, -1), x.cumsum(-1), x.sum(-1, dtype=torch.float32)),
           lambda: (torch.randn(3, 4, 8).to(torch.bfloat16),), rtol=2e-2),
    Sample("int-sum-and-amax", lambda i: (i.sum(dim=0), i.amax(dim=1), i.argmax(dim=1)),
           lambda: (torch.randint(-50, 50, (6, 5), dtype=torch.int32),)),
)
