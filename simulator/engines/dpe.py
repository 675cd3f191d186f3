"""Dot-product engine: C (+)= A @ B; bf16/fp16/fp32/fp8 inputs accumulate in fp32, int8 in int32."""
from __future__ import annotations

import numpy as np

from simulator.engines.registry import register
from simulator.isa import FLAG_ACCUMULATE, DType, Op


@register(Op.DPE_MATMUL)
def dpe_matmul(m, c, a, pe, what):
    mem = m.local[pe]
    dt = DType(int(c["dtype"]))
    rows, k, n = a[3], a[4], a[5]
    A = mem.read_array(a[0], (rows, k), dt.np, what)
    B = mem.read_array(a[1], (k, n), dt.np, what)
    if dt is DType.INT8:
        out_t = np.int32
        C = A.astype(np.int32) @ B.astype(np.int32)
    else:
        out_t = np.float32
        C = A.astype(np.float32) @ B.astype(np.float32)
    if int(c["flags"]) & FLAG_ACCUMULATE:
        C = C + mem.read_array(a[2], (rows, n), out_t, what)
    m.defer(mem, a[2], C.astype(out_t), what)
