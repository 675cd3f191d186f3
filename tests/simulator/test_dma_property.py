"""Random strided DMA chains move exactly the bytes numpy slicing says."""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator import ProgramBuilder, load_chip, simulate

TINY = load_chip("tiny")


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 8), row_bytes=st.integers(1, 64), src_gap=st.integers(0, 40),
       dst_gap=st.integers(0, 40), src_off=st.integers(0, 300), space=st.sampled_from(["dram", "sram"]),
       mcast=st.sampled_from(["none", "row", "col"]), seed=st.integers(0, 2**31))
def test_strided_copy_round_trip(rows, row_bytes, src_gap, dst_gap, src_off, space, mcast, seed):
    src_stride, dst_stride = row_bytes + src_gap, row_bytes + dst_gap
    data = np.random.default_rng(seed).integers(0, 256, src_off + rows * src_stride, np.uint8)
    b = ProgramBuilder(TINY)
    t = b.token()
    b.pe(0).dma(space, src_off, "local", 0x100, rows=rows, row_bytes=row_bytes,
                src_stride=src_stride, dst_stride=dst_stride, mcast=mcast, signal=t)
    receivers = {"none": [0], "row": [0, 1], "col": [0, 2]}[mcast]
    for p in receivers:   # each receiver packs its copy back, densely, to its own DRAM area
        b.pe(p).dma("local", 0x100, "dram", 0x10000 * (p + 1), rows=rows, row_bytes=row_bytes,
                    src_stride=dst_stride, wait=(t, 1))
    res = simulate(b.build(), TINY, memory_init={(space, 0): data})
    expect = np.stack([data[src_off + r * src_stride: src_off + r * src_stride + row_bytes]
                       for r in range(rows)])
    for p in receivers:
        got = res.read("dram", 0x10000 * (p + 1), (rows, row_bytes), np.uint8)
        np.testing.assert_array_equal(got, expect)
    assert res.stats["bytes"][f"{space}_read"] == rows * row_bytes
