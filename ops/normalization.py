"""Normalizations: layer/RMS norm (`ember.norm`), inference batch norm (`ember.batch_norm`) and
group norm (`ember.group_norm`).

`ember.norm` {kind: layer|rms, axes, eps} normalizes over the last `axes` dimensions, then scales
by `weight` and shifts by `bias` (both optional, shaped like those dimensions).
`ember.batch_norm` {eps} uses the running statistics (inference): channels are dimension 1.
`ember.group_norm` {groups, eps} normalizes each of `groups` channel groups of an (N, C, *) input.
Every op computes its statistics in float64 in the reference and rounds once, as torch upcasts.
"""
from __future__ import annotations

import numpy as np
import torch

from ops.registry import Attr, Sample, Unsupported, define_op, lowers, samples

aten = torch.ops.aten

NORM_KINDS = ("layer", "rms")


def _wide(x):
    return None if x is None else np.asarray(x).astype(np.float64)


def _check_same_dtype(op, x, *others):
    for o in others:
        if o is not None and o.dtype != x.dtype:
            raise ValueError(f"{op}: operand element types differ: {x.dtype} and {o.dtype}")


# ----------------------------------------------------------------------------- layer / RMS norm

def _norm_infer(x, weight, bias, kind, axes, eps):
    if kind not in NORM_KINDS:
        raise ValueError(f"unknown norm kind '{kind}' (known: {', '.join(NORM_KINDS)})")
    if not x.is_float:
        raise ValueError(f"norm needs a floating-point input, got {x.dtype}")
    if not 1 <= axes <= x.rank:
        raise ValueError(f"axes={axes} is out of range for rank {x.rank}")
    if kind == "rms" and bias is not None:
        raise ValueError("rms norm takes no bias")
    inner = x.shape[x.rank - axes:]
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and p.shape != inner:
            raise ValueError(f"{name} shape {p.shape} is not the normalized shape {inner}")
    _check_same_dtype("norm", x, weight, bias)
    return x


def _norm_reference(x, weight, bias, kind, axes, eps):
    x = _wide(x)
    dims = tuple(range(x.ndim - axes, x.ndim))
    if kind == "layer":
        x = x - x.mean(axis=dims, keepdims=True)
    y = x / np.sqrt((x * x).mean(axis=dims, keepdims=True) + eps)
    if weight is not None:
        y = y * _wide(weight)
    if bias is not None:
        y = y + _wide(bias)
    return y


_F = torch.nn.functional


def _norm_torch(x, weight, bias, kind, axes, eps):
    inner = x.shape[x.dim() - axes:]
    if kind == "layer":
        return _F.layer_norm(x, inner, weight, bias, eps)
    return _F.rms_norm(x, inner, weight, eps)


norm = define_op(
    "norm", operands=("input", "weight?", "bias?"),
    attrs={"kind": Attr.STR, "axes": Attr.INT, "eps": Attr.FLOAT},
    infer=_norm_infer, reference=_norm_reference, torch_impl=_norm_torch,
    doc="Normalize over the last `axes` dims: layer ((x - mean) / sqrt(var + eps)) or rms "
        "(x / sqrt(mean(x^2) + eps)), then * weight + bias.")


def _params(b, dtype, *ps):
    return [None if p is None else b.cast(p, dtype) for p in ps]


def _check_shape(x, normalized_shape):
    k = len(normalized_shape)
    if k == 0 or tuple(x.shape[x.rank - k:]) != tuple(normalized_shape):
        raise ValueError(f"normalized_shape {list(normalized_shape)} does not end input shape {x.shape}")
    return k


def _used_results(b) -> set[int]:
    import operator
    used = set()
    for user in b.node.users:
        if user.target is not operator.getitem:
            return {0, 1, 2}
        used.add(user.args[1])
    return used


def _stats(b, x, k, eps, kind, stat, index):
    """The `stat` ("mean" or "rstd") over the last k dims, kept as size 1, from reductions: the
    extra results of native_layer_norm / _fused_rms_norm, in the dtype of the node's result `index`."""
    dtype = b.result_spec(index).dtype
    xs = b.cast(x, dtype)
    dims = list(range(x.rank - k, x.rank))
    if stat == "mean":
        return b.emit("reduce", xs, kind="mean", dims=dims, keepdim=True, correction=0.0)
    if kind == "layer":
        var = b.emit("reduce", xs, kind="var", dims=dims, keepdim=True, correction=0.0)
    else:
        var = b.emit("reduce", b.emit("binary", xs, xs, kind="mul"), kind="mean", dims=dims, keepdim=True,
                     correction=0.0)
    var = b.emit("binary", var, b.constant(eps, dtype), kind="add")
    return b.emit("unary", var, kind="rsqrt", alpha=0.0, beta=0.0)


@lowers(aten.layer_norm.default)
def _layer_norm(b, x, normalized_shape, weight=None, bias=None, eps=1e-5, cudnn_enable=True):
    k = _check_shape(x, normalized_shape)
    dtype = b.result_spec().dtype
    return b.emit(norm, b.cast(x, dtype), *_params(b, dtype, weight, bias), kind="layer", axes=k, eps=float(eps))


@lowers(aten.native_layer_norm.default)
def _native_layer_norm(b, x, normalized_shape, weight, bias, eps):
    k = _check_shape(x, normalized_shape)
    dtype = b.result_spec(0).dtype
    used = _used_results(b)
    out = b.emit(norm, b.cast(x, dtype), *_params(b, dtype, weight, bias), kind="layer", axes=k,
                 eps=float(eps)) if 0 in used else None
    mean = _stats(b, x, k, float(eps), "layer", "mean", 1) if 1 in used else None
    rstd = _stats(b, x, k, float(eps), "layer", "rstd", 2) if 2 in used else None
    return out, mean, rstd


def _rms_eps(x, eps):
    if eps is not None:
        return float(eps)
    # torch computes in float32 for 16- and 32-bit floats and takes that type's epsilon
    return float(torch.finfo(torch.float64 if x.dtype == "f64" else torch.float32).eps)


@lowers(aten.rms_norm.default)
def _rms_norm(b, x, normalized_shape, weight=None, eps=None):
    k = _check_shape(x, normalized_shape)
    dtype = b.result_spec().dtype
    return b.emit(norm, b.cast(x, dtype), *_params(b, dtype, weight), None, kind="rms", axes=k, eps=_rms_eps(x, eps))


@lowers(aten._fused_rms_norm.default)
def _fused_rms_norm(b, x, normalized_shape, weight, eps):
    k = _check_shape(x, normalized_shape)
    dtype = b.result_spec(0).dtype
    used = _used_results(b)
    e = _rms_eps(x, eps)
    out = b.emit(norm, b.cast(x, dtype), *_params(b, dtype, weight), None, kind="rms", axes=k,
                 eps=e) if 0 in used else None
    rstd = _stats(b, x, k, e, "rms", "rstd", 1) if 1 in used else None
    return out, rstd


# ----------------------------------------------------------------------------- batch norm (inference)

def _bn_infer(x, weight, bias, mean, var, eps):
    if not x.is_float:
        raise ValueError(f"batch_norm needs a floating-point input, got {x.dtype}")
    if x.rank < 2:
        raise ValueError(f"batch_norm needs an input of rank >= 2 (N, C, ...), got rank {x.rank}")
    c = x.shape[1]
    for name, p in (("weight", weight), ("bias", bias), ("running_mean", mean), ("running_var", var)):
        if p is not None and p.shape != (c,):
            raise ValueError(f"{name} shape {p.shape} is not ({c},)")
    _check_same_dtype("batch_norm", x, weight, bias, mean, var)
    return x


def _bn_reference(x, weight, bias, mean, var, eps):
    shape = (1, -1) + (1,) * (x.ndim - 2)
    y = (_wide(x) - _wide(mean).reshape(shape)) / np.sqrt(_wide(var).reshape(shape) + eps)
    if weight is not None:
        y = y * _wide(weight).reshape(shape)
    if bias is not None:
        y = y + _wide(bias).reshape(shape)
    return y


batch_norm = define_op(
    "batch_norm", operands=("input", "weight?", "bias?", "running_mean", "running_var"), attrs={"eps": Attr.FLOAT},
    infer=_bn_infer, reference=_bn_reference,
    torch_impl=lambda x, weight, bias, mean, var, eps: _F.batch_norm(x, mean, var, weight, bias, False, 0.0, eps),
    doc="Inference batch norm over channel dim 1: (x - running_mean) / sqrt(running_var + eps) * weight + bias.")


def _emit_bn(b, x, weight, bias, mean, var, eps):
    if mean is None or var is None:
        raise Unsupported("batch norm without running statistics (batch statistics are training-only)")
    dtype = b.result_spec(0).dtype
    return b.emit(batch_norm, b.cast(x, dtype), *_params(b, dtype, weight, bias, mean, var), eps=float(eps))


@lowers(aten._native_batch_norm_legit_no_training.default)
def _bn_no_training(b, x, weight, bias, running_mean, running_var, momentum, eps):
    # results 1 and 2 (saved mean / invstd) are empty at inference
    return _emit_bn(b, x, weight, bias, running_mean, running_var, eps), None, None


@lowers(aten.native_batch_norm.default)
def _bn_legit(b, x, weight, bias, running_mean, running_var, training, momentum, eps):
    if training:
        raise Unsupported("batch norm in training mode (batch statistics)")
    return _emit_bn(b, x, weight, bias, running_mean, running_var, eps), None, None


@lowers(aten.batch_norm.default)
def _bn(b, x, weight, bias, running_mean, running_var, training, momentum, eps, cudnn_enabled=True):
    if training:
        raise Unsupported("batch norm in training mode (batch statistics)")
    return _emit_bn(b, x, weight, bias, running_mean, running_var, eps)


# ----------------------------------------------------------------------------- group norm

def _gn_infer(x, weight, bias, groups, eps):
    if not x.is_float:
        raise ValueError(f"group_norm needs a floating-point input, got {x.dtype}")
    if x.rank < 2:
        raise ValueError(f"group_norm needs an input of rank >= 2 (N, C, ...), got rank {x.rank}")
    c = x.shape[1]
    if groups < 1 or c % groups:
        raise ValueError(f"{c} channels do not split into {groups} groups")
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and p.shape != (c,):
            raise ValueError(f"{name} shape {p.shape} is not ({c},)")
    _check_same_dtype("group_norm", x, weight, bias)
    return x


def _gn_reference(x, weight, bias, groups, eps):
    n, c = x.shape[:2]
    g = _wide(x).reshape(n, groups, -1)
    g = g - g.mean(axis=-1, keepdims=True)
    y = (g / np.sqrt((g * g).mean(axis=-1, keepdims=True) + eps)).reshape(x.shape)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    if weight is not None:
        y = y * _wide(weight).reshape(shape)
    if bias is not None:
        y = y + _wide(bias).reshape(shape)
    return y


group_norm = define_op(
    "group_norm", operands=("input", "weight?", "bias?"), attrs={"groups": Attr.INT, "eps": Attr.FLOAT},
    infer=_gn_infer, reference=_gn_reference,
    torch_impl=lambda x, weight, bias, groups, eps: _F.group_norm(x, groups, weight, bias, eps),
    doc="Group norm of an (N, C, *) input: each of `groups` channel groups normalized to zero mean and "
        "unit variance (+eps), then * weight[C] + bias[C].")


@lowers(aten.group_norm.default)
def _group_norm(b, x, num_groups, weight=None, bias=None, eps=1e-5, cudnn_enabled=True):
    dtype = b.result_spec().dtype
    return b.emit(group_norm, b.cast(x, dtype), *_params(b, dtype, weight, bias), groups=int(num_groups), eps=float(eps))


@lowers(aten.native_group_norm.default)
def _native_group_norm(b, x, weight, bias, n, c, hxw, group, eps):
    dtype = b.result_spec(0).dtype
    # mean and rstd (N, group) are only needed for training
    return (b.emit(group_norm, b.cast(x, dtype), *_params(b, dtype, weight, bias), groups=int(group), eps=float(eps)),
            None, None)


# ----------------------------------------------------------------------------- samples

class _Norms(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.ln = torch.nn.LayerNorm(16)
        self.ln2 = torch.nn.LayerNorm((4, 16), elementwise_affine=False)
        self.rms = torch.nn.RMSNorm(16, eps=1e-6)
        with torch.no_grad():
            self.ln.weight.uniform_(0.5, 1.5)
            self.ln.bias.uniform_(-0.5, 0.5)
            self.rms.weight.uniform_(0.5, 1.5)

    def forward(self, x):
        return self.ln(x) + self.ln2(x) * 0.5 + self.rms(x) + torch.nn.functional.rms_norm(x, (4, 16))


class _ConvNorms(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = torch.nn.BatchNorm2d(6)
        self.bn1d = torch.nn.BatchNorm1d(6, affine=False)
        self.gn = torch.nn.GroupNorm(3, 6)
        with torch.no_grad():
            for m in (self.bn, self.gn):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
            self.bn.running_mean.uniform_(-1, 1)
            self.bn.running_var.uniform_(0.5, 2)
            self.bn1d.running_mean.uniform_(-1, 1)
            self.bn1d.running_var.uniform_(0.5, 2)

    def forward(self, x):
        return self.bn(x) + self.gn(x), self.bn1d(x.flatten(2))


def _native_ln(x, w, bias):
    out, mean, rstd = torch.ops.aten.native_layer_norm(x, [x.shape[-1]], w, bias, 1e-5)
    return out * 2, mean + rstd


def _bf16_norms(x, w):
    ln = torch.nn.functional.layer_norm(x, (16,), w, w)
    out, mean, rstd = torch.ops.aten.native_layer_norm(x, [16], w, None, 1e-5)
    return ln, torch.nn.functional.rms_norm(x, (16,), w), out, mean, rstd


def _fused_rms(x, w):
    out, rstd = torch.ops.aten._fused_rms_norm(x, [x.shape[-1]], w, None)
    return out, rstd * 0.1


def _explicit_bn_gn(x, w, bias, rm, rv):
    aten = torch.ops.aten
    rv = rv.abs() + 0.5
    y = aten.batch_norm(x, w, bias, rm, rv, False, 0.1, 1e-5, False)
    y = y + aten.native_batch_norm(x, w, None, rm, rv, False, 0.1, 1e-3)[0]
    return y + aten.native_group_norm(x, w, bias, x.shape[0], x.shape[1], x.shape[2] * x.shape[3], 2, 1e-5)[0]


samples(
    Sample("layer-and-rms-norm", _Norms(), lambda: (torch.randn(2, 3, 4, 16) * 2 + 0.5,)),
    Sample("batch-and-group-norm", _ConvNorms(), lambda: (torch.randn(2, 6, 5, 4),)),
    Sample("native-layer-norm-stats", _native_ln, lambda: (torch.randn(3, 10) + 1, torch.randn(10), torch.randn(10))),
    Sample("norms-bf16", _bf16_norms,
           lambda: (torch.randn(2, 6, 16).to(torch.bfloat16), torch.randn(16).to(torch.bfloat16)), rtol=2e-2),
    Sample("fused-rms-norm", _fused_rms, lambda: (torch.randn(2, 5, 12), torch.randn(12))),
    Sample("explicit-batch-and-group-norm", _explicit_bn_gn,
           lambda: (torch.randn(2, 4, 3, 5), torch.randn(4), torch.randn(4), torch.randn(4), torch.randn(4))),
)
