"""Transposes: `ember.transpose` reorders the dimensions of a tensor by a permutation.

Lowers aten.permute, transpose.int, t, numpy_T, mT, adjoint (real tensors), swapaxes and movedim.
"""
from __future__ import annotations

import numpy as np
import torch

from ops.registry import Attr, Sample, define_op, lowers, norm_dim, samples

aten = torch.ops.aten


def _infer(x, perm):
    if sorted(perm) != list(range(x.rank)):
        raise ValueError(f"perm {perm} is not a permutation of the {x.rank} dimensions of {x.shape}")
    return x.with_(shape=tuple(x.shape[p] for p in perm))


transpose = define_op(
    "transpose", operands=("input",), attrs={"perm": Attr.INTS}, infer=_infer,
    reference=lambda x, perm: np.transpose(x, perm),
    torch_impl=lambda x, perm: x.permute(perm),
    doc="Result dimension i is input dimension perm[i].")


def emit_transpose(b, x, perm):
    """`ember.transpose` of `x` by `perm`, or `x` itself when `perm` is the identity."""
    perm = tuple(int(p) for p in perm)
    if perm == tuple(range(x.rank)):
        return x
    return b.emit(transpose, x, perm=perm)


def _swap(rank, d0, d1):
    perm = list(range(rank))
    if rank:
        d0, d1 = norm_dim(d0, rank), norm_dim(d1, rank)
        perm[d0], perm[d1] = perm[d1], perm[d0]
    return perm


@lowers(aten.permute, aten.permute_copy)
def _permute(b, x, dims):
    return emit_transpose(b, x, [norm_dim(d, x.rank) for d in dims] if x.rank else [])


@lowers(aten.transpose.int, aten.transpose_copy.int, aten.swapaxes, aten.swapdims)
def _transpose(b, x, dim0, dim1):
    return emit_transpose(b, x, _swap(x.rank, dim0, dim1))


@lowers(aten.t, aten.t_copy)
def _t(b, x):
    return emit_transpose(b, x, _swap(x.rank, 0, 1) if x.rank == 2 else range(x.rank))


@lowers(aten.numpy_T)
def _numpy_t(b, x):
    return emit_transpose(b, x, list(reversed(range(x.rank))))


@lowers(aten.mT, aten.adjoint)
def _mt(b, x):
    return emit_transpose(b, x, _swap(x.rank, -2, -1))


@lowers(aten.movedim)
def _movedim(b, x, source, destination):
    src = [source] if isinstance(source, int) else list(source)
    dst = [destination] if isinstance(destination, int) else list(destination)
    src = [norm_dim(d, x.rank) for d in src]
    dst = [norm_dim(d, x.rank) for d in dst]
    perm = [-1] * x.rank
    for s, d in zip(src, dst):
        perm[d] = s
    rest = iter(d for d in range(x.rank) if d not in src)
    perm = [p if p >= 0 else next(rest) for p in perm]
    return emit_transpose(b, x, perm)


def _heads(x):
    # (B, S, H*D) -> (B, H, S, D) and back, as attention layers do
    b, s, _ = x.shape
    q = x.view(b, s, 4, 6).transpose(1, 2)
    k = x.view(b, s, 4, 6).permute(0, 2, 3, 1)
    att = q @ k
    return att.transpose(-1, -2).permute(0, 2, 1, 3).reshape(b, s, -1), q.transpose(1, 2).reshape(b, s, -1) + x


samples(
    Sample("attention-heads", _heads, lambda: (torch.randn(2, 5, 24),)),
    Sample("t-and-mT", lambda w, x: (x @ w.t(), torch.movedim(x, 0, 1).mT * 2, x.T + 1),
           lambda: (torch.randn(7, 3), torch.randn(4, 3))),
    Sample("permute-4d-int", lambda x: x.permute(3, 1, 0, 2) * 2, lambda: (torch.randint(-9, 9, (2, 3, 4, 5)),)),
)
