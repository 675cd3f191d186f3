"""DMA engine: strided 2D copies between DRAM, SRAM and local memories; multicast."""
from __future__ import annotations

from simulator.engines.registry import register
from simulator.isa import Mcast, Op, Space


@register(Op.DMA)
def dma(m, c, a, pe, what):
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
