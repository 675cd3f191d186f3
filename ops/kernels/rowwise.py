"""The row-wise kernel framework on the SIMD engines: row tiling, double-buffered pipelining,
the long-row (chunked) path and the cost model that the row-wise templates share.

The templates are `rowwise_softmax` (softmax, log-softmax), `rowwise_norm` (layer and RMS
norm, inference batch norm), `rowwise_reduce` (sum, mean, max, min) and `quantize` (per-row
int8); each gives the SIMD commands of one tile (`RowwiseKernel.tile`) and of one long row's
chunks (`RowwiseKernel.row_jobs`), and this module does the rest.

The input is viewed as a matrix [rows, cols] (cols = the product of the normalized or reduced
trailing dims; for batch norm, the spatial dims of an (N, C, *) input, so that row r belongs
to channel r % C). Rows are split into equal blocks over the PEs; each PE streams its block
through local memory in tiles of `tile_rows` whole rows (full tiles as a compact loop),
double-buffered like the elementwise kernels: the DMA engine loads tile t+1 while the SIMD
engine computes tile t. The DMA queue runs in order (load 0, load 1, store 0,
load 2, store 1, ...), so a tile buffer is reloaded only after the store that read it.

Numerics: every tile is computed in fp32 in local memory (a bf16 input is widened once) and
rounded to the output dtype by the last command. Scratch buffers that only the SIMD engine
touches (the fp32 copy, squares, row vectors) are single-buffered: its queue is in order.
A kernel may write further results (`KernelCall.extra_outputs`), each one value per row (a
row's quantization scale): they are double-buffered like the output, since the SIMD engine
may compute the next tile's values before the DMA engine has stored this tile's.
Rows too long for local memory (softmax, norm, reduce, quantize) stream through it in chunks
instead, in two passes per row: statistics (an online max and rescaled sum for softmax, moments
about the first chunk's mean for norms), then results. Batch norm planes that do not fit stay
on the host.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ops.kernel import ISA_ITEMSIZE, KernelCall, KernelTemplate, LocalArena, local_bytes, streaming_dma_cycles
from simulator.isa import Engine

ALIGN = 64
#: Floor of a row sum (softmax) or of a row's largest magnitude (quantize): an all-zero row
#: then gives 0 * (1 / TINY) == 0, not NaN.
TINY = 1e-30
#: SIMD functions the engine prices as lookup-table passes (simulator/isa/opcodes.py LUT_FNS).
LUT_FNS = frozenset({"DIV", "EXP", "GELU", "SILU", "TANH", "SIGMOID", "RECIP", "RSQRT"})
#: smallest chunk (columns) of the long-row path
MIN_CHUNK = 64


@dataclass(frozen=True)
class Simd:
    """One SIMD command on local-memory addresses; knows its own cost (simulator timing model)."""
    op: str                     # "unary" | "binary" | "scalar" | "reduce" | "bcast" | "mx" (MX quantization)
    fn: str
    addrs: tuple[int, ...]      # unary/scalar/reduce: (src, dst); binary/bcast: (a, b, dst)
    rows: int
    cols: int
    imm: float = 0.0
    dtype: str = "fp32"
    out_dtype: str = "fp32"

    def cycles(self, chip) -> int:
        w = chip.simd.elems_per_cycle
        if self.op in ("unary", "binary", "scalar"):
            vec = math.ceil(self.rows * self.cols / w)
        else:
            vec = self.rows * math.ceil(self.cols / w)
        if self.op == "mx":         # a pass for the blocks' largest magnitudes, one for the elements
            return 2 * vec + chip.simd.latency_cycles
        cost = chip.simd.lut_cycles if self.op != "reduce" and self.fn in LUT_FNS else 1
        return vec * cost + chip.simd.latency_cycles

    def emit(self, pe, wait=None, signal=None) -> None:
        kw = {"dtype": self.dtype, "out_dtype": self.out_dtype, "wait": wait, "signal": signal}
        a, n = self.addrs, self.rows * self.cols
        if self.op == "unary":
            pe.simd_unary(self.fn, a[0], a[1], n, **kw)
        elif self.op == "binary":
            pe.simd_binary(self.fn, a[0], a[1], a[2], n, **kw)
        elif self.op == "scalar":
            pe.simd_scalar(self.fn, a[0], a[1], n, self.imm, **kw)
        elif self.op == "reduce":
            pe.simd_row_reduce(self.fn, a[0], a[1], self.rows, self.cols, **kw)
        elif self.op == "mx":
            pe.simd_mx_quant(a[0], a[1], self.rows, self.cols, **kw)
        else:
            pe.simd_row_bcast(self.fn, a[0], a[1], a[2], self.rows, self.cols, **kw)


@dataclass(frozen=True)
class RowPlan:
    """Rows in blocks of ceil(rows / pes) over `pes` PEs, each block streamed through local
    memory in tiles of `tile_rows` rows."""
    pes: int          # PEs that share the rows (blocks of ceil(rows / pes) rows)
    tile_rows: int    # rows per tile


@dataclass(frozen=True)
class ChunkPlan:
    """Rows too long for local memory: each PE streams its rows one at a time in chunks of
    `chunk` columns, in two passes (statistics, then results)."""
    pes: int
    chunk: int


@dataclass(frozen=True)
class Load:
    """A DMA of a piece of an operand into the job's slot of buffer `buf`."""
    space: str
    addr: int
    buf: str
    nbytes: int


@dataclass(frozen=True)
class Job:
    """One chunk of a long row: loads into its slot, SIMD commands (given the slot), and the
    stores (buffer, space, address, bytes) of what it finished, in order."""
    loads: tuple[Load, ...]
    steps: Callable[[int], list[Simd]]
    stores: tuple[tuple[str, str, int, int], ...] = ()


@dataclass(frozen=True)
class ParamLoad:
    """A per-PE constant loaded once before the tiles: `operand` repeated `reps` times."""
    operand: int
    reps: int
    dst: int          # fp32 destination in local memory
    staging: int      # where a non-fp32 operand lands before it is widened


class RowwiseKernel(KernelTemplate):
    """Shared row tiling, pipelining and cost model; subclasses give the per-tile commands."""
    #: whether a tile's commands depend on its position only through its DMA addresses, so
    #: that full tiles can be emitted as a compact loop
    loops = True

    #: fp32 scratch buffers of a whole tile that the op needs besides the input copy
    def scratch_tiles(self, call: KernelCall) -> int:
        return 0

    def matrix(self, call: KernelCall) -> tuple[int, int]:
        """(rows, cols) of the row view of the input."""
        shape = call.inputs[0].shape
        cols = shape[-1]
        return math.prod(shape) // cols, cols

    def out_cols(self, call: KernelCall) -> int:
        return self.matrix(call)[1]

    def params(self, call: KernelCall, lay: dict) -> list[ParamLoad]:
        return []

    #: whether per-PE constants not in fp32 are widened to fp32 once they land (the SIMD engine
    #: computes in fp32); the vector core reads them as they are
    widen_params = True
    #: the engine the tiles compute on, which waits for the constants to land
    compute_engine = Engine.SIMD

    def tile_operands(self, call: KernelCall) -> tuple[int, ...]:
        """Operands besides the input loaded with every tile, row by row with it (a gather's
        indices): operand i is [rows, `operand_cols(call, i)`]."""
        return ()

    def operand_cols(self, call: KernelCall, i: int) -> int:
        return call.inputs[i].nbytes // ISA_ITEMSIZE[call.inputs[i].dtype] // self.matrix(call)[0]

    def param_bytes(self, call: KernelCall, m: int) -> int:
        """fp32 bytes (plus staging) of the per-PE constants for tiles of m rows."""
        return 0

    def setup(self, call: KernelCall, lay: dict, m: int) -> list[Simd]:
        """SIMD commands run once per PE after the constants have landed."""
        return []

    def tile(self, call: KernelCall, lay: dict, slot: int, m: int, row0: int) -> list[Simd]:
        raise NotImplementedError

    # ---- layout ---------------------------------------------------------------------------
    def layout(self, call: KernelCall, m: int) -> dict:
        """Local-memory offsets for tiles of m rows ("out{i}": the per-slot buffers of extra
        result i, one value per row); "end" is the bytes used."""
        _, cols = self.matrix(call)
        item = ISA_ITEMSIZE[call.inputs[0].dtype]
        out_item = ISA_ITEMSIZE[call.output.dtype]
        arena = LocalArena(ALIGN)
        take = arena.take

        lay: dict = {"x": [take(m * cols * max(item, out_item)) for _ in range(2)]}
        oc = self.out_cols(call)
        lay["out"] = lay["x"] if oc == cols else [take(m * oc * out_item) for _ in range(2)]
        for i, p in enumerate(call.extra_outputs, 1):
            lay[f"out{i}"] = [take(m * ISA_ITEMSIZE[p.dtype]) for _ in range(2)]
        lay["w"] = take(m * cols * 4) if item != 4 else None
        lay["t"] = [take(m * cols * 4) for _ in range(self.scratch_tiles(call))]
        lay["vec"] = [take(m * 4) for _ in range(6)]
        lay["param"] = arena.end
        arena.end += self.param_bytes(call, m)
        lay["end"] = arena.end
        return lay

    def fits(self, call: KernelCall, m: int, local_bytes: int) -> bool:
        return self.layout(call, m)["end"] <= local_bytes

    # ---- plans and cost model -------------------------------------------------------------
    def plans(self, call: KernelCall, chip) -> Iterator[RowPlan | ChunkPlan]:
        rows, cols = self.matrix(call)
        pes = max(1, min(chip.num_pes, rows))
        per_pe = math.ceil(rows / pes)
        choices = {per_pe} | {1 << k for k in range(per_pe.bit_length())}
        fitting = [m for m in sorted(choices) if m <= per_pe and self.fits(call, m, chip.local_mem.bytes)]
        for m in fitting:
            yield RowPlan(pes, m)
        if not fitting and self.chunked:
            for k in (1 << j for j in range(MIN_CHUNK.bit_length() - 1, cols.bit_length())):
                if k < cols and self.chunk_layout(call, k)["end"] <= chip.local_mem.bytes:
                    yield ChunkPlan(pes, k)

    def _dma_cycles(self, nbytes: int, space: str, pes: int, chip) -> float:
        """One DMA of `nbytes` between `space` and a PE while every PE streams: its latency, its
        bytes at the rate one PE gets alone, and a share (QUEUE_SHARE) of the wait behind the
        other PEs' transfers on the shared memory and on the column's NoC port."""
        return streaming_dma_cycles(nbytes, space, pes, chip)

    def predict(self, call: KernelCall, plan: RowPlan, chip) -> int:
        """Pipelined tiles on one PE (the first load, then per tile the slower of its SIMD work
        and its load + store, then the last compute and store), but never faster than the
        bytes every PE moves through the busiest shared memory or column port."""
        if isinstance(plan, ChunkPlan):
            return self._predict_chunks(call, plan, chip)
        rows, cols = self.matrix(call)
        m = plan.tile_rows
        per_pe = min(rows, math.ceil(rows / plan.pes))
        tiles = math.ceil(per_pe / m)
        lay = self.layout(call, m)
        x = call.inputs[0]
        # (space, bytes) of what a tile loads: its rows of the input, then of each tile operand
        loaded = [(x.space, m * cols * ISA_ITEMSIZE[x.dtype])]
        loaded += [(call.inputs[i].space, m * self.operand_cols(call, i) * ISA_ITEMSIZE[call.inputs[i].dtype])
                   for i in self.tile_operands(call)]
        in_bytes = sum(n for _, n in loaded)
        # (space, bytes) of each result a tile stores: the output, then one value per row of each extra
        stored = [(call.output.space, m * self.out_cols(call) * ISA_ITEMSIZE[call.output.dtype])]
        stored += [(p.space, m * ISA_ITEMSIZE[p.dtype]) for p in call.extra_outputs]
        load = sum(self._dma_cycles(n, space, plan.pes, chip) for space, n in loaded)
        store = sum(self._dma_cycles(n, space, plan.pes, chip) for space, n in stored)
        simd = sum(s.cycles(chip) for s in self.tile(call, lay, 0, m, 0))
        chain = load + (tiles - 1) * max(simd, load + store) + simd + store
        # the shared servers: memory (per space) and each column's NoC port
        clk = chip.clock_hz
        moved = {"dram": 0.0, "sram": 0.0}
        for space, n in loaded:
            moved[space] += n * tiles * plan.pes
        for space, n in stored:
            moved[space] += n * tiles * plan.pes
        streams = max(moved["dram"] * clk / chip.dram_bytes_per_s, moved["sram"] * clk / chip.sram.bytes_per_s,
                      (in_bytes + sum(n for _, n in stored)) * tiles * math.ceil(plan.pes / chip.pe_grid.cols)
                      * clk / chip.noc.link_bytes_per_s)
        lat = chip.dma.latency_cycles + chip.noc.hop_latency_cycles * chip.pe_grid.rows
        setup = 0.0
        params = self.params(call, lay)
        for q in params:
            src = call.inputs[q.operand]
            setup += self._dma_cycles(src.nbytes * q.reps, src.space, plan.pes, chip)
        setup += sum(s.cycles(chip) for s in self.setup(call, lay, m))
        if self.widen_params and any(call.inputs[q.operand].dtype != "fp32" for q in params):
            setup += chip.simd.latency_cycles + 1
        return int(setup + max(chain, streams + (simd + lat) / 2))

    # ---- emission -------------------------------------------------------------------------
    def emit(self, call: KernelCall, plan: RowPlan | ChunkPlan, chip, builder) -> None:
        rows, _ = self.matrix(call)
        if isinstance(plan, ChunkPlan):
            per_pe = math.ceil(rows / plan.pes)
            lay = self.chunk_layout(call, plan.chunk)
            for p in range(plan.pes):
                if p * per_pe < rows:
                    self._emit_jobs(call, lay, self._chunk_jobs(call, plan, lay, p * per_pe,
                                                                min(rows, (p + 1) * per_pe)),
                                    builder.pe(p), builder.token(), builder.token())
            return
        per_pe = math.ceil(rows / plan.pes)
        lay = self.layout(call, plan.tile_rows)
        for p in range(plan.pes):
            if p * per_pe < rows:
                self._emit_tiles(call, plan.tile_rows, lay, p * per_pe, min(rows, (p + 1) * per_pe),
                                 builder.pe(p), *(builder.token() for _ in range(3)))

    def _emit_tiles(self, call: KernelCall, m: int, lay: dict, start: int, end: int, pe,
                    ready: int, loaded: int, computed: int) -> None:
        """One PE's rows [start, end): constants, then tiles of m rows, double-buffered."""
        _, cols = self.matrix(call)
        x, out = call.inputs[0], call.output
        out_item = ISA_ITEMSIZE[out.dtype]
        oc = self.out_cols(call)
        params = self.params(call, lay)
        for q in params:
            src = call.inputs[q.operand]
            dst = q.dst if src.dtype == "fp32" or not self.widen_params else q.staging
            pe.dma(src.space, src.addr, "local", dst, rows=q.reps, row_bytes=src.nbytes,
                   src_stride=0, dst_stride=src.nbytes, signal=ready)
        if params:
            pe.nop(self.compute_engine, wait=(ready, len(params)))
            for q in params:
                src = call.inputs[q.operand]
                if src.dtype != "fp32" and self.widen_params:
                    n = q.reps * src.nbytes // ISA_ITEMSIZE[src.dtype]
                    pe.simd_unary("COPY", q.staging, q.dst, n, dtype=src.dtype, out_dtype="fp32")
            for s in self.setup(call, lay, m):
                s.emit(pe)
        tiles = [(s, min(m, end - s)) for s in range(start, end, m)]
        # what each tile loads: (operand, its columns, local buffers); all signal `loaded`
        sources = [(x, cols, lay["x"])] + [(call.inputs[i], self.operand_cols(call, i), lay[f"in{i}"])
                                           for i in self.tile_operands(call)]

        def load(s: int, n: int, slot: int, adv=lambda base, per_tile: base) -> None:
            for src, c, bufs in sources:
                it = ISA_ITEMSIZE[src.dtype]
                pe.dma(src.space, adv(src.addr + s * c * it, m * c * it), "local", bufs[slot],
                       nbytes=n * c * it, signal=loaded)

        load(*tiles[0], 0)
        per = len(sources)

        def tile(t: int, loop=None) -> None:
            """Load tile t+1, compute tile t, store it. In a compact loop whose iteration
            covers two tiles, addresses and wait counts advance by two tiles."""
            def adv(base: int, per_tile: int) -> int:
                return base if loop is None else loop.step(base, 2 * per_tile)

            s, n = tiles[t]
            if t + 1 < len(tiles):
                load(*tiles[t + 1], (t + 1) % 2, adv)
            steps = self.tile(call, lay, t % 2, n, s)
            for i, step in enumerate(steps):
                step.emit(pe, wait=(loaded, adv((t + 1) * per, per)) if i == 0 else None,
                          signal=computed if i == len(steps) - 1 else None)
            pe.dma("local", lay["out"][t % 2], out.space, adv(out.addr + s * oc * out_item, m * oc * out_item),
                   nbytes=n * oc * out_item, wait=(computed, adv(t + 1, 1)))
            for i, p in enumerate(call.extra_outputs, 1):         # one value per row
                ri = ISA_ITEMSIZE[p.dtype]
                pe.dma("local", lay[f"out{i}"][t % 2], p.space, adv(p.addr + s * ri, m * ri), nbytes=n * ri,
                       wait=(computed, adv(t + 1, 1)))

        # pairs of full tiles (slots 0, 1) whose next loads are full too run as one loop
        pairs = (len(tiles) - 2) // 2 if self.loops and len(tiles) >= 6 else 0
        if pairs:
            with pe.repeat(pairs) as loop:
                tile(0, loop)
                tile(1, loop)
        for t in range(2 * pairs, len(tiles)):
            tile(t)

    # ---- long rows, in chunks --------------------------------------------------------------
    #: whether rows too long for local memory are streamed in chunks (else they stay on the host)
    chunked = True
    #: per-chunk buffers of the chunked path: fp32 scratch chunks, operands loaded per chunk
    chunk_scratch = 0

    def chunk_operands(self, call: KernelCall) -> tuple[int, ...]:
        """Operands besides the input that pass 2 loads chunk by chunk (norm weight, bias)."""
        return ()

    def row_jobs(self, call: KernelCall, lay: dict, row: int, chunks: list[tuple[int, int]]) -> list[Job]:
        raise NotImplementedError

    def chunk_layout(self, call: KernelCall, k: int) -> dict:
        item = ISA_ITEMSIZE[call.inputs[0].dtype]
        out_item = ISA_ITEMSIZE[call.output.dtype]
        arena = LocalArena(ALIGN)
        take = arena.take

        lay: dict = {"x": [take(k * max(item, out_item)) for _ in range(2)]}
        lay["out"] = lay["x"] if self.out_cols(call) > 1 else [take(out_item) for _ in range(2)]
        for i, p in enumerate(call.extra_outputs, 1):
            lay[f"out{i}"] = [take(ISA_ITEMSIZE[p.dtype]) for _ in range(2)]
        lay["w"] = take(k * 4) if item != 4 else None
        lay["t"] = [take(k * 4) for _ in range(self.chunk_scratch)]
        for i in self.chunk_operands(call):
            lay[f"in{i}"] = [take(k * ISA_ITEMSIZE[call.inputs[i].dtype]) for _ in range(2)]
        lay["vec"] = [take(4) for _ in range(12)]
        lay["end"] = arena.end
        return lay

    def _chunk_jobs(self, call: KernelCall, plan: ChunkPlan, lay: dict, start: int, end: int) -> list[Job]:
        _, cols = self.matrix(call)
        chunks = [(c, min(plan.chunk, cols - c)) for c in range(0, cols, plan.chunk)]
        return [j for r in range(start, end) for j in self.row_jobs(call, lay, r, chunks)]

    def _predict_chunks(self, call: KernelCall, plan: ChunkPlan, chip) -> int:
        rows, _ = self.matrix(call)
        lay = self.chunk_layout(call, plan.chunk)
        jobs = self._chunk_jobs(call, plan, lay, 0, min(rows, math.ceil(rows / plan.pes)))
        loads = [sum(self._dma_cycles(ld.nbytes, ld.space, plan.pes, chip) for ld in j.loads) for j in jobs]
        stores = [sum(self._dma_cycles(st[3], st[1], plan.pes, chip) for st in j.stores) for j in jobs]
        simd = [sum(s.cycles(chip) for s in j.steps(0)) for j in jobs]
        chain = loads[0] + sum(max(simd[k], (loads[k + 1] if k + 1 < len(jobs) else 0.0) + stores[k])
                               for k in range(len(jobs)))
        moved = {"dram": 0.0, "sram": 0.0}
        for j in jobs:
            for ld in j.loads:
                moved[ld.space] += ld.nbytes * plan.pes
            for st in j.stores:
                moved[st[1]] += st[3] * plan.pes
        clk = chip.clock_hz
        streams = max(moved["dram"] * clk / chip.dram_bytes_per_s, moved["sram"] * clk / chip.sram.bytes_per_s)
        return int(max(chain, streams))

    def _emit_jobs(self, call: KernelCall, lay: dict, jobs: list[Job], pe, loaded: int, computed: int) -> None:
        """One PE's stream of jobs, double-buffered: job k+2 is loaded into job k's slot once
        job k has been computed (and, in DMA order, stored)."""
        cum = [0]
        for j in jobs:
            cum.append(cum[-1] + len(j.loads))

        def issue(k: int, wait=None) -> None:
            for i, ld in enumerate(jobs[k].loads):
                pe.dma(ld.space, ld.addr, "local", lay[ld.buf][k % 2], nbytes=ld.nbytes,
                       wait=wait if i == 0 else None, signal=loaded)

        for k in range(min(2, len(jobs))):
            issue(k)
        for k, job in enumerate(jobs):
            steps = job.steps(k % 2)
            for i, step in enumerate(steps):
                step.emit(pe, wait=(loaded, cum[k + 1]) if i == 0 else None,
                          signal=computed if i == len(steps) - 1 else None)
            for buf, space, addr, nbytes in job.stores:
                pe.dma("local", lay[buf][k % 2], space, addr, nbytes=nbytes, wait=(computed, k + 1))
            if k + 2 < len(jobs):
                issue(k + 2, wait=(computed, k + 1))

    def chunk_load(self, call: KernelCall, row: int, c0: int, n: int, operand: int = 0, buf: str = "x") -> Load:
        _, cols = self.matrix(call)
        src = call.inputs[operand]
        item = ISA_ITEMSIZE[src.dtype]
        addr = src.addr + ((row * cols if operand == 0 else 0) + c0) * item
        return Load(src.space, addr, buf, n * item)

    def chunk_work(self, call: KernelCall, lay: dict, slot: int, n: int) -> tuple[int, list[Simd]]:
        """The fp32 chunk (the slot itself for fp32 input) and the command that widens it."""
        if lay["w"] is None:
            return lay["x"][slot], []
        return lay["w"], [Simd("unary", "COPY", (lay["x"][slot], lay["w"]), 1, n, dtype=call.inputs[0].dtype)]

    # ---- helpers for subclasses -----------------------------------------------------------
    def work(self, call: KernelCall, lay: dict, slot: int) -> int:
        """The fp32 copy of the tile (the input buffer itself when the input is fp32)."""
        return lay["x"][slot] if lay["w"] is None else lay["w"]

    def widen(self, call: KernelCall, lay: dict, slot: int, m: int) -> list[Simd]:
        """The command that widens a non-fp32 tile to fp32 (none for fp32)."""
        if lay["w"] is None:
            return []
        _, cols = self.matrix(call)
        return [Simd("unary", "COPY", (lay["x"][slot], lay["w"]), m, cols, dtype=call.inputs[0].dtype)]


def _row_fits(cols_bytes_fp32: int, chip=None) -> bool:
    return cols_bytes_fp32 + 6 * 4 <= local_bytes(chip)


def _float_rows(operands, result) -> bool:
    x = operands[0]
    return x is not None and x.rank >= 1 and x.numel > 0 and x.shape[-1] > 0
