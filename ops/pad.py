"""Padding: `ember.pad` grows (or, with negative amounts, crops) every dimension.

`low` and `high` hold one entry per dimension, in dimension order (not torch's last-dim-first
pairs). `mode` is constant (filled with `value`), reflect, replicate or circular; the
non-constant modes take non-negative amounts. Lowers aten.constant_pad_nd, aten.pad and the
reflection_pad / replication_pad / _pad_circular targets.
"""
from __future__ import annotations

import numpy as np
import torch

from ops.registry import Attr, Sample, Unsupported, define_op, lowers, samples, wide

aten = torch.ops.aten

MODES = {"constant": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def _infer(x, low, high, value, mode):
    if mode not in MODES:
        raise ValueError(f"unknown pad mode '{mode}' (known: {', '.join(MODES)})")
    if not len(low) == len(high) == x.rank:
        raise ValueError(f"low {low} and high {high} need one entry per dimension of {x.shape}")
    shape = tuple(s + lo + hi for s, lo, hi in zip(x.shape, low, high))
    if any(s < 0 for s in shape):
        raise ValueError(f"padding {low}/{high} crops {x.shape} below zero")
    if mode != "constant":
        for s, lo, hi in zip(x.shape, low, high):
            if lo < 0 or hi < 0:
                raise ValueError(f"{mode} padding takes non-negative amounts, got {low}/{high}")
            if mode == "reflect" and (lo or hi) and max(lo, hi) >= s:
                raise ValueError(f"reflect padding {max(lo, hi)} must be below the size {s}")
            if mode in ("replicate", "circular") and (lo or hi) and (s == 0 or (mode == "circular" and max(lo, hi) > s)):
                raise ValueError(f"{mode} padding {max(lo, hi)} does not fit a dimension of size {s}")
    return x.with_(shape=shape)


def _reference(x, low, high, value, mode):
    crop = tuple(slice(max(-lo, 0), s - max(-hi, 0)) for s, lo, hi in zip(x.shape, low, high))
    x = x[crop]
    widths = [(max(lo, 0), max(hi, 0)) for lo, hi in zip(low, high)]
    if mode == "constant":
        return np.pad(wide(x), widths, mode="constant", constant_values=value)
    return np.pad(x, widths, mode=MODES[mode])


def _torch_impl(x, low, high, value, mode):
    padded = [d for d, (lo, hi) in enumerate(zip(low, high)) if lo or hi]
    if not padded:
        return x
    k = x.dim() - padded[0]   # torch pads the last k dims, given last-dim-first
    amounts = [a for lo, hi in zip(reversed(low), reversed(high)) for a in (lo, hi)][:2 * k]
    if mode == "constant":
        return torch.nn.functional.pad(x, amounts, value=value)
    if k > 3:
        raise NotImplementedError(f"{mode} padding of {k} dimensions (torch pads at most 3)")
    # torch's reflect/replicate/circular take (N, C, *k dims): fold the leading dims into C
    folded = x.reshape(1, -1, *x.shape[x.dim() - k:])
    y = torch.nn.functional.pad(folded, amounts, mode=mode)
    return y.reshape(*x.shape[:x.dim() - k], *y.shape[2:])


pad = define_op(
    "pad", operands=("input",),
    attrs={"low": Attr.INTS, "high": Attr.INTS, "value": Attr.FLOAT, "mode": Attr.STR},
    infer=_infer, reference=_reference, torch_impl=_torch_impl,
    doc="Pad each dimension d with low[d] elements before and high[d] after (negative: crop), "
        "filled by `mode`: constant `value`, reflect, replicate or circular.")


def torch_pad_to_low_high(rank, amounts):
    """torch's (last-dim-first) pad list to per-dimension low and high lists."""
    amounts = [int(a) for a in amounts]
    if len(amounts) % 2 or len(amounts) // 2 > rank:
        raise ValueError(f"pad {amounts} does not fit a tensor of rank {rank}")
    low, high = [0] * rank, [0] * rank
    for i in range(len(amounts) // 2):
        low[rank - 1 - i], high[rank - 1 - i] = amounts[2 * i], amounts[2 * i + 1]
    return low, high


def emit_pad(b, x, low, high, value=0.0, mode="constant"):
    if not any(low) and not any(high):
        return x
    return b.emit(pad, x, low=low, high=high, value=float(value), mode=mode)


@lowers(aten.constant_pad_nd)
def _constant_pad(b, x, amounts, value=0):
    low, high = torch_pad_to_low_high(x.rank, amounts)
    return emit_pad(b, x, low, high, value)


@lowers(aten.pad.default)
def _pad(b, x, amounts, mode="constant", value=None):
    if mode not in MODES:
        raise Unsupported(f"pad mode '{mode}'")
    low, high = torch_pad_to_low_high(x.rank, amounts)
    return emit_pad(b, x, low, high, 0.0 if value is None else value, mode)


def _mode_rule(mode):
    def rule(b, x, amounts):
        low, high = torch_pad_to_low_high(x.rank, amounts)
        return emit_pad(b, x, low, high, 0.0, mode)
    rule.__module__ = __name__
    return rule


for _targets, _mode in (((aten.reflection_pad1d.default, aten.reflection_pad2d.default,
                          aten.reflection_pad3d.default), "reflect"),
                        ((aten.replication_pad1d.default, aten.replication_pad2d.default,
                          aten.replication_pad3d.default), "replicate"),
                        ((aten._pad_circular.default,), "circular")):
    lowers(*_targets)(_mode_rule(_mode))


def _pads(x):
    F = torch.nn.functional
    y = F.pad(x, (1, 2, 0, 1), value=0.5)[:, :, :-1, 1:-2]
    y = y + F.pad(x, (2, 1, 1, 2), mode="reflect")[:, :, 1:-2, 2:-1]
    y = y + F.pad(x, (1, 1, 1, 1), mode="replicate")[:, :, 1:-1, 1:-1]
    y = y + F.pad(x, (1, 2, 2, 1), mode="circular")[:, :, 2:-1, 1:-2]
    return y + F.pad(x, (-1, 1))[..., :x.shape[-1]]


samples(
    Sample("pad-modes", _pads, lambda: (torch.randn(2, 3, 5, 6),)),
    Sample("pad-causal-and-int", lambda x, i: (torch.nn.functional.pad(x, (3, 0))[..., :-3] + x,
                                               torch.nn.functional.pad(i, (0, 0, 1, 2), value=7)),
           lambda: (torch.randn(2, 4, 9), torch.randint(-5, 5, (3, 4)))),
)
