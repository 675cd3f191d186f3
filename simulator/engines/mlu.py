"""Memory layout unit: transpose, strided 2D copy (slice, reshape), concat."""
from __future__ import annotations

import numpy as np

from simulator.engines.registry import register
from simulator.isa import DType, Op


@register(Op.MLU_TRANSPOSE)
def mlu_transpose(m, c, a, pe, what):
    dt = DType(int(c["dtype"]))
    x = m.local[pe].read_array(a[0], (a[2], a[3]), dt.np, what)
    m.defer(m.local[pe], a[1], np.ascontiguousarray(x.T), what)


@register(Op.MLU_COPY2D)
def mlu_copy2d(m, c, a, pe, what):
    mem = m.local[pe]
    m.defer2d(mem, a[1], mem.read2d(a[0], a[2], a[3], a[4], what), a[5], what)


@register(Op.MLU_CONCAT)
def mlu_concat(m, c, a, pe, what):
    mem = m.local[pe]
    x = mem.read(a[0], a[3] * a[4], what).reshape(a[3], a[4])
    y = mem.read(a[1], a[3] * a[5], what).reshape(a[3], a[5])
    m.defer(mem, a[2], np.concatenate([x, y], axis=1), what)
