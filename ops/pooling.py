"""Pooling: `ember.pool` (max / avg windows) and `ember.adaptive_pool` (torch's adaptive bins).

Both pool the trailing len(kernel) (or len(output_size)) dimensions of the input; leading
dimensions (batch, channels) are independent. `ember.pool` follows torch's output-size rule,
including ceil_mode (a last window must start inside the input or its low padding); for avg,
`divisor` > 0 overrides the count, else count_include_pad picks the window's extent inside the
padded input or inside the input alone. Adaptive pools whose input sizes divide the output sizes
are plain `ember.pool`s; others use bins [floor(i*in/out), ceil((i+1)*in/out)).

Indices of max pools are not computed: a graph that uses them reports the op unsupported.
"""
from __future__ import annotations

import numpy as np
import torch

from ops.registry import Attr, Sample, define_op, lowers, samples, wide

aten = torch.ops.aten

KINDS = ("max", "avg")


def _out_size(size, k, s, p, d, ceil_mode):
    span = size + 2 * p - d * (k - 1) - 1
    n = (span + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (n - 1) * s >= size + p:
        n -= 1
    return n


def _pool_infer(x, kind, kernel, stride, padding, dilation, ceil_mode, count_include_pad, divisor):
    nd = len(kernel)
    if kind not in KINDS:
        raise ValueError(f"unknown pool kind '{kind}' (known: {', '.join(KINDS)})")
    if nd < 1 or x.rank < nd:
        raise ValueError(f"kernel {kernel} does not fit input {x.shape}")
    if not len(stride) == len(padding) == len(dilation) == nd:
        raise ValueError(f"stride {stride}, padding {padding} and dilation {dilation} need {nd} entries")
    if any(k < 1 for k in kernel) or any(s < 1 for s in stride) or any(d < 1 for d in dilation):
        raise ValueError(f"kernel {kernel}, stride {stride} and dilation {dilation} must be positive")
    if any(p < 0 or 2 * p > d * (k - 1) + 1 for p, k, d in zip(padding, kernel, dilation)):
        raise ValueError(f"padding {padding} must be at most half the (dilated) kernel {kernel}")
    if kind == "avg" and any(d != 1 for d in dilation):
        raise ValueError("avg pooling takes no dilation")
    if divisor < 0:
        raise ValueError(f"divisor {divisor} is negative")
    out = [_out_size(size, k, s, p, d, ceil_mode)
           for size, k, s, p, d in zip(x.shape[-nd:], kernel, stride, padding, dilation)]
    if any(n < 1 for n in out):
        raise ValueError(f"pooling {x.shape} with kernel {kernel} gives the empty output {out}")
    return x.with_(shape=(*x.shape[:-nd], *out))


def _windows(x, kernel, stride, dilation, out):
    """A strided view of x [..., *S] as [..., *out, *kernel] windows."""
    nd = len(kernel)
    lead = x.ndim - nd
    st = x.strides
    shape = (*x.shape[:lead], *out, *kernel)
    strides = (*st[:lead], *(st[lead + i] * stride[i] for i in range(nd)), *(st[lead + i] * dilation[i] for i in range(nd)))
    return np.lib.stride_tricks.as_strided(x, shape=shape, strides=strides, writeable=False)


def _pool_reference(x, kind, kernel, stride, padding, dilation, ceil_mode, count_include_pad, divisor):
    nd = len(kernel)
    lead = x.ndim - nd
    spatial = x.shape[lead:]
    out = [_out_size(size, k, s, p, d, ceil_mode)
           for size, k, s, p, d in zip(spatial, kernel, stride, padding, dilation)]
    # pad low by p, high by p plus what ceil_mode's last window reaches past the padded input
    high = [max(p, (n - 1) * s + d * (k - 1) + 1 - size - p)
            for n, size, k, s, p, d in zip(out, spatial, kernel, stride, padding, dilation)]
    widths = [(0, 0)] * lead + [(p, h) for p, h in zip(padding, high)]
    axes = tuple(range(x.ndim, x.ndim + nd))
    x = wide(x)
    if kind == "max":
        fill = -np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min
        xp = np.ascontiguousarray(np.pad(x, widths, constant_values=fill))
        return _windows(xp, kernel, stride, dilation, out).max(axis=axes)
    xp = np.ascontiguousarray(np.pad(x.astype(np.float64), widths))
    total = _windows(xp, kernel, stride, dilation, out).sum(axis=axes)
    if divisor:
        return total / divisor
    # the count of each window: its elements inside the padded input (count_include_pad) or the input
    mask = np.zeros([s + p + h for s, p, h in zip(spatial, padding, high)])
    if count_include_pad:
        mask[tuple(slice(0, s + 2 * p) for s, p in zip(spatial, padding))] = 1
    else:
        mask[tuple(slice(p, p + s) for s, p in zip(spatial, padding))] = 1
    count = _windows(mask, kernel, stride, dilation, out).sum(axis=tuple(range(nd, 2 * nd)))
    return total / count


_F = torch.nn.functional
TORCH_MAX_POOL = {1: _F.max_pool1d, 2: _F.max_pool2d, 3: _F.max_pool3d}
TORCH_AVG_POOL = {2: _F.avg_pool2d, 3: _F.avg_pool3d}   # 1-d runs as 2-d: avg_pool1d has no divisor
TORCH_ADAPTIVE = {
    "max": {1: _F.adaptive_max_pool1d, 2: _F.adaptive_max_pool2d, 3: _F.adaptive_max_pool3d},
    "avg": {1: _F.adaptive_avg_pool1d, 2: _F.adaptive_avg_pool2d, 3: _F.adaptive_avg_pool3d},
}


def _pool_folded(x, nd, fn):
    """fn on x's trailing nd dims, its leading dims folded into torch's (N, C) (views both ways)."""
    if nd > 3:
        raise NotImplementedError(f"pooling over {nd} dimensions (torch pools at most 3)")
    lead = x.shape[:x.dim() - nd]
    y = fn(x.reshape(1, -1, *x.shape[x.dim() - nd:]))
    return y.reshape(*lead, *y.shape[2:])


def _pool_torch(x, kind, kernel, stride, padding, dilation, ceil_mode, count_include_pad, divisor):
    nd = len(kernel)
    if kind == "max":
        return _pool_folded(x, nd, lambda t: TORCH_MAX_POOL[nd](t, kernel, stride, padding, dilation, ceil_mode))
    if nd == 1:
        return _pool_torch(x.unsqueeze(-2), kind, (1, *kernel), (1, *stride), (0, *padding), (1, 1), ceil_mode,
                           count_include_pad, divisor).squeeze(-2)
    return _pool_folded(x, nd, lambda t: TORCH_AVG_POOL[nd](t, kernel, stride, padding, ceil_mode,
                                                            count_include_pad, divisor or None))


pool = define_op(
    "pool", operands=("input",),
    attrs={"kind": Attr.STR, "kernel": Attr.INTS, "stride": Attr.INTS, "padding": Attr.INTS,
           "dilation": Attr.INTS, "ceil_mode": Attr.BOOL, "count_include_pad": Attr.BOOL, "divisor": Attr.INT},
    infer=_pool_infer, reference=_pool_reference, torch_impl=_pool_torch,
    doc="Max or average over windows of the trailing len(kernel) dimensions (torch's pooling rules; "
        "divisor 0 means the window count).")


def _adaptive_infer(x, kind, output_size):
    nd = len(output_size)
    if kind not in KINDS:
        raise ValueError(f"unknown pool kind '{kind}' (known: {', '.join(KINDS)})")
    if nd < 1 or x.rank < nd:
        raise ValueError(f"output_size {output_size} does not fit input {x.shape}")
    if any(n < 1 for n in output_size) or any(s < 1 for s in x.shape[-nd:]):
        raise ValueError(f"adaptive pooling {x.shape} to {output_size} needs positive sizes")
    return x.with_(shape=(*x.shape[:-nd], *output_size))


def bins(size, n):
    """torch's adaptive bins of `size` into `n`: [floor(i*size/n), ceil((i+1)*size/n))."""
    return [((i * size) // n, -(-((i + 1) * size) // n)) for i in range(n)]


def _adaptive_reference(x, kind, output_size):
    x = wide(x)
    nd = len(output_size)
    for axis, n in zip(range(x.ndim - nd, x.ndim), output_size):
        size = x.shape[axis]
        if kind == "avg":   # averaging is separable: one (n x size) averaging matrix per axis
            m = np.zeros((n, size))
            for i, (s, e) in enumerate(bins(size, n)):
                m[i, s:e] = 1.0 / (e - s)
            x = np.moveaxis(np.tensordot(x, m, axes=([axis], [1])), -1, axis)
        else:
            parts = [x.take(np.arange(s, e), axis=axis).max(axis=axis, keepdims=True) for s, e in bins(size, n)]
            x = np.concatenate(parts, axis=axis)
    return x


adaptive_pool = define_op(
    "adaptive_pool", operands=("input",), attrs={"kind": Attr.STR, "output_size": Attr.INTS},
    infer=_adaptive_infer, reference=_adaptive_reference,
    torch_impl=lambda x, kind, output_size: _pool_folded(
        x, len(output_size), lambda t: TORCH_ADAPTIVE[kind][len(output_size)](t, output_size)),
    doc="Max or average of the trailing len(output_size) dimensions over torch's adaptive bins "
        "[floor(i*in/out), ceil((i+1)*in/out)).")


def _ints(v, nd, default=None):
    if v is None or (isinstance(v, (list, tuple)) and len(v) == 0):
        return list(default)
    v = [int(a) for a in v] if isinstance(v, (list, tuple)) else [int(v)]
    return v * nd if len(v) == 1 else v


def _cast_float(b, x):
    return b.cast(x, b.result_spec().dtype)


def emit_pool(b, x, kind, kernel, stride, padding, dilation, ceil_mode, count_include_pad=True, divisor=None, nd=2):
    kernel = _ints(kernel, nd)
    return b.emit(pool, _cast_float(b, x), kind=kind, kernel=kernel, stride=_ints(stride, nd, kernel),
                  padding=_ints(padding, nd), dilation=_ints(dilation, nd), ceil_mode=bool(ceil_mode),
                  count_include_pad=bool(count_include_pad), divisor=int(divisor or 0))


def _max_rule(nd, with_indices):
    def rule(b, x, kernel_size, stride=(), padding=0, dilation=1, ceil_mode=False):
        y = emit_pool(b, x, "max", kernel_size, stride, padding, dilation, ceil_mode, nd=nd)
        return (y, None) if with_indices else y
    rule.__module__ = __name__
    return rule


for _nd, _plain, _indexed in ((1, aten.max_pool1d.default, aten.max_pool1d_with_indices.default),
                              (2, aten.max_pool2d.default, aten.max_pool2d_with_indices.default),
                              (3, aten.max_pool3d.default, aten.max_pool3d_with_indices.default)):
    lowers(_plain)(_max_rule(_nd, False))
    lowers(_indexed)(_max_rule(_nd, True))


def _avg_rule(nd):
    def rule(b, x, kernel_size, stride=(), padding=0, ceil_mode=False, count_include_pad=True, divisor_override=None):
        return emit_pool(b, x, "avg", kernel_size, stride, padding, 1, ceil_mode, count_include_pad,
                         divisor_override, nd=nd)
    rule.__module__ = __name__
    return rule


for _nd, _target in ((1, aten.avg_pool1d.default), (2, aten.avg_pool2d.default), (3, aten.avg_pool3d.default)):
    lowers(_target)(_avg_rule(_nd))


def emit_adaptive(b, x, kind, output_size):
    x = _cast_float(b, x)
    output_size = [int(n) for n in output_size]
    nd = len(output_size)
    spatial = x.shape[-nd:]
    if all(s % n == 0 for s, n in zip(spatial, output_size)):
        kernel = [s // n for s, n in zip(spatial, output_size)]
        if all(k == 1 for k in kernel):
            return x
        return b.emit(pool, x, kind=kind, kernel=kernel, stride=kernel, padding=[0] * nd, dilation=[1] * nd,
                      ceil_mode=False, count_include_pad=True, divisor=0)
    return b.emit(adaptive_pool, x, kind=kind, output_size=output_size)


@lowers(aten._adaptive_avg_pool2d.default, aten.adaptive_avg_pool2d.default, aten.adaptive_avg_pool1d.default,
        aten._adaptive_avg_pool3d.default, aten.adaptive_avg_pool3d.default)
def _adaptive_avg(b, x, output_size):
    return emit_adaptive(b, x, "avg", output_size)


@lowers(aten.adaptive_max_pool1d.default, aten.adaptive_max_pool2d.default, aten.adaptive_max_pool3d.default)
def _adaptive_max(b, x, output_size):
    return emit_adaptive(b, x, "max", output_size), None


class _CnnPools(torch.nn.Module):
    """ResNet stem max pool, a ceil-mode pool, avg pools with and without the padding count."""

    def forward(self, x):
        F = torch.nn.functional
        a = F.max_pool2d(x, 3, stride=2, padding=1)
        b = F.max_pool2d(x, (2, 3), stride=(2, 2), ceil_mode=True, dilation=(1, 2))
        c = F.avg_pool2d(x, 3, stride=2, padding=1)
        d = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False, ceil_mode=True)
        e = F.avg_pool2d(x, 2, divisor_override=3)
        return a, b, c, d, e


class _Adaptive(torch.nn.Module):
    def forward(self, x, s):
        F = torch.nn.functional
        return (F.adaptive_avg_pool2d(x, 1), F.adaptive_avg_pool2d(x, (3, 4)), F.adaptive_avg_pool2d(x, (5, 2)),
                F.adaptive_max_pool2d(x, (4, 3)), F.adaptive_avg_pool1d(s, 3), F.adaptive_avg_pool1d(s, 5))


class _Pools1d3d(torch.nn.Module):
    def forward(self, s, v):
        F = torch.nn.functional
        return (F.max_pool1d(s, 3, 2, 1), F.avg_pool1d(s, 4, 3, 2, ceil_mode=True), F.max_pool3d(v, 2),
                F.avg_pool3d(v, (1, 3, 3), padding=(0, 1, 1), stride=1), F.adaptive_avg_pool3d(v, (2, 3, 2)))


samples(
    Sample("cnn-pools", _CnnPools(), lambda: (torch.randn(2, 3, 11, 14),)),
    Sample("adaptive", _Adaptive(), lambda: (torch.randn(2, 3, 12, 7), torch.randn(2, 4, 13))),
    Sample("pool-1d-3d", _Pools1d3d(), lambda: (torch.randn(2, 4, 13), torch.randn(1, 2, 4, 6, 5))),
)
