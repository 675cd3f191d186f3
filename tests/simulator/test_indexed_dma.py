"""Indexed DMAs (gathers and scatters whose address an int32 in local memory moves): they move
exactly the bytes numpy indexing says, stop the run on an index outside the tensor (writing
nothing), are checked statically where they can be, print, and time alike in both engines
whatever the index values are."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator import (AddressOutOfRange, IndexOutOfRange, InvalidCommand, LocalMemoryOverflow, ProgramBuilder,
                       load_chip, simulate)
from simulator.isa import INDEXED_SHIFT, format_command, pack_index, unpack_index

TINY = load_chip("tiny")
IDX = 0x100            # local address of the loaded indices
TABLE, OUT, INDEX = 0x0, 0x20000, 0x30000


def _gather_program(n_idx: int, count: int, rows: int, row_bytes: int, src_stride: int, space: str):
    """PE 0 loads n_idx int32 indices from DRAM, then gathers `rows` rows of `row_bytes` per
    index from `space` (rows `src_stride` apart, index step `row_bytes`) to dense DRAM rows."""
    b = ProgramBuilder(TINY)
    pe = b.pe(0)
    pe.dma("dram", INDEX, "local", IDX, nbytes=4 * n_idx)
    with pe.repeat(n_idx) as loop:
        pe.dma_indexed("src", space, TABLE, "dram", loop.step(OUT, rows * row_bytes), index_addr=loop.step(IDX, 4),
                       count=count, step=row_bytes, rows=rows, row_bytes=row_bytes, src_stride=src_stride)
    return b.build()


def _expected_gather(table, idx, rows, row_bytes, src_stride):
    out = []
    for i in idx:
        for r in range(rows):
            at = int(i) * row_bytes + r * src_stride
            out.append(table[at:at + row_bytes])
    return np.concatenate(out)


@settings(max_examples=40, deadline=None)
@given(n_idx=st.integers(1, 6), count=st.integers(1, 9), rows=st.integers(1, 3), row_bytes=st.integers(1, 24),
       space=st.sampled_from(["dram", "sram"]), seed=st.integers(0, 2**31))
def test_gather_moves_the_indexed_rows(n_idx, count, rows, row_bytes, space, seed):
    rng = np.random.default_rng(seed)
    src_stride = count * row_bytes        # the indexed dim inside rows of the tensor, as a kernel lays it out
    table = rng.integers(0, 256, rows * src_stride, np.uint8)
    idx = rng.integers(0, count, n_idx).astype(np.int32)
    res = simulate(_gather_program(n_idx, count, rows, row_bytes, src_stride, space), TINY,
                   memory_init={(space, TABLE): table, ("dram", INDEX): idx})
    got = res.read("dram", OUT, (n_idx * rows * row_bytes,), np.uint8)
    np.testing.assert_array_equal(got, _expected_gather(table, idx, rows, row_bytes, src_stride))


@settings(max_examples=40, deadline=None)
@given(n_idx=st.integers(1, 5), count=st.integers(5, 9), row_bytes=st.integers(1, 16), seed=st.integers(0, 2**31))
def test_scatter_writes_only_the_indexed_rows(n_idx, count, row_bytes, seed):
    rng = np.random.default_rng(seed)
    old = rng.integers(0, 256, count * row_bytes, np.uint8)
    new = rng.integers(0, 256, n_idx * row_bytes, np.uint8)
    idx = rng.permutation(count)[:n_idx].astype(np.int32)       # distinct targets
    b = ProgramBuilder(TINY)
    pe = b.pe(3)
    pe.dma("dram", INDEX, "local", IDX, nbytes=4 * n_idx)
    pe.dma("dram", OUT, "local", 0x1000, nbytes=n_idx * row_bytes)
    with pe.repeat(n_idx) as loop:
        pe.dma_indexed("dst", "local", loop.step(0x1000, row_bytes), "sram", TABLE, index_addr=loop.step(IDX, 4),
                       count=count, step=row_bytes, nbytes=row_bytes)
    res = simulate(b.build(), TINY, memory_init={("sram", TABLE): old, ("dram", OUT): new, ("dram", INDEX): idx})
    expect = old.reshape(count, row_bytes).copy()
    expect[idx] = new.reshape(n_idx, row_bytes)
    np.testing.assert_array_equal(res.read("sram", TABLE, (count, row_bytes), np.uint8), expect)


@pytest.mark.parametrize("moves", ["src", "dst"])
@pytest.mark.parametrize("bad", [5, -1, 1 << 20])
def test_index_out_of_range_stops_the_run(moves, bad):
    b = ProgramBuilder(TINY)
    pe = b.pe(0)
    pe.dma("dram", INDEX, "local", IDX, nbytes=8)
    with pe.repeat(2) as loop:
        if moves == "src":
            pe.dma_indexed("src", "dram", TABLE, "dram", loop.step(OUT, 16), index_addr=loop.step(IDX, 4), count=5,
                           step=16, nbytes=16)
        else:
            pe.dma_indexed("dst", "dram", loop.step(OUT, 16), "dram", TABLE, index_addr=loop.step(IDX, 4), count=5,
                           step=16, nbytes=16)
    init = {("dram", TABLE): np.full(80, 7, np.uint8), ("dram", OUT): np.full(32, 9, np.uint8),
            ("dram", INDEX): np.array([2, bad], np.int32)}
    with pytest.raises(IndexOutOfRange, match=rf"#2 dma\.(gather|scatter) .*: index {bad} .*\[0, 5\)"):
        simulate(b.build(), TINY, memory_init=init)
    assert issubclass(IndexOutOfRange, AddressOutOfRange)


def _one(moves="src", **kw):
    b = ProgramBuilder(TINY)
    args = dict(index_addr=IDX, count=4, step=64, nbytes=64)
    args.update(kw)
    b.pe(0).dma_indexed(moves, "dram", 0, "dram", 0x1000, **args)
    return b.build()


def test_static_checks():
    chip_end = TINY.dram.bytes
    # every position the index can reach must lie inside the memory
    with pytest.raises(AddressOutOfRange, match="indexed dma source: positions 0..3"):
        simulate(_one(step=chip_end // 2), TINY, timing_only=True)
    with pytest.raises(LocalMemoryOverflow, match="dma index"):
        simulate(_one(index_addr=TINY.local_mem.bytes - 2), TINY, timing_only=True)
    prog = _one()
    prog.commands["dtype"][0] = 0
    with pytest.raises(InvalidCommand, match="int32 index"):
        simulate(prog, TINY, timing_only=True)
    prog = _one()
    prog.commands["flags"][0] |= 3 << INDEXED_SHIFT
    with pytest.raises(InvalidCommand, match="indexed-DMA mode"):
        simulate(prog, TINY, timing_only=True)
    prog = _one()
    prog.commands["a"][0, 6] = IDX           # a count of 0
    with pytest.raises(InvalidCommand, match="count of at least 1"):
        simulate(prog, TINY, timing_only=True)
    with pytest.raises(ValueError, match="'src' or its 'dst'"):
        _one(moves="none")
    with pytest.raises(ValueError, match="count"):
        _one(count=0)


def test_encoding_and_text():
    prog = _one("dst", index_addr=0x40, count=12)
    c = prog.commands[0]
    assert unpack_index(int(c["a"][6])) == (0x40, 12) and int(c["a"][7]) == 64
    assert int(c["a"][6]) == pack_index(0x40, 12) and int(c["flags"]) >> INDEXED_SHIFT & 3 == 2
    text = format_command(c, 0)
    assert "dma.scatter dram[0x0] -> dram[0x1000 + 64*i]" in text and "i=int32@local[0x40] in [0, 12)" in text


def test_timing_does_not_depend_on_index_values_and_engines_agree():
    prog = _gather_program(6, 9, 2, 96, 9 * 96, "dram")
    table = np.zeros(2 * 9 * 96, np.uint8)
    runs = []
    for idx in ([0, 0, 0, 0, 0, 0], [8, 3, 1, 7, 2, 5]):
        for engine in ("cpp", "python"):
            res = simulate(prog, TINY, engine=engine, memory_init={("dram", TABLE): table,
                                                                   ("dram", INDEX): np.array(idx, np.int32)})
            runs.append((res.cycles, res.timing.start.tolist(), res.timing.end.tolist()))
    assert all(r == runs[0] for r in runs)
    assert simulate(prog, TINY, timing_only=True).cycles == runs[0][0]


def test_the_index_read_uses_the_local_port():
    # the same transfer, plain and indexed: the indexed one also reads 4 bytes of local memory
    plain = ProgramBuilder(TINY)
    plain.pe(0).dma("dram", 0, "local", 0x1000, nbytes=64)
    indexed = ProgramBuilder(TINY)
    indexed.pe(0).dma_indexed("src", "dram", 0, "local", 0x1000, index_addr=IDX, count=4, step=64, nbytes=64)
    a = simulate(plain.build(), TINY, timing_only=True)
    b = simulate(indexed.build(), TINY, timing_only=True)
    assert b.stats["bytes"]["local"] == a.stats["bytes"]["local"] + 4
    assert b.cycles >= a.cycles
