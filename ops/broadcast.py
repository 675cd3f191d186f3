"""Broadcasts: `ember.broadcast` repeats size-1 dimensions (and adds leading ones) to `shape`.

Lowers aten.expand (with -1 sizes) / expand_as, and repeat, tile and repeat_interleave with a
static count, which are a broadcast between two reshapes.
"""
from __future__ import annotations

import numpy as np
import torch

from ops.registry import Attr, Sample, Unsupported, define_op, lowers, norm_dim, samples

aten = torch.ops.aten


def _infer(x, shape):
    if len(shape) < x.rank:
        raise ValueError(f"cannot broadcast {x.shape} to the lower rank shape {shape}")
    for s, t in zip(reversed(x.shape), reversed(shape)):
        if s != t and s != 1:
            raise ValueError(f"cannot broadcast {x.shape} to {shape}")
    if any(t < 0 for t in shape):
        raise ValueError(f"shape {shape} has a negative size")
    return x.with_(shape=tuple(shape))


broadcast = define_op(
    "broadcast", operands=("input",), attrs={"shape": Attr.INTS}, infer=_infer,
    reference=lambda x, shape: np.broadcast_to(x, shape).copy(),
    torch_impl=lambda x, shape: x.expand(shape),   # a view, as eager's expand
    doc="The input repeated along its size-1 dimensions (numpy broadcasting, new dims leading) to `shape`.")


def emit_broadcast(b, x, shape):
    shape = tuple(int(s) for s in shape)
    return x if x.shape == shape else b.emit(broadcast, x, shape=shape)


def _reshape(b, x, shape):
    shape = tuple(int(s) for s in shape)
    return x if x.shape == shape else b.emit("reshape", x, shape=shape)


@lowers(aten.expand, aten.expand_copy, aten.expand_as, aten.broadcast_to)
def _expand(b, x, *args, **kwargs):
    return emit_broadcast(b, x, b.result_spec().shape)


@lowers(aten.copy.default)
def _copy(b, x, src, non_blocking=False):
    """The functional `x.copy_(src)`: `src` in `x`'s dtype, broadcast to its shape."""
    return emit_broadcast(b, b.cast(src, x.dtype), x.shape)


def _repeat(b, x, repeats):
    repeats = [int(r) for r in repeats]
    if len(repeats) < x.rank:
        raise ValueError(f"repeat {repeats} has fewer entries than the rank of {x.shape}")
    shape = (1,) * (len(repeats) - x.rank) + x.shape
    if all(r == 1 for r in repeats):
        return _reshape(b, x, shape)
    # (s0, s1, ...) -> (1, s0, 1, s1, ...) -> (r0, s0, r1, s1, ...) -> (r0*s0, r1*s1, ...)
    inter = [d for s in shape for d in (1, s)]
    wide = [d for r, s in zip(repeats, shape) for d in (r, s)]
    y = emit_broadcast(b, _reshape(b, x, inter), wide)
    return _reshape(b, y, [r * s for r, s in zip(repeats, shape)])


@lowers(aten.repeat)
def _repeat_rule(b, x, repeats):
    return _repeat(b, x, repeats)


@lowers(aten.tile)
def _tile(b, x, dims):
    dims = [int(d) for d in dims]
    return _repeat(b, x, [1] * (x.rank - len(dims)) + dims)


@lowers(aten.repeat_interleave.self_int)
def _repeat_interleave(b, x, repeats, dim=None, *, output_size=None):
    if not isinstance(repeats, int):
        raise Unsupported("repeat_interleave with a symbolic repeat count")
    if dim is None:
        x = _reshape(b, x, (int(np.prod(x.shape)),))
        dim = 0
    dim = norm_dim(dim, x.rank)
    y = _reshape(b, x, x.shape[:dim + 1] + (1,) + x.shape[dim + 1:])
    y = emit_broadcast(b, y, x.shape[:dim + 1] + (repeats,) + x.shape[dim + 1:])
    return _reshape(b, y, x.shape[:dim] + (x.shape[dim] * repeats,) + x.shape[dim + 1:])


@lowers(aten.repeat_interleave.self_Tensor)
def _repeat_interleave_tensor(b, x, repeats, dim=None, *, output_size=None):
    raise Unsupported("repeat_interleave with per-element repeat counts (a tensor)")


def _gqa(k, q):
    # Hugging Face repeat_kv: (B, KV, S, D) -> (B, KV*n, S, D) through expand + reshape
    bsz, kv, s, d = k.shape
    kk = k[:, :, None, :, :].expand(bsz, kv, 3, s, d).reshape(bsz, kv * 3, s, d)
    kr = torch.repeat_interleave(k, 3, dim=1)
    return q @ kk.transpose(-1, -2) + q @ kr.transpose(-1, -2)


samples(
    Sample("gqa-repeat-kv", _gqa, lambda: (torch.randn(1, 2, 5, 4), torch.randn(1, 6, 5, 4))),
    Sample("expand-repeat-tile", lambda x, c: (x.expand(3, -1, 4) + c.expand_as(x.expand(3, 2, 4)),
                                               x.repeat(2, 1, 3), torch.tile(c, (2,)), c.repeat_interleave(2)),
           lambda: (torch.randn(2, 1), torch.randn(4))),
    Sample("copy-into", lambda x, y: x.clone().copy_(y[0].to(torch.float16)) * 2.0,
           lambda: (torch.randn(3, 4), torch.randn(2, 4))),
    Sample("expand-int", lambda m: m[:, None, :].expand(-1, 3, -1) * 2, lambda: (torch.randint(0, 9, (2, 5)),)),
)
