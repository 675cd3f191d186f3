"""Unary elementwise ops: one `ember.unary` op with a `kind`, run by the SIMD engine.

`alpha` and `beta` carry the kind's scalar parameters (leaky_relu slope, clamp bounds, ...).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ops.registry import Attr, Sample, Unsupported, define_op, lowers, samples, wide

aten = torch.ops.aten


def erf(x: np.ndarray) -> np.ndarray:
    """erf with fractional error below 1.2e-7 (the Chebyshev fit of erfc, Numerical Recipes'
    `erfcc`): numpy has no erf, and this is well inside fp32 tolerances."""
    x = np.asarray(x, dtype=np.float64)
    z = np.abs(x)
    t = 1.0 / (1.0 + 0.5 * z)
    poly = (-z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (
        -0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (
            -0.82215223 + t * 0.17087277)))))))))
    return np.sign(x) * (1.0 - t * np.exp(poly))


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


UNARY_KINDS = {
    "neg": lambda x, a, b: -x,
    "abs": lambda x, a, b: np.abs(x),
    "exp": lambda x, a, b: np.exp(x),
    "expm1": lambda x, a, b: np.expm1(x),
    "log": lambda x, a, b: np.log(x),
    "log1p": lambda x, a, b: np.log1p(x),
    "log2": lambda x, a, b: np.log2(x),
    "sqrt": lambda x, a, b: np.sqrt(x),
    "rsqrt": lambda x, a, b: 1.0 / np.sqrt(x),
    "reciprocal": lambda x, a, b: 1.0 / x,
    "sin": lambda x, a, b: np.sin(x),
    "cos": lambda x, a, b: np.cos(x),
    "tan": lambda x, a, b: np.tan(x),
    "tanh": lambda x, a, b: np.tanh(x),
    "sigmoid": lambda x, a, b: _sigmoid(x),
    "relu": lambda x, a, b: np.maximum(x, 0),
    "gelu": lambda x, a, b: 0.5 * x * (1.0 + erf(x / math.sqrt(2.0))),
    "gelu_tanh": lambda x, a, b: 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3))),
    "silu": lambda x, a, b: x * _sigmoid(x),
    "erf": lambda x, a, b: erf(x),
    "floor": lambda x, a, b: np.floor(x),
    "ceil": lambda x, a, b: np.ceil(x),
    "round": lambda x, a, b: np.round(x),
    "trunc": lambda x, a, b: np.trunc(x),
    "sign": lambda x, a, b: np.sign(x),
    "logical_not": lambda x, a, b: np.logical_not(x),
    "leaky_relu": lambda x, a, b: np.where(x > 0, x, x * a),
    "elu": lambda x, a, b: np.where(x > 0, x, a * np.expm1(x)),
    "clamp": lambda x, a, b: np.minimum(np.maximum(x, a), b),
    "hardsigmoid": lambda x, a, b: np.clip(x / 6.0 + 0.5, 0.0, 1.0),
    "hardswish": lambda x, a, b: x * np.clip(x / 6.0 + 0.5, 0.0, 1.0),
    "softplus": lambda x, a, b: np.where(x * a > b, x, np.log1p(np.exp(np.minimum(x * a, b))) / a),
    "mish": lambda x, a, b: x * np.tanh(np.log1p(np.exp(x))),
    "pow": lambda x, a, b: np.power(x, a),
}


_F = torch.nn.functional


def _torch_clamp(x, lo, hi):
    # infinite bounds mean "no bound" (and keep integer inputs integer)
    lo = None if lo == -math.inf else (lo if x.is_floating_point() else math.ceil(lo))
    hi = None if hi == math.inf else (hi if x.is_floating_point() else math.floor(hi))
    return torch.clamp(x, lo, hi)


#: kind -> the torch function of (x, alpha, beta), in x's dtype as eager computes it.
TORCH_UNARY_KINDS = {
    "neg": lambda x, a, b: torch.neg(x),
    "abs": lambda x, a, b: torch.abs(x),
    "exp": lambda x, a, b: torch.exp(x),
    "expm1": lambda x, a, b: torch.expm1(x),
    "log": lambda x, a, b: torch.log(x),
    "log1p": lambda x, a, b: torch.log1p(x),
    "log2": lambda x, a, b: torch.log2(x),
    "sqrt": lambda x, a, b: torch.sqrt(x),
    "rsqrt": lambda x, a, b: torch.rsqrt(x),
    "reciprocal": lambda x, a, b: torch.reciprocal(x),
    "sin": lambda x, a, b: torch.sin(x),
    "cos": lambda x, a, b: torch.cos(x),
    "tan": lambda x, a, b: torch.tan(x),
    "tanh": lambda x, a, b: torch.tanh(x),
    "sigmoid": lambda x, a, b: torch.sigmoid(x),
    "relu": lambda x, a, b: torch.relu(x),
    "gelu": lambda x, a, b: _F.gelu(x),
    "gelu_tanh": lambda x, a, b: _F.gelu(x, approximate="tanh"),
    "silu": lambda x, a, b: _F.silu(x),
    "erf": lambda x, a, b: torch.erf(x),
    "floor": lambda x, a, b: torch.floor(x),
    "ceil": lambda x, a, b: torch.ceil(x),
    "round": lambda x, a, b: torch.round(x),
    "trunc": lambda x, a, b: torch.trunc(x),
    "sign": lambda x, a, b: torch.sign(x),
    "logical_not": lambda x, a, b: torch.logical_not(x),
    "leaky_relu": lambda x, a, b: _F.leaky_relu(x, a),
    "elu": lambda x, a, b: _F.elu(x, a),
    "clamp": _torch_clamp,
    "hardsigmoid": lambda x, a, b: _F.hardsigmoid(x),
    "hardswish": lambda x, a, b: _F.hardswish(x),
    "softplus": lambda x, a, b: _F.softplus(x, a, b),
    "mish": lambda x, a, b: _F.mish(x),
    "pow": lambda x, a, b: torch.pow(x, a if x.is_floating_point() or a != int(a) else int(a)),
}


def _infer(x, kind, alpha, beta):
    if kind not in UNARY_KINDS:
        raise ValueError(f"unknown unary kind '{kind}' (known: {', '.join(sorted(UNARY_KINDS))})")
    return x.with_(dtype="i1") if kind == "logical_not" else x


def _reference(x, kind, alpha, beta):
    with np.errstate(all="ignore"):
        return UNARY_KINDS[kind](wide(x), alpha, beta)


def _torch_impl(x, kind, alpha, beta):
    y = TORCH_UNARY_KINDS[kind](x, alpha, beta)
    return y.to(torch.bool if kind == "logical_not" else x.dtype)


unary = define_op(
    "unary", operands=("input",), attrs={"kind": Attr.STR, "alpha": Attr.FLOAT, "beta": Attr.FLOAT},
    infer=_infer, reference=_reference, torch_impl=_torch_impl,
    doc="Elementwise `kind`(input), with scalar parameters `alpha` and `beta` where the kind has them.")


def emit_unary(b, x, kind: str, alpha: float = 0.0, beta: float = 0.0):
    """`ember.unary` in the dtype torch gives the node's result (ints promote to float first)."""
    out = b.result_spec().dtype
    if kind != "logical_not":
        x = b.cast(x, out)
    return b.emit(unary, x, kind=kind, alpha=alpha, beta=beta)


_SIMPLE = {
    aten.neg: "neg", aten.abs: "abs", aten.exp: "exp", aten.expm1: "expm1", aten.log: "log",
    aten.log1p: "log1p", aten.log2: "log2", aten.sqrt: "sqrt", aten.rsqrt: "rsqrt",
    aten.reciprocal: "reciprocal", aten.sin: "sin", aten.cos: "cos", aten.tan: "tan",
    aten.tanh: "tanh", aten.sigmoid: "sigmoid", aten.relu: "relu", aten.silu: "silu", aten.erf: "erf",
    aten.floor: "floor", aten.ceil: "ceil", aten.trunc: "trunc", aten.sign: "sign",
    aten.logical_not: "logical_not", aten.hardsigmoid: "hardsigmoid", aten.hardswish: "hardswish",
    aten.mish: "mish",
}


def _simple_rule(kind):
    def rule(b, x):
        return emit_unary(b, x, kind)
    rule.__module__ = __name__
    return rule


for _target, _kind in _SIMPLE.items():
    lowers(_target)(_simple_rule(_kind))


@lowers(aten.round)
def _round(b, x, decimals=0):
    if decimals:
        raise Unsupported("round with decimals")
    return emit_unary(b, x, "round")


@lowers(aten.gelu)
def _gelu(b, x, approximate="none"):
    return emit_unary(b, x, "gelu_tanh" if approximate == "tanh" else "gelu")


@lowers(aten.leaky_relu)
def _leaky_relu(b, x, negative_slope=0.01):
    return emit_unary(b, x, "leaky_relu", float(negative_slope))


@lowers(aten.elu)
def _elu(b, x, alpha=1.0, scale=1.0, input_scale=1.0):
    if scale != 1.0 or input_scale != 1.0:
        raise Unsupported("elu with scale or input_scale")
    return emit_unary(b, x, "elu", float(alpha))


@lowers(aten.hardtanh)
def _hardtanh(b, x, min_val=-1.0, max_val=1.0):
    return emit_unary(b, x, "clamp", float(min_val), float(max_val))


@lowers(aten.clamp.default, aten.clamp_min.default, aten.clamp_max.default)
def _clamp(b, x, lo=None, hi=None):
    target = b.node.target
    if target == aten.clamp_max.default:
        lo, hi = None, lo
    if not all(v is None or isinstance(v, (int, float)) for v in (lo, hi)):
        raise Unsupported("clamp with tensor bounds")
    lo = -math.inf if lo is None else float(lo)
    hi = math.inf if hi is None else float(hi)
    return emit_unary(b, x, "clamp", lo, hi)


@lowers(aten.softplus)
def _softplus(b, x, beta=1.0, threshold=20.0):
    return emit_unary(b, x, "softplus", float(beta), float(threshold))


@lowers(aten.pow.Tensor_Scalar)
def _pow_scalar(b, x, exponent):
    return emit_unary(b, x, "pow", float(exponent))


def _all_unary(x):
    y = torch.nn.functional.gelu(x) + torch.nn.functional.gelu(x, approximate="tanh") + torch.sigmoid(x)
    y = y + torch.tanh(x) + torch.nn.functional.silu(x) + torch.exp(-x.abs()) + torch.erf(x)
    y = y + torch.nn.functional.leaky_relu(x, 0.2) + torch.nn.functional.elu(x) + x.clamp(-0.5, 0.7)
    y = y + torch.nn.functional.hardswish(x) + torch.nn.functional.softplus(x) + torch.nn.functional.mish(x)
    y = y + torch.rsqrt(x.abs() + 1) + torch.log1p(x.abs()) + torch.sin(x) * torch.cos(x) + x.pow(2)
    return y + torch.floor(x) + torch.ceil(x) + torch.sign(x) + torch.relu(x) + torch.reciprocal(x.abs() + 1)


samples(
    Sample("activations", _all_unary, lambda: (torch.randn(6, 33),)),
    Sample("int-to-float", lambda x: torch.sigmoid(x) + torch.exp(x.float() * 0.1),
           lambda: (torch.randint(-5, 5, (4, 8)),)),
)
