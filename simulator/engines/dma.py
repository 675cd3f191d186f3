"""DMA engine: strided 2D copies between DRAM, SRAM and local memories; multicast; gathers
and scatters whose address an index in local memory moves (indexed DMAs)."""
from __future__ import annotations

import numpy as np

from simulator.engines.registry import register
from simulator.errors import IndexOutOfRange
from simulator.isa import Indexed, Mcast, Op, Space, indexed_of, unpack_index


def _indexed(m, c, a, pe, what) -> list:
    """The operands with an indexed DMA's moved address: the int32 index is read from the
    issuing PE's local memory now (at issue) and must lie in [0, count)."""
    side = indexed_of(int(c["flags"]))
    if side is Indexed.NONE:
        return a
    at, count = unpack_index(a[6])
    i = int(m.local[pe].read_array(at, (1,), np.int32, what)[0])
    if not 0 <= i < count:
        raise IndexOutOfRange(f"{what}: index {i} (read from local memory [{at:#x}] of PE {pe}) is "
                              f"outside the valid range [0, {count}) of the tensor the "
                              f"{'source' if side is Indexed.SRC else 'destination'} points into")
    a = list(a)
    a[0 if side is Indexed.SRC else 1] += i * a[7]
    return a


@register(Op.DMA)
def dma(m, c, a, pe, what):
    if a[2] * a[3] <= 0:
        return          # an empty transfer moves nothing (and reads no index)
    a = _indexed(m, c, a, pe, what)
    src_space, dst_space = Space(int(c["src_space"])), Space(int(c["dst_space"]))
    data = m.mem(src_space, pe).read2d(a[0], a[2], a[3], a[4], what)
    if dst_space != Space.LOCAL:
        m.defer2d(m.mem(dst_space), a[1], data, a[5], what)
        return
    d = int(c["peer"]) if int(c["peer"]) >= 0 else pe
    mc = Mcast((int(c["flags"]) >> 1) & 3)
    r, col = divmod(d, m.cols)
    targets = ([r * m.cols + cc for cc in range(m.cols)] if mc is Mcast.ROW else
               [rr * m.cols + col for rr in range(m.rows)] if mc is Mcast.COL else [d])
    for t in targets:
        m.defer2d(m.local[t], a[1], data, a[5], what)
