"""The attention schedules' cost model: their own command streams, replayed with durations from
the chip spec.

`ReplayBuilder` stands in for simulator.isa.ProgramBuilder: a schedule's emission code runs
unchanged against it (`pe(p)`, `token()`, and the PEStream methods the attention schedules
call), and each command is recorded with the cycles it takes on the chip (the DPE, SIMD and
MLU formulas of the chip's engines; a DMA between memory and a PE at the rate it gets while
`streamers` transfers share the memory; multicasts, optionally, through one first-come
first-served server of the bandwidth the replayed PEs get together). `cycles()` then runs the
recorded queues as the chip does, in time order: each engine of each PE is an in-order queue,
and a command starts once its queue's previous command and the token count it waits for are
done. What the replay leaves out is most of the contention (a plain DMA's share of the
bandwidth is fixed), so it follows the schedule's overlaps, fills and stalls exactly and its
transfers on average.

A token must be signalled from one queue only (the schedules keep to this), so that its n-th
signal is that queue's n-th signalling command.
"""
from __future__ import annotations

import heapq
import math
from collections import defaultdict
from typing import Any

from ops.kernels.attention_work import busiest
from simulator.isa import LUT_FNS, Engine, SimdFn

_LUT_NAMES = {f.name for f in LUT_FNS}


def _is_lut(fn) -> bool:
    return fn in LUT_FNS if isinstance(fn, SimdFn) else str(fn).upper() in _LUT_NAMES


def dpe_cycles(chip, m: int, k: int, n: int, dtype: str) -> int:
    """Cycles of C[m, n] (+)= A[m, k] @ B[k, n] on the chip's DPE."""
    dpe = chip.dpe
    model = getattr(dpe.model, "value", dpe.model)
    if model == "cached_stream":
        nt = dpe.n_tile
        kt = int(dpe.macs_per_cycle[dtype]) // nt
        return math.ceil(k / kt) * math.ceil(n / nt) * (m + dpe.pass_overhead_cycles)
    r, c = dpe.array_rows, dpe.array_cols
    if model == "systolic_os":
        return math.ceil(m / r) * math.ceil(n / c) * (2 * r + c + k - 2)
    return math.ceil(k / r) * math.ceil(n / c) * (2 * r + c + m - 2)


class ReplayStream:
    """One PE's queues: the PEStream methods the attention schedules use, recording
    (duration, wait, signal) per engine."""

    def __init__(self, builder: "ReplayBuilder", pe: int):
        self.b, self.pe = builder, pe

    def _add(self, engine: Engine, cycles: float, wait, signal) -> None:
        self.b.record(self.pe, engine, cycles, wait, signal)

    def nop(self, engine, *, wait=None, signal=None) -> None:
        self._add(Engine(engine), 0.0, wait, signal)

    def dma(self, src, src_addr, dst, dst_addr, nbytes=None, *, rows=1, row_bytes=None, src_stride=None,
            dst_stride=None, dst_pe=-1, mcast="none", wait=None, signal=None) -> None:
        size = nbytes if row_bytes is None else rows * row_bytes
        share = self.b.multicast_share
        if share and not str(mcast).lower().endswith("none"):
            chip = self.b.chip
            lat = chip.dma.latency_cycles + chip.noc.hop_latency_cycles * chip.pe_grid.rows
            self.b.record(self.pe, Engine.DMA, lat + size / share, wait, signal, shared=size / share)
            return
        self._add(Engine.DMA, self.b.dma_cycles(size, str(src), str(dst)), wait, signal)

    def dpe_matmul(self, a, b, c, m, k, n, *, dtype="bf16", accumulate=False, wait=None, signal=None) -> None:
        self._add(Engine.DPE, dpe_cycles(self.b.chip, m, k, n, dtype), wait, signal)

    def _simd(self, fn, vectors: int, wait, signal, reduce: bool = False) -> None:
        s = self.b.chip.simd
        cost = s.lut_cycles if not reduce and _is_lut(fn) else 1
        self._add(Engine.SIMD, vectors * cost + s.latency_cycles, wait, signal)

    def _vectors(self, n: int) -> int:
        return math.ceil(n / self.b.chip.simd.elems_per_cycle)

    def simd_unary(self, fn, src, dst, n, *, dtype="fp32", out_dtype=None, wait=None, signal=None) -> None:
        self._simd(fn, self._vectors(n), wait, signal)

    def simd_binary(self, fn, a, b, dst, n, *, dtype="fp32", out_dtype=None, wait=None, signal=None) -> None:
        self._simd(fn, self._vectors(n), wait, signal)

    def simd_scalar(self, fn, src, dst, n, imm, *, dtype="fp32", out_dtype=None, wait=None, signal=None) -> None:
        self._simd(fn, self._vectors(n), wait, signal)

    def simd_row_reduce(self, fn, src, dst, rows, cols, *, dtype="fp32", out_dtype=None, wait=None,
                        signal=None) -> None:
        self._simd(fn, rows * self._vectors(cols), wait, signal, reduce=True)

    def simd_row_bcast(self, fn, src, vec, dst, rows, cols, *, dtype="fp32", out_dtype=None, wait=None,
                       signal=None) -> None:
        self._simd(fn, rows * self._vectors(cols), wait, signal)

    def _mlu(self, nbytes: int, wait, signal) -> None:
        m = self.b.chip.mlu
        self._add(Engine.MLU, math.ceil(nbytes / m.bytes_per_cycle) + m.latency_cycles, wait, signal)

    def mlu_transpose(self, src, dst, rows, cols, *, dtype="fp32", wait=None, signal=None) -> None:
        self._mlu(rows * cols * {"fp32": 4, "int32": 4, "int8": 1}.get(str(dtype), 2), wait, signal)

    def mlu_copy2d(self, src, dst, rows, row_bytes, *, src_stride=None, dst_stride=None, wait=None,
                   signal=None) -> None:
        self._mlu(rows * row_bytes, wait, signal)


class ReplayBuilder:
    """Records a schedule's commands (as simulator.isa.ProgramBuilder takes them) for `cycles`.

    `streamers`: how many transfers share a memory at once (the PEs that stream);
    `multicast_share`: the bytes per cycle of memory bandwidth that the replayed multicasts get
    together, served first come first served (None: multicasts are priced as other DMAs).
    """

    def __init__(self, chip, streamers: int, multicast_share: float | None = None):
        self.chip, self.streamers = chip, max(1, streamers)
        self.multicast_share = multicast_share
        self._queues: dict[tuple[int, int], list[tuple[float, Any, Any]]] = defaultdict(list)
        self._signaller: dict[int, tuple[int, int]] = {}
        self._next_token = 0
        self._streams: dict[int, ReplayStream] = {}

    def pe(self, row: int, col: int | None = None) -> ReplayStream:
        idx = row if col is None else row * self.chip.pe_grid.cols + col
        if idx not in self._streams:
            self._streams[idx] = ReplayStream(self, idx)
        return self._streams[idx]

    def token(self) -> int:
        self._next_token += 1
        return self._next_token - 1

    def dma_cycles(self, nbytes: int, src: str, dst: str) -> float:
        src, dst = src.lower().split(".")[-1], dst.lower().split(".")[-1]
        if nbytes <= 0:
            return float(self.chip.dma.latency_cycles)
        memory = src if src != "local" else dst
        if memory == "local":       # PE to PE over the NoC
            chip = self.chip
            rate = min(chip.noc.link_bytes_per_s, chip.local_mem.bytes_per_s) / chip.clock_hz
            return chip.dma.latency_cycles + chip.noc.hop_latency_cycles * chip.pe_grid.rows + nbytes / rate
        # bandwidth-bound: while `streamers` transfers share the memory (and a column's NoC
        # port), each gets its share of it for the whole transfer
        chip = self.chip
        clk = chip.clock_hz
        mem = {"dram": chip.dram_bytes_per_s, "sram": chip.sram.bytes_per_s}[memory] / clk
        link = chip.noc.link_bytes_per_s / clk
        alone = min(mem, link, chip.local_mem.bytes_per_s / clk)
        per_col = math.ceil(self.streamers / chip.pe_grid.cols)
        lat = chip.dma.latency_cycles + chip.noc.hop_latency_cycles * chip.pe_grid.rows
        return lat + nbytes * max(1 / alone, self.streamers / mem, per_col / link)

    def record(self, pe: int, engine: Engine, cycles: float, wait, signal, shared: float = 0.0) -> None:
        """One command of `cycles` (of which `shared` on the multicast server, if there is one)."""
        q = (pe, int(engine))
        if signal is not None:
            owner = self._signaller.setdefault(int(signal), q)
            if owner != q:
                raise ValueError(f"token {signal} is signalled from two queues, {owner} and {q}")
        self._queues[q].append((float(cycles), wait, signal, float(shared)))

    def cycles(self) -> float:
        """When the last command completes: queues run as the chip runs them, in time order,
        the multicast server serving its transfers first come, first served."""
        queues = list(self._queues.values())
        head = [0] * len(queues)
        free = [0.0] * len(queues)
        signals: dict[int, list[float]] = defaultdict(list)
        waiting: dict[int, list[int]] = defaultdict(list)
        server = 0.0
        end, left = 0.0, sum(len(q) for q in queues)

        def ready(i: int) -> float | None:
            """When queue i's head may start, or None while its token count is not reached."""
            _, wait, _, _ = queues[i][head[i]]
            if wait is None or int(wait[1]) <= 0:
                return free[i]
            times = signals[int(wait[0])]
            if len(times) < int(wait[1]):
                waiting[int(wait[0])].append(i)
                return None
            return max(free[i], times[int(wait[1]) - 1])

        heap = [(r, i) for i in range(len(queues)) if queues[i] and (r := ready(i)) is not None]
        heapq.heapify(heap)
        while heap:
            t, i = heapq.heappop(heap)
            cycles, _, signal, shared = queues[i][head[i]]
            if shared:
                start = max(t, server)
                server = start + shared
                done = server + cycles - shared
            else:
                done = t + cycles
            free[i] = done
            end = max(end, done)
            head[i] += 1
            left -= 1
            if signal is not None:
                signals[int(signal)].append(done)
                for w in waiting.pop(int(signal), []):
                    r = ready(w)
                    if r is not None:
                        heapq.heappush(heap, (r, w))
            if head[i] < len(queues[i]):
                r = ready(i)
                if r is not None:
                    heapq.heappush(heap, (r, i))
        if left:
            raise RuntimeError("attention schedule deadlocks: every queue waits for a token never signalled")
        return end


def replay_busiest(chip, shares: list, emit_share) -> int:
    """The cycles of the slowest of the busiest PEs' shares of work items (attention_work.busiest),
    each replayed alone, `emit_share(work, pe, builder)` emitting its commands, while the PEs
    that stream meanwhile share the memories."""
    streamers, heaviest = busiest(shares)
    worst = 0.0
    for work in heaviest:
        replay = ReplayBuilder(chip, streamers)
        emit_share(work, replay.pe(0), replay)
        worst = max(worst, replay.cycles())
    return int(worst)
