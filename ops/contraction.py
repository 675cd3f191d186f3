"""Contractions: batched matmul and linear (x @ W^T + b), run on the dot-product engine."""
from __future__ import annotations

import numpy as np
import torch

from ops.registry import Sample, broadcast_shapes, define_op, lowers, samples, wide

aten = torch.ops.aten


def _matmul_infer(lhs, rhs):
    if lhs.rank < 2 or rhs.rank < 2:
        raise ValueError(f"operands must have rank >= 2, got {lhs.rank} and {rhs.rank}")
    if lhs.shape[-1] != rhs.shape[-2]:
        raise ValueError(f"contracted sizes differ: {lhs.shape[-1]} and {rhs.shape[-2]}")
    if lhs.dtype != rhs.dtype:
        raise ValueError(f"element types differ: {lhs.dtype} and {rhs.dtype}")
    batch = broadcast_shapes(lhs.shape[:-2], rhs.shape[:-2])
    return lhs.with_(shape=(*batch, lhs.shape[-2], rhs.shape[-1]))


matmul = define_op(
    "matmul", operands=("lhs", "rhs"), infer=_matmul_infer,
    reference=lambda lhs, rhs: np.matmul(wide(lhs), wide(rhs)),
    torch_impl=torch.matmul,
    doc="lhs[..., M, K] @ rhs[..., K, N] with broadcast batch dimensions.")


def _linear_infer(x, w, bias):
    if w.rank != 2 or x.rank < 1 or x.shape[-1] != w.shape[1]:
        raise ValueError(f"input {x.shape} does not match weight {w.shape} (expected [N, {x.shape[-1:]}])")
    if bias is not None and bias.shape not in ((w.shape[0],), ()):
        raise ValueError(f"bias shape {bias.shape} is not ({w.shape[0]},)")
    if len({x.dtype, w.dtype} | ({bias.dtype} if bias else set())) != 1:
        raise ValueError("input, weight and bias must share one element type")
    return x.with_(shape=(*x.shape[:-1], w.shape[0]))


def _linear_reference(x, w, bias):
    y = wide(x) @ wide(w).T
    return y if bias is None else y + wide(bias)


linear = define_op(
    "linear", operands=("input", "weight", "bias?"), infer=_linear_infer, reference=_linear_reference,
    torch_impl=torch.nn.functional.linear,
    doc="input[..., K] @ weight[N, K]^T + bias[N]: a layer with its weight in PyTorch's layout.")


def _same(b, *xs):
    dtype = b.result_spec().dtype
    return [None if x is None else b.cast(x, dtype) for x in xs]


@lowers(aten.linear)
def _linear(b, x, w, bias=None):
    x, w, bias = _same(b, x, w, bias)
    return b.emit(linear, x, w, bias)


@lowers(aten.mm, aten.bmm)
def _mm(b, lhs, rhs):
    return b.emit(matmul, *_same(b, lhs, rhs))


@lowers(aten.matmul)
def _matmul(b, lhs, rhs):
    lhs, rhs = _same(b, lhs, rhs)
    out = b.result_spec().shape
    if lhs.rank == 1:
        lhs = b.emit("reshape", lhs, shape=(1, lhs.shape[0]))
    if rhs.rank == 1:
        rhs = b.emit("reshape", rhs, shape=(rhs.shape[0], 1))
    y = b.emit(matmul, lhs, rhs)
    return y if y.shape == out else b.emit("reshape", y, shape=out)


@lowers(aten.addmm, aten.baddbmm)
def _addmm(b, acc, lhs, rhs, *, beta=1, alpha=1):
    acc, lhs, rhs = _same(b, acc, lhs, rhs)
    y = b.emit(matmul, lhs, rhs)
    if alpha != 1:
        y = b.emit("binary", y, b.constant(alpha, y.dtype), kind="mul")
    if beta == 0:
        return y
    if beta != 1:
        acc = b.emit("binary", acc, b.constant(beta, acc.dtype), kind="mul")
    return b.emit("binary", y, acc, kind="add")


@lowers(aten.dot)
def _dot(b, lhs, rhs):
    lhs, rhs = _same(b, lhs, rhs)
    y = b.emit(matmul, b.emit("reshape", lhs, shape=(1, lhs.shape[0])), b.emit("reshape", rhs, shape=(rhs.shape[0], 1)))
    return b.emit("reshape", y, shape=())


class _Mlp(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(12, 24)
        self.b = torch.nn.Linear(24, 5, bias=False)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


samples(
    Sample("linear", _Mlp(), lambda: (torch.randn(3, 7, 12),)),
    Sample("batched-matmul", lambda x, y: x @ y + torch.bmm(x, y), lambda: (torch.randn(2, 5, 8), torch.randn(2, 8, 3))),
    Sample("broadcast-matmul", lambda x, y: torch.matmul(x, y), lambda: (torch.randn(2, 3, 5, 8), torch.randn(8, 4))),
    Sample("einsum-decomposes-to-bmm", lambda a, b: torch.einsum("bnij,jbnd->ibnd", a, b),
           lambda: (torch.randn(2, 3, 4, 5), torch.randn(5, 2, 3, 6))),
    Sample("addmm", lambda a, x, y: torch.addmm(a, x, y, beta=0.5, alpha=2.0), lambda: (torch.randn(4), torch.randn(3, 6), torch.randn(6, 4))),
)
