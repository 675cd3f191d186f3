"""Reduction engine: accumulate partial sums, forward them to a neighbour PE."""
from __future__ import annotations

import numpy as np

from simulator.engines.registry import register
from simulator.isa import FLAG_ACCUMULATE, Dir, DType, Op


def _t(c):
    return np.int32 if int(c["dtype"]) == DType.INT32 else np.float32


@register(Op.RE_ACC)
def re_acc(m, c, a, pe, what):
    mem, t = m.local[pe], _t(c)
    x = mem.read_array(a[0], (a[2],), t, what) + mem.read_array(a[1], (a[2],), t, what)
    m.defer(mem, a[0], x.astype(t), what)


@register(Op.RE_SEND)
def re_send(m, c, a, pe, what):
    t = _t(c)
    r, col = divmod(pe, m.cols)
    d = Dir(int(c["peer"]))
    r += {Dir.N: -1, Dir.S: 1}.get(d, 0)
    col += {Dir.W: -1, Dir.E: 1}.get(d, 0)
    dst = m.local[r * m.cols + col]
    x = m.local[pe].read_array(a[0], (a[2],), t, what)
    if int(c["flags"]) & FLAG_ACCUMULATE:
        x = x + dst.read_array(a[1], (a[2],), t, what)
    m.defer(dst, a[1], x.astype(t), what)
