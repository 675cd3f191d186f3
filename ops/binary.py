"""Binary elementwise ops: one `ember.binary` op with a `kind`, numpy broadcasting.

Both operands have one element type (the rule casts them first, following torch's type
promotion as recorded on the node); comparisons and logical kinds give i1.
"""
from __future__ import annotations

import numpy as np
import torch

from ops.registry import (
    DTYPE_TO_TORCH,
    TORCH_TO_DTYPE,
    Attr,
    Sample,
    Unsupported,
    broadcast_shapes,
    define_op,
    lowers,
    samples,
    wide,
)

aten = torch.ops.aten


def _floor_div(a, b):
    if np.issubdtype(a.dtype, np.integer):
        return np.floor_divide(a, b)
    return np.floor(a / b)


BINARY_KINDS = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply,
    "div": lambda a, b: a / b if not np.issubdtype(a.dtype, np.integer) else np.true_divide(a, b),
    "div_trunc": lambda a, b: np.trunc(a / b) if not np.issubdtype(a.dtype, np.integer) else
    (np.sign(a) * np.sign(b) * (np.abs(a) // np.abs(b))),
    "div_floor": _floor_div,
    "pow": np.power, "max": np.maximum, "min": np.minimum,
    "remainder": lambda a, b: a - _floor_div(a, b) * b,
    "fmod": np.fmod, "atan2": np.arctan2,
    "eq": np.equal, "ne": np.not_equal, "lt": np.less, "le": np.less_equal, "gt": np.greater, "ge": np.greater_equal,
    "and": np.logical_and, "or": np.logical_or, "xor": np.logical_xor,
    "bitwise_and": np.bitwise_and, "bitwise_or": np.bitwise_or, "bitwise_xor": np.bitwise_xor,
}
#: kind -> the torch function, in the operands' dtype as eager computes it.
TORCH_BINARY_KINDS = {
    "add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div,
    "div_trunc": lambda a, b: torch.div(a, b, rounding_mode="trunc"),
    "div_floor": lambda a, b: torch.div(a, b, rounding_mode="floor"),
    "pow": torch.pow, "max": torch.maximum, "min": torch.minimum,
    "remainder": torch.remainder, "fmod": torch.fmod, "atan2": torch.atan2,
    "eq": torch.eq, "ne": torch.ne, "lt": torch.lt, "le": torch.le, "gt": torch.gt, "ge": torch.ge,
    "and": torch.logical_and, "or": torch.logical_or, "xor": torch.logical_xor,
    "bitwise_and": torch.bitwise_and, "bitwise_or": torch.bitwise_or, "bitwise_xor": torch.bitwise_xor,
}
PREDICATES = frozenset({"eq", "ne", "lt", "le", "gt", "ge", "and", "or", "xor"})


def _infer(lhs, rhs, kind):
    if kind not in BINARY_KINDS:
        raise ValueError(f"unknown binary kind '{kind}' (known: {', '.join(sorted(BINARY_KINDS))})")
    if lhs.dtype != rhs.dtype:
        raise ValueError(f"operand element types differ: {lhs.dtype} and {rhs.dtype}")
    return lhs.with_(shape=broadcast_shapes(lhs.shape, rhs.shape), dtype="i1" if kind in PREDICATES else lhs.dtype)


def _reference(lhs, rhs, kind):
    with np.errstate(all="ignore"):
        return BINARY_KINDS[kind](wide(lhs), wide(rhs))   # one dtype (checked by _infer)


def _torch_impl(lhs, rhs, kind):
    # one dtype in; an integer true division comes back as float and is truncated, as the reference is
    return TORCH_BINARY_KINDS[kind](lhs, rhs).to(torch.bool if kind in PREDICATES else lhs.dtype)


binary = define_op(
    "binary", operands=("lhs", "rhs"), attrs={"kind": Attr.STR}, infer=_infer, reference=_reference,
    torch_impl=_torch_impl,
    doc="Elementwise `kind`(lhs, rhs) with numpy broadcasting; operands share one element type.")


def operand_dtype(b, *xs) -> str:
    """The element type torch computes a node in: its result type, or for predicates the
    promotion of the operands (tensors win over Python scalars, as in torch)."""
    spec = b.result_spec()
    if spec.dtype != "i1":
        return spec.dtype
    tensors = [x for x in xs if hasattr(x, "spec")]
    dims = [x for x in tensors if x.rank > 0] or tensors
    dtype = DTYPE_TO_TORCH[dims[0].dtype]
    for x in dims[1:]:
        dtype = torch.promote_types(dtype, DTYPE_TO_TORCH[x.dtype])
    if not dtype.is_floating_point and any(isinstance(x, float) for x in xs):
        dtype = torch.get_default_dtype()
    return TORCH_TO_DTYPE[dtype]


def emit_binary(b, kind: str, lhs, rhs):
    dtype = operand_dtype(b, lhs, rhs)
    return b.emit(binary, b.scalar_or_value(lhs, dtype), b.scalar_or_value(rhs, dtype), kind=kind)


#: Bitwise kinds on two booleans are the logical ones (the SIMD engine's AND / OR / XOR).
_ON_BOOLS = {"bitwise_and": "and", "bitwise_or": "or", "bitwise_xor": "xor"}


def _binary_rule(kind, swap=False):
    def rule(b, lhs, rhs, *, alpha=1):
        if kind in _ON_BOOLS and all(getattr(v, "dtype", None) == "i1" for v in (lhs, rhs)):
            return emit_binary(b, _ON_BOOLS[kind], lhs, rhs)
        if alpha != 1:
            rhs = emit_binary(b, "mul", rhs, alpha) if hasattr(rhs, "spec") else rhs * alpha
        return emit_binary(b, kind, rhs, lhs) if swap else emit_binary(b, kind, lhs, rhs)
    rule.__module__ = __name__
    return rule


_RULES = {
    (aten.add.Tensor, aten.add.Scalar): "add", (aten.sub.Tensor, aten.sub.Scalar): "sub",
    (aten.mul.Tensor, aten.mul.Scalar): "mul", (aten.pow.Tensor_Tensor,): "pow",
    (aten.maximum.default,): "max", (aten.minimum.default,): "min",
    (aten.remainder.Tensor, aten.remainder.Scalar): "remainder", (aten.fmod.Tensor, aten.fmod.Scalar): "fmod",
    (aten.atan2.default,): "atan2", (aten.floor_divide.default,): "div_floor",
    (aten.eq.Tensor, aten.eq.Scalar): "eq", (aten.ne.Tensor, aten.ne.Scalar): "ne",
    (aten.lt.Tensor, aten.lt.Scalar): "lt", (aten.le.Tensor, aten.le.Scalar): "le",
    (aten.gt.Tensor, aten.gt.Scalar): "gt", (aten.ge.Tensor, aten.ge.Scalar): "ge",
    (aten.logical_and.default,): "and", (aten.logical_or.default,): "or", (aten.logical_xor.default,): "xor",
    (aten.bitwise_and.Tensor, aten.bitwise_and.Scalar): "bitwise_and",
    (aten.bitwise_or.Tensor, aten.bitwise_or.Scalar): "bitwise_or",
    (aten.bitwise_xor.Tensor, aten.bitwise_xor.Scalar): "bitwise_xor",
}
for _targets, _kind in _RULES.items():
    lowers(*_targets)(_binary_rule(_kind))
lowers(aten.rsub.Tensor, aten.rsub.Scalar)(_binary_rule("sub", swap=True))


@lowers(aten.div.Tensor, aten.div.Scalar, aten.div.Tensor_mode, aten.div.Scalar_mode)
def _div(b, lhs, rhs, *, rounding_mode=None):
    kind = {None: "div", "trunc": "div_trunc", "floor": "div_floor"}.get(rounding_mode)
    if kind is None:
        raise Unsupported(f"division with rounding_mode={rounding_mode!r}")
    return emit_binary(b, kind, lhs, rhs)


@lowers(aten.pow.Scalar)
def _pow_base(b, base, exponent):
    return emit_binary(b, "pow", base, exponent)


@lowers(aten.bitwise_not)
def _bitwise_not(b, x):
    if x.dtype != "i1":
        raise Unsupported("bitwise_not on integers")
    return b.emit("unary", x, kind="logical_not", alpha=0.0, beta=0.0)


samples(
    Sample("arith-broadcast", lambda x, y: (x + y) * (x - 2.0 * y) / (y.abs() + 1) + torch.maximum(x, y) ** 2,
           lambda: (torch.randn(4, 1, 6), torch.randn(3, 1))),
    Sample("compare-and-logic", lambda x, y: ((x > y) & (x < 1.0)).float() + ((x > 0) ^ (y > 0)).float()
           + (x == x.floor()).float() + x % 0.7,
           lambda: (torch.randn(5, 7), torch.randn(7))),
    Sample("int-arith", lambda i, x: (i * 3 + 1) // 2 + x - (i % 3), lambda: (torch.randint(-9, 9, (3, 4)), torch.randn(3, 4))),
    Sample("rsub-and-pow", lambda x: 1.0 - torch.pow(2.0, x) + torch.pow(x.abs() + 0.5, x), lambda: (torch.randn(8),)),
)
