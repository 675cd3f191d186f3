"""Gathers and scatters by indices in device memory: `ember.embedding`, `ember.index_select`
(gathers) and `ember.index_put` without accumulation (a scatter: `index_copy`, a KV-cache write),
as indexed DMAs (simulator/isa: a DMA whose source or destination address an int32 in the
issuing PE's local memory moves, as MTIA's scalar core computes DMA addresses from indices).

The indexed dim `d` of a tensor of shape (pre..., N, post...) is viewed as P = prod(pre) rows
of N slices of Q = prod(post) * itemsize bytes. Index position i then moves P rows of Q bytes
with one DMA: a gather reads x[:, index[i], :] (source rows N * Q apart, moved by index[i] * Q)
into out[:, i, :]; a scatter writes values[:, i, :] into out[:, index[i], :]. The positions are
split into contiguous blocks and each position's rows into row blocks; PE (block, row block)
first loads its block of indices into local memory (one DMA; its DMA queue is in order, so the
indexed DMAs behind it see the indices), then issues one indexed DMA per position in a repeat
loop (the index address steps by 4 bytes per iteration). Nothing here depends on the index
values at compile time.

Negative indices count from the end of the dim for `index_select` and `index_put`, as in torch
indexing: three SIMD passes add N where an index is negative (i + N * (i < 0)) before the DMAs
read them. An embedding id must lie in [0, V) (torch raises otherwise): there the simulator stops
the run with the id, like any index still out of range after wrapping.

`index_put` updates its input in place when the memory plan gives the result the input's
placement (`updates_operand`): then only the indexed slices are written (a decode step writes
one KV-cache row per head). Otherwise the input is first copied to the result as box copies
spread over the same PEs, and every PE waits for all of them (a token) before it scatters.
Repeated indices: which write lands last is not defined (as in torch).
"""
from __future__ import annotations

import math
from abc import abstractmethod
from dataclasses import dataclass
from typing import Any

from ops.kernel import ISA_ITEMSIZE, KernelCall, KernelTemplate, register_kernel
from ops.kernels.layout import Box, DmaGroup, dma_groups, emit_groups, predict_groups, split_over_pes
from simulator.isa import Engine

#: Graph dtypes of an index the DMA engine reads as int32 (i8 is held as int8 on the chip).
INDEX_DTYPES = frozenset({"i64", "i32", "i16", "ui8"})
INDEX_BYTES = 4
#: Index positions one PE loads into local memory at a time (16 KiB of int32; less on a chip
#: whose local memory is smaller than twice that: the wrap pass needs as much scratch).
INDEX_CHUNK = 4096
INDEX_ADDR = 0                  # local memory: the loaded indices, then the wrap pass's scratch


def _chunk(chip) -> int:
    return max(1, min(INDEX_CHUNK, chip.local_mem.bytes // (2 * INDEX_BYTES)))


@dataclass(frozen=True)
class IndexedPlan:
    """Index positions in `index_blocks` contiguous blocks, each position's rows in
    `row_blocks` blocks: PE a * row_blocks + b moves row block b of position block a."""
    index_blocks: int
    row_blocks: int

    @property
    def pes(self) -> int:
        return self.index_blocks * self.row_blocks


@dataclass(frozen=True)
class Geometry:
    """The indexed dim as P rows of N slices of Q bytes, and S index positions."""
    positions: int          # S
    count: int              # N: the indexed dim's size (valid indices: [0, N))
    rows: int               # P
    row_bytes: int          # Q
    wrap: bool              # negative indices count from the end


def _geometry(shape: tuple[int, ...], dim: int, positions: int, item: int, wrap: bool) -> Geometry:
    return Geometry(positions, shape[dim], math.prod(shape[:dim]), math.prod(shape[dim + 1:]) * item, wrap)


def _blocks(n: int, k: int) -> list[tuple[int, int]]:
    """[start, stop) of k near-equal contiguous blocks of range(n) (empty ones left out)."""
    per = math.ceil(n / k)
    return [(s, min(n, s + per)) for s in range(0, n, per)]


def _chunks(start: int, stop: int, chip) -> list[tuple[int, int]]:
    """[start, stop) in pieces of at most `_chunk(chip)` positions (what local memory holds)."""
    size = _chunk(chip)
    return [(a, min(stop, a + size)) for a in range(start, stop, size)]


def _dma_cycles(group: DmaGroup, chip) -> float:
    """One DMA of the group alone: its latency, then its bytes on the channels (banks) each
    side spreads over, the two sides at once."""
    nbytes = group.dma_bytes
    sides = []
    for space in (group.src, group.dst):
        if space == "local":
            continue
        servers, interleave = (chip.dram.channels, chip.dram.interleave_bytes) if space == "dram" else \
            (chip.sram.banks, chip.sram.interleave_bytes)
        rate = (chip.dram_bytes_per_s if space == "dram" else chip.sram.bytes_per_s) / chip.clock_hz / servers
        sides.append(math.ceil(nbytes / min(servers, math.ceil(nbytes / interleave))) / rate)
    return chip.dma.latency_cycles + max(sides, default=0.0)


def _index_ok(spec: Any) -> bool:
    return spec is not None and spec.dtype in INDEX_DTYPES and spec.numel > 0


class _IndexedTemplate(KernelTemplate):
    """What gathers and scatters share: plans, the index loads, the indexed DMA loops."""
    integer_operands = True

    @abstractmethod
    def _geometry(self, call: KernelCall) -> Geometry:
        """The call's indexed dim (see `Geometry`)."""

    def plans(self, call: KernelCall, chip):
        g = self._geometry(call)
        seen = set()
        for pes in sorted({1, max(1, chip.num_pes // 4), max(1, chip.num_pes // 2), chip.num_pes}):
            for index_blocks in {min(g.positions, pes), max(1, min(g.positions, pes) // 2)}:
                row_blocks = max(1, min(g.rows, pes // index_blocks))
                plan = IndexedPlan(len(_blocks(g.positions, index_blocks)), len(_blocks(g.rows, row_blocks)))
                if plan not in seen:
                    seen.add(plan)
                    yield plan

    def _work(self, g: Geometry, plan: IndexedPlan) -> list[tuple[int, tuple[int, int], tuple[int, int]]]:
        """(PE, position block, row block) of every PE with work."""
        out = []
        for a, ib in enumerate(_blocks(g.positions, plan.index_blocks)):
            for b, rb in enumerate(_blocks(g.rows, plan.row_blocks)):
                out.append((a * plan.row_blocks + b, ib, rb))
        return out

    @abstractmethod
    def _moves(self, call: KernelCall, g: Geometry, ib: tuple[int, int], rb: tuple[int, int]) -> DmaGroup:
        """The indexed DMAs of one position block and row block, as a DMA group at the unmoved
        addresses (what the timing model charges); `count` DMAs, one per position."""

    # --- cost ---------------------------------------------------------------------------
    def _setup_cycles(self, g: Geometry, n: int, chip) -> float:
        """One chunk's index load (a DMA) and, when negative indices wrap, the SIMD passes."""
        lat = chip.dma.latency_cycles + chip.noc.hop_latency_cycles * chip.pe_grid.rows
        if not g.wrap:
            return lat
        return lat + 3 * (math.ceil(n / chip.simd.elems_per_cycle) + chip.simd.latency_cycles)

    def _predict_moves(self, call: KernelCall, plan: IndexedPlan, chip) -> float:
        g = self._geometry(call)
        share: list[list[DmaGroup]] = [[] for _ in range(plan.pes)]
        setup = serial = 0.0
        for pe, ib, rb in self._work(g, plan):
            group = self._moves(call, g, ib, rb)
            share[pe].append(group)
            setup = max(setup, sum(self._setup_cycles(g, b - a, chip) for a, b in _chunks(*ib, chip)))
            serial = max(serial, group.count * _dma_cycles(group, chip))
        # every indexed DMA is charged at its unmoved address: the server it starts on is hot
        return setup + max(predict_groups(share, chip, latency_hidden=True), serial)

    def predict(self, call: KernelCall, plan: IndexedPlan, chip) -> int:
        return int(self._predict_moves(call, plan, chip))

    # --- emission -----------------------------------------------------------------------
    def _emit_moves(self, call: KernelCall, plan: IndexedPlan, chip, builder, before_moves=None) -> None:
        """Every PE's index loads and indexed DMAs. `before_moves(pe)` appends what must come
        between a PE's first index load and its first indexed DMA (the copy path's barrier)."""
        g = self._geometry(call)
        index = call.inputs[1]
        wrap_addr = INDEX_ADDR + _chunk(chip) * INDEX_BYTES
        if index.dtype != "int32":
            raise ValueError(f"ember.{call.op}: the index is held as {index.dtype}; indexed DMAs read int32")
        for pe_index, ib, rb in self._work(g, plan):
            pe = builder.pe(pe_index)
            loaded = ready = None
            if g.wrap:
                loaded, ready = builder.token(), builder.token()
            for k, (c0, c1) in enumerate(_chunks(*ib, chip)):
                n = c1 - c0
                pe.dma(index.space, index.addr + c0 * INDEX_BYTES, "local", INDEX_ADDR, nbytes=n * INDEX_BYTES,
                       signal=loaded)
                if g.wrap:          # i + N * (i < 0), exactly in int32
                    pe.simd_scalar("LT", INDEX_ADDR, wrap_addr, n, 0.0, dtype="int32", out_dtype="int32",
                                   wait=(loaded, k + 1))
                    pe.simd_scalar("MUL", wrap_addr, wrap_addr, n, float(g.count), dtype="int32", out_dtype="int32")
                    pe.simd_binary("ADD", INDEX_ADDR, wrap_addr, INDEX_ADDR, n, dtype="int32", out_dtype="int32",
                                   signal=ready)
                if k == 0 and before_moves is not None:
                    before_moves(pe)
                if g.wrap:
                    pe.nop(Engine.DMA, wait=(ready, k + 1))
                group = self._moves(call, g, (c0, c1), rb)
                self._emit_group(pe, call, g, group)

    def _emit_group(self, pe, call: KernelCall, g: Geometry, group: DmaGroup) -> None:
        side = self.moves
        kw = dict(count=g.count, step=g.row_bytes, rows=group.rows, row_bytes=group.row_bytes,
                  src_stride=group.src_stride, dst_stride=group.dst_stride)
        if group.count == 1:
            pe.dma_indexed(side, group.src, group.src_addr, group.dst, group.dst_addr, index_addr=INDEX_ADDR, **kw)
            return
        with pe.repeat(group.count) as loop:
            pe.dma_indexed(side, group.src, loop.step(group.src_addr, group.src_step), group.dst,
                           loop.step(group.dst_addr, group.dst_step),
                           index_addr=loop.step(INDEX_ADDR, INDEX_BYTES), **kw)


class GatherKernel(_IndexedTemplate):
    """`ember.embedding` (rows of a table by ids of any shape) and `ember.index_select`
    (slices along `dim` by a 1-d index) as indexed gathers."""
    ops = ("embedding", "index_select")
    moves = "src"

    def accepts(self, op: str, operands, result, attrs, chip=None) -> bool:
        x, index = operands
        if not _index_ok(index) or x is None or x.numel == 0 or result.numel == 0:
            return False
        return x.rank == 2 if op == "embedding" else index.rank <= 1

    def _geometry(self, call: KernelCall) -> Geometry:
        x, index = call.inputs
        item = ISA_ITEMSIZE[call.output.dtype]
        if x.dtype != call.output.dtype:
            raise ValueError(f"ember.{call.op}: input held as {x.dtype} but result as {call.output.dtype}")
        dim = 0 if call.op == "embedding" else call.attrs["dim"]
        # an embedding id outside [0, V) is an error (torch raises); index_select wraps negatives
        return _geometry(x.shape, dim, math.prod(index.shape), item, wrap=call.op != "embedding")

    def _moves(self, call, g, ib, rb) -> DmaGroup:
        x, out = call.inputs[0], call.output
        q, n, s = g.row_bytes, g.count, g.positions
        return DmaGroup(x.space, x.addr + rb[0] * n * q, out.space, out.addr + (rb[0] * s + ib[0]) * q,
                        rb[1] - rb[0], q, n * q, s * q, ib[1] - ib[0], 0, q)

    def bytes_moved(self, call: KernelCall) -> dict[str, int]:
        """Only the gathered slices of the input are read."""
        x, index, out = call.inputs[0], call.inputs[1], call.output
        moved: dict[str, int] = {}
        for space, n in ((x.space, min(x.nbytes, out.nbytes)), (index.space, index.nbytes), (out.space, out.nbytes)):
            moved[space] = moved.get(space, 0) + n
        return moved

    def emit(self, call: KernelCall, plan: IndexedPlan, chip, builder) -> None:
        self._emit_moves(call, plan, chip, builder)


class ScatterKernel(_IndexedTemplate):
    """`ember.index_put` {dim, accumulate=False}: the input with the slices along `dim` at a 1-d
    index replaced by `values`, in place when the result has the input's placement."""
    ops = ("index_put",)
    moves = "dst"
    updates_operand = 0

    def accepts(self, op: str, operands, result, attrs, chip=None) -> bool:
        x, index, values = operands
        if attrs["accumulate"] or not _index_ok(index) or index.rank != 1 or x.numel == 0:
            return False
        window = list(x.shape)
        window[attrs["dim"]] = index.shape[0]
        padded = (1,) * (len(window) - values.rank) + tuple(values.shape)
        return values.rank <= len(window) and padded == tuple(window)     # no broadcast values

    @staticmethod
    def in_place(call: KernelCall) -> bool:
        """Whether the result has the input's placement: then only the indexed slices move."""
        x, out = call.inputs[0], call.output
        return (x.space, x.addr) == (out.space, out.addr)

    def _geometry(self, call: KernelCall) -> Geometry:
        x, index, values = call.inputs
        if not x.dtype == values.dtype == call.output.dtype:
            raise ValueError(f"ember.index_put: input, values and result are held as {x.dtype}, {values.dtype} "
                             f"and {call.output.dtype}; a scatter moves bytes of one type")
        return _geometry(x.shape, call.attrs["dim"], index.shape[0], ISA_ITEMSIZE[x.dtype], wrap=True)

    def _moves(self, call, g, ib, rb) -> DmaGroup:
        values, out = call.inputs[2], call.output
        q, n, s = g.row_bytes, g.count, g.positions
        return DmaGroup(values.space, values.addr + (rb[0] * s + ib[0]) * q, out.space, out.addr + rb[0] * n * q,
                        rb[1] - rb[0], q, s * q, n * q, ib[1] - ib[0], q, 0)

    def _copy_share(self, call: KernelCall, pes: int) -> list[list[DmaGroup]]:
        """The copy of the input to the result (the path that does not update in place)."""
        x, out = call.inputs[0], call.output
        item = ISA_ITEMSIZE[out.dtype]
        n = x.nbytes // item
        box = Box(x.space, x.addr, out.space, out.addr, (n,), (item,), (item,), item)
        return split_over_pes(dma_groups(box, pes), pes)

    def predict(self, call: KernelCall, plan: IndexedPlan, chip) -> int:
        moves = self._predict_moves(call, plan, chip)
        if self.in_place(call):
            return int(moves)
        return int(predict_groups(self._copy_share(call, plan.pes), chip) + moves)

    def bytes_moved(self, call: KernelCall) -> dict[str, int]:
        """In place: the index and values are read and only the indexed slices written.
        Otherwise the input is read and the result written whole as well."""
        x, index, values = call.inputs
        out = call.output
        parts = [(index.space, index.nbytes), (values.space, values.nbytes), (out.space, values.nbytes)]
        if not self.in_place(call):
            parts += [(x.space, x.nbytes), (out.space, out.nbytes)]
        moved: dict[str, int] = {}
        for space, n in parts:
            moved[space] = moved.get(space, 0) + n
        return moved

    def emit(self, call: KernelCall, plan: IndexedPlan, chip, builder) -> None:
        if self.in_place(call):
            self._emit_moves(call, plan, chip, builder)
            return
        share = self._copy_share(call, plan.pes)
        copiers = [p for p in range(plan.pes) if share[p]]
        copied = builder.token()
        emitted = set()

        def barrier(pe) -> None:
            # the copy's share of this PE, then: wait until every PE's copy has completed
            if share[pe.pe]:
                emit_groups(pe, share[pe.pe])
                pe.nop(Engine.DMA, signal=copied)
            emitted.add(pe.pe)
            pe.nop(Engine.DMA, wait=(copied, len(copiers)))

        self._emit_moves(call, plan, chip, builder, before_moves=barrier)
        for p in copiers:               # PEs that copy but scatter nothing
            if p not in emitted:
                pe = builder.pe(p)
                emit_groups(pe, share[p])
                pe.nop(Engine.DMA, signal=copied)


register_kernel(GatherKernel())
register_kernel(ScatterKernel())
