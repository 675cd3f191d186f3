"""Dot-product engine: C (+)= A @ B; bf16/fp16/fp32/fp8 inputs accumulate in fp32, int8 in int32;
MX block formats (both operands K-major, simulator/isa/mx.py) scale each block's products and
accumulate in fp32."""
from __future__ import annotations

import numpy as np

from simulator.engines.registry import register
from simulator.isa import FLAG_ACCUMULATE, DType, Op


@register(Op.DPE_MATMUL)
def dpe_matmul(m, c, a, pe, what):
    mem = m.local[pe]
    dt = DType(int(c["dtype"]))
    rows, k, n = a[3], a[4], a[5]
    if dt.mx is not None:       # both operands are rows of K values in the block format: C = A @ B^T
        fmt = dt.mx
        A = fmt.decode(mem.read_array(a[0], (rows, fmt.row_bytes(k)), np.uint8, what))
        B = fmt.decode(mem.read_array(a[1], (n, fmt.row_bytes(k)), np.uint8, what)).T
        out_t = np.float32
        C = A @ B
    else:
        A = mem.read_array(a[0], (rows, k), dt.np, what)
        B = mem.read_array(a[1], (k, n), dt.np, what)
        out_t = np.int32 if dt is DType.INT8 else np.float32
        C = A.astype(out_t) @ B.astype(out_t)
    if int(c["flags"]) & FLAG_ACCUMULATE:
        C = C + mem.read_array(a[2], (rows, n), out_t, what)
    m.defer(mem, a[2], C.astype(out_t), what)
