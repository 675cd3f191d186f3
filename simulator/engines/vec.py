"""Vector core: a kernel of the program's table (simulator/isa/vector.py), its host build run on
copies of the PE's local-memory regions; what it writes lands when the command completes."""
from __future__ import annotations

import numpy as np

from simulator.engines.registry import register
from simulator.errors import IndexOutOfRange
from simulator.isa import Op
from simulator.isa.vector import OK


@register(Op.VEC_KERNEL)
def vec_kernel(m, c, a, pe, what):
    kernel = m.vector_kernels[a[0]]
    mem, rows = m.local[pe], a[4]
    bufs = []
    for k, region in enumerate(kernel.regions):
        n = region.nbytes(rows)
        if region.role == "out":
            mem._check(a[1 + k], n, what)
            bufs.append(np.zeros(n, np.uint8))
        else:
            bufs.append(mem.read(a[1 + k], n, what).copy())
    at = kernel.run(bufs, rows, a[5])
    if at != OK:
        raise IndexOutOfRange(f"{what}: vector kernel {kernel.name} stopped at element {at} of its "
                              f"input: {kernel.fault or 'a value it cannot take'}")
    for k, region in enumerate(kernel.regions):
        if region.role != "in":
            m.defer(mem, a[1 + k], bufs[k], what)
