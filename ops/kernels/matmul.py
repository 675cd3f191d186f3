"""GEMM kernel template for `ember.matmul` and `ember.linear` on the dot-product engine.

Shape of the schedule (one plan):

* The output of each batch element is cut into ``mt x nt`` tiles. Every PE gets the same
  number of jobs (tiles); PE (r, c) owns M-tile positions ``mpos, mpos + pm, ...`` and N-tile
  positions ``npos, npos + pn, ...``. Two layouts: ``rows`` (PE rows split into ``pm`` groups
  along M; the PEs of one row share their M tiles) and ``cols`` (PE columns split into ``pn``
  groups along N; the PEs of one column share their N tiles). ``rows`` with ``pm`` = PE rows
  is the 2D grid: A multicast along PE rows, B down PE columns.
* An operand tile that a whole PE row (A) or column (B) needs is fetched once by one PE of
  that row/column with a multicast DMA; otherwise each PE fetches its own tiles.
* Inside a job, K is walked in ``kt`` steps through ``nbuf`` alternating local buffers: the
  DMA for step s + nbuf overlaps the DPE on step s. Sync tokens: "full" (DMA -> consumers),
  "free" (every consumer -> the fetching PE, per buffer slot).
* linear's weight W[N, K] arrives as W-tiles [nt, kt] and the MLU transposes each into the
  DPE's [kt, nt] operand layout.
* Epilogue in place on the fp32/int32 accumulator: bias add (SIMD, or the reduction engine for
  int32), rounding to the output dtype, then a strided DMA of the tile to the output. The bias
  is read in its own dtype; it and the dequantization vector (the "column params") are loaded
  after the first job's first ``nbuf`` fetches, which the DPE waits for, and replicated over the
  rows the epilogue adds per command by reading them that many times from memory or by a local
  copy, whichever the chip's rates make sooner. A quantized GEMM (int8 operands and a fourth
  operand, the fp32 dequantization vector d[N]) instead widens the int32 accumulator to fp32,
  multiplies each column n by d[n], and adds the bias in fp32. When the activation was quantized
  per row, a fifth operand s[M] (fp32, loaded per job like a residual tile) first scales row m by
  s[m].
  ``cbufs`` accumulators let the next job's DPE run while the epilogue and store drain.
* A fused elementwise epilogue (attribute ``epilogue``, set by the fuse-epilogues pass) runs
  after that, still in fp32 on the accumulator: unary SIMD functions, scales, and binary ops with
  a result-shaped operand (a residual) whose tile the PE's DMA queue loads like the bias (and
  widens to fp32 when it is narrower). Only the last step rounds to the output dtype.
* K loops are emitted as `PEStream.repeat` blocks (``nbuf`` steps per iteration), so a
  program grows with the number of jobs, not with K.

`predict` is a software-pipeline model of the busiest PE (DPE, its fetching DMA queue, the
memory channels and NoC edges every fetch shares) plus fill and drain; see `_predict`.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ops.kernel import ISA_ITEMSIZE, KernelCall, KernelTemplate, register_kernel
from ops.kernels.elementwise import tile_epilogue
from simulator.isa import LUT_FNS, Engine, SimdFn
from simulator.isa.program import Strided

ACC_DTYPE = {"fp32": "fp32", "bf16": "fp32", "fp16": "fp32", "int8": "int32"}
ALIGN = 64
BIAS_ROWS = 32          # rows of the replicated bias tile the epilogue adds per command


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _align(x: int) -> int:
    return _cdiv(x, ALIGN) * ALIGN


@dataclass(frozen=True)
class MatmulPlan:
    """One tiling: layout of jobs over the PE grid, tile sizes, buffering."""
    layout: str          # "rows" | "cols"
    groups: int          # pm (rows layout) or pn (cols layout)
    mt: int
    nt: int
    kt: int
    nbuf: int = 2
    cbufs: int = 1

    def __str__(self) -> str:
        return (f"{self.layout}/{self.groups} {self.mt}x{self.nt}x{self.kt} "
                f"b{self.nbuf}c{self.cbufs}")


@dataclass(frozen=True)
class _EpilogueStep:
    """One fused elementwise step on the fp32 output tile."""
    form: str                # "unary" | "scale" | "binary" (see elementwise.tile_epilogue)
    fn: str = "COPY"         # SIMD function (unary, binary)
    imm: float = 0.0         # scale: the immediate
    operand: int = -1        # binary: input position of the other (result-shaped) operand
    acc_first: bool = True   # binary: the accumulator is the left operand
    dtype: str = "fp32"      # binary: the other operand's dtype

    @property
    def lut(self) -> bool:
        return self.form == "unary" and SimdFn[self.fn] in LUT_FNS


def _epilogue(call: KernelCall) -> tuple[_EpilogueStep, ...]:
    """The call's `epilogue` attribute: ("unary", kind, alpha, beta) and ("binary", kind,
    operand position, side) entries (side 0: the contraction's result is the left operand)."""
    out = []
    for step in call.attrs.get("epilogue") or ():
        how = tile_epilogue(step[0], step[1])
        if how is None:
            raise ValueError(f"ember.{call.op}: epilogue step {tuple(step)} has no SIMD form")
        form, fn = how
        if form == "scale":
            out.append(_EpilogueStep(form, "MUL", imm=float(fn)))
        elif form == "unary":
            out.append(_EpilogueStep(form, fn))
        else:
            pos = int(step[2])
            out.append(_EpilogueStep(form, fn, operand=pos, acc_first=int(step[3]) == 0,
                                     dtype=call.inputs[pos].dtype))
    return tuple(out)


@dataclass(frozen=True)
class _Gemm:
    """The call seen as a batch of GEMMs C[b] = A[b] @ B[b] (B given as [K, N] or W[N, K])."""
    batch: int
    M: int
    K: int
    N: int
    a_offsets: tuple[int, ...]     # byte offset of A[b] from the lhs base, per batch element
    b_offsets: tuple[int, ...]
    transposed_b: bool             # linear: B is W[N, K]
    dtype: str
    out_dtype: str
    acc_dtype: str
    has_bias: bool
    scalar_bias: bool
    bias_dtype: str = "fp32"
    scaled: bool = False           # a dequantization vector d[N] multiplies the accumulator
    epilogue: tuple[_EpilogueStep, ...] = ()
    row_scaled: bool = False       # and a per-row scale s[M] (activations quantized per row)

    @property
    def es(self) -> int:
        return ISA_ITEMSIZE[self.dtype]

    @property
    def residuals(self) -> tuple[_EpilogueStep, ...]:
        return tuple(st for st in self.epilogue if st.form == "binary")


def _gemm(call: KernelCall) -> _Gemm:
    dt = call.compute_dtype
    es = ISA_ITEMSIZE[dt]
    if call.op == "linear":
        x, w = call.inputs[0], call.inputs[1]
        bias = call.inputs[2] if len(call.inputs) > 2 else None
        K = x.shape[-1]
        N = w.shape[0]
        M = int(np.prod(x.shape[:-1], dtype=np.int64))
        return _Gemm(1, M, K, N, (0,), (0,), True, dt, call.output.dtype, ACC_DTYPE[dt],
                     bias is not None, bias is not None and len(bias.shape) == 0,
                     dt if bias is None else bias.dtype, _dequant(call) is not None, _epilogue(call),
                     _row_scale(call) is not None)
    lhs, rhs = call.inputs[0], call.inputs[1]
    M, K = lhs.shape[-2:]
    N = rhs.shape[-1]
    out_batch = tuple(call.output.shape[:-2])
    batch = int(np.prod(out_batch, dtype=np.int64))

    def offsets(shape, tile_bytes):
        bshape = tuple(shape[:-2])
        bshape = (1,) * (len(out_batch) - len(bshape)) + bshape
        strides = np.zeros(len(bshape), np.int64)
        acc = tile_bytes
        for i in range(len(bshape) - 1, -1, -1):
            strides[i] = 0 if bshape[i] == 1 else acc
            acc *= bshape[i]
        return tuple(int(sum(int(i) * int(s) for i, s in zip(idx, strides)))
                     for idx in np.ndindex(*out_batch)) if out_batch else (0,)

    return _Gemm(max(batch, 1), M, K, N, offsets(lhs.shape, M * K * es), offsets(rhs.shape, K * N * es),
                 False, dt, call.output.dtype, ACC_DTYPE[dt], False, False, dt, _dequant(call) is not None,
                 _epilogue(call), _row_scale(call) is not None)


def _dequant(call: KernelCall):
    """The dequantization vector operand of a quantized GEMM (operand 3), or None."""
    return call.inputs[3] if len(call.inputs) > 3 else None


def _row_scale(call: KernelCall):
    """The per-row activation scales of a GEMM quantized per row (operand 4, [..., M, 1] fp32),
    or None."""
    return call.inputs[4] if len(call.inputs) > 4 and _dequant(call) is not None else None


def _output_index(g: "_Gemm", bi: int, m0: int, n0: int) -> int:
    """Element offset of output (and residual) tile (bi, m0, n0)."""
    return bi * g.M * g.N + m0 * g.N + n0


class _Layout:
    """Where the jobs of a plan go on the PE grid, and who fetches what."""

    def __init__(self, g: _Gemm, plan: MatmulPlan, R: int, C: int):
        self.R, self.C = R, C
        self.Tm, self.Tn = _cdiv(g.M, plan.mt), _cdiv(g.N, plan.nt)
        if plan.layout == "tiles":      # every tile of every batch element, round robin
            self.pm = self.pn = 1
            self.a_shared = self.b_shared = False
        elif plan.layout == "rows":
            self.pm = plan.groups
            self.pn = (R // plan.groups) * C
            self.a_shared, self.b_shared = True, plan.groups == R
        else:
            self.pn = plan.groups
            self.pm = (C // plan.groups) * R
            self.a_shared, self.b_shared = plan.groups == C, True
        self.plan = plan
        self.QM, self.QN = _cdiv(self.Tm, self.pm), _cdiv(self.Tn, self.pn)
        self.batch = g.batch

    def tile_jobs(self, pe: int) -> list[tuple[int, int, int]]:
        """`tiles` layout: (batch, M tile, N tile) of PE number `pe`, round robin."""
        P = self.R * self.C
        J = self.batch * self.Tm * self.Tn
        return [(j // (self.Tm * self.Tn), (j // self.Tn) % self.Tm, j % self.Tn) for j in range(pe, J, P)]

    def pos(self, r: int, c: int) -> tuple[int, int]:
        """(mpos, npos) of PE (r, c)."""
        R, C, p = self.R, self.C, self.plan
        if p.layout == "rows":
            k = R // p.groups
            return r // k, (r % k) * C + c
        k = C // p.groups
        return (c % k) * R + r, c // k

    def a_issuer(self, r: int, t: int = 0) -> tuple[int, int]:
        """The PE that multicasts row r's A tiles in job t: one per column (one NoC edge each),
        never one that multicasts B tiles too, and a different one each job, so that no PE's
        DMA queue carries both the row's fetches and all of its own stores."""
        shift = self.C // 2 if (self.b_shared and self.C > 1) else 0
        return r, (r + shift + t) % self.C

    def b_issuer(self, c: int, t: int = 0) -> tuple[int, int]:
        return (c - t) % self.R, c


def _tile(i: int, t: int, total: int) -> tuple[int, int]:
    """(start, size) of tile i of size t over `total` (size 0: no such tile)."""
    start = i * t
    return start, max(0, min(t, total - start))


class _Buffers:
    """Local-memory map of one plan (the same on every PE, so multicasts land in place)."""

    def __init__(self, g: _Gemm, p: MatmulPlan):
        es = g.es
        a = _align(p.mt * p.kt * es)
        b = _align(p.kt * p.nt * es)
        c = _align(p.mt * p.nt * 4)
        self.a = [i * a for i in range(p.nbuf)]
        base = p.nbuf * a
        self.b = [base + i * b for i in range(p.nbuf)]
        base += p.nbuf * b
        self.w = []
        if g.transposed_b:          # W tiles [nt, kt] before the MLU transposes them
            self.w = [base + i * b for i in range(p.nbuf)]
            base += p.nbuf * b
        self.c = [base + i * c for i in range(p.cbufs)]
        base += p.cbufs * c
        self.bias_raw = self.bias32 = self.scale = base
        if g.has_bias:
            self.bias32 = base + _align(BIAS_ROWS * p.nt * ISA_ITEMSIZE[g.bias_dtype])
            base = self.bias32 + _align(BIAS_ROWS * p.nt * 4)
        if g.scaled:
            self.scale = base
            base += _align(BIAS_ROWS * p.nt * 4)
        self.row_scale = base
        if g.row_scaled:
            base += _align(p.mt * 4)
        self.res = []           # per residual: (tile as loaded, its fp32 copy)
        for st in g.residuals:
            raw = base
            base += _align(p.mt * p.nt * ISA_ITEMSIZE[st.dtype])
            wide = raw
            if st.dtype != "fp32":
                wide = base
                base += _align(p.mt * p.nt * 4)
            self.res.append((raw, wide))
        self.total = base


# --- the cost model ---------------------------------------------------------------------------

class _Rates:
    """Bytes per cycle of the chip's servers, and fixed latencies."""

    def __init__(self, chip):
        clk = chip.clock_hz
        self.dram = chip.dram.bytes_per_s / clk
        self.sram = chip.sram.bytes_per_s / clk
        self.link = chip.noc.link_bytes_per_s / clk
        self.local = chip.local_mem.bytes_per_s / clk
        self.lat = chip.dma.latency_cycles
        self.hop = chip.noc.hop_latency_cycles
        self.mem = {"dram": self.dram, "sram": self.sram}
        self.channels = {"dram": chip.dram.channels, "sram": chip.sram.banks}
        self.interleave = {"dram": chip.dram.interleave_bytes, "sram": chip.sram.interleave_bytes}
        self.ntile = chip.dpe.n_tile
        self.ovh = chip.dpe.pass_overhead_cycles
        self.macs = chip.dpe.macs_per_cycle
        self.simd = chip.simd.elems_per_cycle
        self.simd_lat = chip.simd.latency_cycles
        self.simd_lut = chip.simd.lut_cycles
        self.re = chip.reduce.elems_per_cycle
        self.re_lat = chip.reduce.latency_cycles
        self.mlu = chip.mlu.bytes_per_cycle
        self.mlu_lat = chip.mlu.latency_cycles

    def dpe(self, m: int, k: int, n: int, dtype: str) -> int:
        kt = int(self.macs[dtype]) // self.ntile
        return _cdiv(k, kt) * _cdiv(n, self.ntile) * (m + self.ovh)

    def dma_alone(self, nbytes: int, space: str, rows: int) -> float:
        """A DMA between `space` and a PE in row `rows` with nothing else running: the memory
        channels it spans (interleaved) or the NoC link, whichever is slower."""
        ch = self.channels[space]
        mem = self.mem[space] * min(ch, _cdiv(nbytes, self.interleave[space])) / ch
        return nbytes / min(mem, self.link) + self.lat + self.hop * (rows + 1)


def _k_steps(K: int, kt: int) -> list[int]:
    return [min(kt, K - s) for s in range(0, K, kt)]


def _k_groups(K: int, kt: int) -> list[tuple[int, int]]:
    """K steps as (size, count) groups: the full steps, then the short last one."""
    full, rem = divmod(K, kt)
    return [(kt, full)] * (full > 0) + [(rem, 1)] * (rem > 0)


def _column_params(call: KernelCall, g: _Gemm) -> list:
    """The per-column vectors the epilogue reads per N tile: the bias, the dequantization vector."""
    return ([call.inputs[2]] if g.has_bias else []) + ([_dequant(call)] if g.scaled else [])


def _params_load(rt: _Rates, space: str, row: int, rows: int, active: int, R: int) -> tuple[bool, float]:
    """How one column-params row of `row` bytes becomes the `rows`-row tile the epilogue adds
    per command, and the DMA-queue cycles it takes: (True, t) read `rows` times from memory by
    one DMA (source stride 0), all `active` PEs at once; or (False, t) read once and copied
    local to local by a second DMA. Whichever the chip's rates make sooner."""
    direct = max(rt.dma_alone(rows * row, space, R // 2), active * rows * row / rt.mem[space] + rt.lat)
    if rows <= 1:
        return True, direct
    twice = rt.dma_alone(row, space, R // 2) + rt.lat + (rows - 1) * row / rt.local
    return (True, direct) if direct <= twice else (False, twice)


def _params_cycles(call: KernelCall, g: _Gemm, p: MatmulPlan, rt: _Rates, active: int, R: int) -> float:
    """DMA-queue cycles of one N tile's column params (see `_params_load`)."""
    rows, n = min(BIAS_ROWS, p.mt, g.M), min(p.nt, g.N)
    total = 0.0
    for prm in _column_params(call, g):
        es = ISA_ITEMSIZE[prm.dtype]
        if len(prm.shape) == 0:          # a scalar bias: one element, copied locally
            total += rt.dma_alone(es, prm.space, R // 2) + rt.lat + rows * n * es / rt.local
        else:
            total += _params_load(rt, prm.space, n * es, rows, active, R)[1]
    return total


def _epilogue_cycles(g: _Gemm, rt: _Rates, m: int, n: int) -> int:
    """SIMD / reduction-engine cycles of one job's epilogue (bias add, dequantization, fused
    elementwise steps, rounding)."""
    if not g.epilogue:
        return _bias_cycles(g, rt, m, n)
    # bias and dequantization stay in fp32; the last fused step rounds
    cyc = _bias_cycles(dataclasses.replace(g, out_dtype=g.acc_dtype), rt, m, n)
    vec = _cdiv(m * n, rt.simd)
    for st in g.epilogue:
        cyc += vec * (rt.simd_lut if st.lut else 1) + rt.simd_lat
        if st.form == "binary" and st.dtype != "fp32":      # widen the residual tile
            cyc += vec + rt.simd_lat
    return cyc


def _bias_cycles(g: _Gemm, rt: _Rates, m: int, n: int) -> int:
    """SIMD / reduction-engine cycles of bias add, dequantization and rounding of one job."""
    cyc = 0
    chunks = _cdiv(m, BIAS_ROWS)
    if g.scaled:     # widen, (scale rows,) scale, (widen the bias tile, add it)
        cyc += 2 * _cdiv(m * n, rt.simd) + (1 + chunks) * rt.simd_lat
        if g.row_scaled:
            cyc += m * _cdiv(n, rt.simd) + rt.simd_lat
        if g.has_bias:
            cyc += _cdiv(min(m, BIAS_ROWS) * n, rt.simd) + _cdiv(m * n, rt.simd) + (1 + chunks) * rt.simd_lat
        return cyc
    if g.has_bias:
        cyc += _cdiv(min(m, BIAS_ROWS) * n, rt.simd) + rt.simd_lat        # bias -> fp32/int32
        if g.acc_dtype == "int32":
            cyc += _cdiv(m * n, rt.re) + chunks * rt.re_lat
        else:
            cyc += _cdiv(m * n, rt.simd) + chunks * rt.simd_lat
            return cyc
    if g.out_dtype != g.acc_dtype:
        cyc += _cdiv(m * n, rt.simd) + rt.simd_lat
    return cyc


_ISSUERS: dict = {}


def _issuers(L: _Layout) -> tuple[frozenset, frozenset]:
    """PEs whose DMA queues fetch A and B tiles."""
    key = (L.R, L.C, L.plan.layout, L.plan.groups, L.Tm, L.Tn, L.batch if L.plan.layout == "tiles" else 0)
    if key in _ISSUERS:
        return _ISSUERS[key]
    fa, fb = set(), set()
    for r in range(L.R):
        for c in range(L.C):
            if L.plan.layout == "tiles":
                if L.tile_jobs(r * L.C + c):
                    fa.add((r, c))
                    fb.add((r, c))
                continue
            mpos, npos = L.pos(r, c)
            if mpos < L.Tm and (L.a_shared or npos < L.Tn):
                fa.add(L.a_issuer(r) if L.a_shared else (r, c))
            if npos < L.Tn and (L.b_shared or mpos < L.Tm):
                fb.add(L.b_issuer(c) if L.b_shared else (r, c))
    col_a = max([sum(1 for q in fa if q[1] == c) for c in range(L.C)] + [0])
    col_b = max([sum(1 for q in fb if q[1] == c) for c in range(L.C)] + [0])
    _ISSUERS[key] = frozenset(fa), frozenset(fb), col_a, col_b, bool(fa & fb)
    return _ISSUERS[key]


def _fetch_bases(call: KernelCall, g: _Gemm, L: _Layout) -> list[tuple[str, int, int, int, int]]:
    """The first K step's fetches of every fetching queue: (space, base address, rows M or N
    of the tile, row stride bytes, which operand) for A and B, from each queue's first job."""
    p = L.plan
    x, w = call.inputs[0], call.inputs[1]
    es = g.es
    out = []
    seen_a, seen_b = set(), set()
    for r in range(L.R):
        for c in range(L.C):
            if p.layout == "tiles":
                js = L.tile_jobs(r * L.C + c)
                if not js:
                    continue
                b, mi, nj = js[0]
            else:
                mi, nj = L.pos(r, c)
                b = 0
            m0, m = _tile(mi, p.mt, g.M)
            n0, n = _tile(nj, p.nt, g.N)
            if m and (n or L.a_shared):
                key = ("row", r) if L.a_shared else (r, c)
                if key not in seen_a:
                    seen_a.add(key)
                    out.append((x.space, x.addr + g.a_offsets[b] + m0 * g.K * es, m, 0))
            if n and (m or L.b_shared):
                key = ("col", c) if L.b_shared else (r, c)
                if key not in seen_b:
                    seen_b.add(key)
                    base = w.addr + (n0 * g.K * es if g.transposed_b else g.b_offsets[b] + n0 * es)
                    out.append((w.space, base, n, 1))
    return out


def _channel_time(fetches, kbytes_a: int, kbytes_b: int, rt: _Rates) -> float:
    """Cycles the busiest memory channel (bank) needs for one step's fetches, each charged to
    the channels of its byte range from its start address (the simulator's DRAM/SRAM servers)."""
    loads: dict[tuple[str, int], int] = {}
    for space, base, rows, which in fetches:
        nbytes = rows * (kbytes_b if which else kbytes_a)
        if nbytes <= 0:
            continue
        ch, il = rt.channels[space], rt.interleave[space]
        nch = min(ch, _cdiv(nbytes, il))
        per = _cdiv(nbytes, nch)
        first = (base // il) % ch
        for i in range(nch):
            k = (space, (first + i) % ch)
            loads[k] = loads.get(k, 0) + per
    return max([v * rt.channels[s] / rt.mem[s] for (s, _), v in loads.items()] + [0.0])


def _final_stores(call: KernelCall, g: _Gemm, L: _Layout, rt: _Rates) -> float:
    """Cycles of the last output stores, all PEs at once: each store is charged to the memory
    channels (banks) its byte range maps to from its start address, so narrow tiles can pile
    onto a few channels."""
    o = call.output
    oes = ISA_ITEMSIZE[o.dtype]
    ch, il = rt.channels[o.space], rt.interleave[o.space]
    load = [0] * ch
    p = L.plan
    for r in range(L.R):
        for c in range(L.C):
            if p.layout == "tiles":
                js = L.tile_jobs(r * L.C + c)
                if not js:
                    continue
                b, mi, nj = js[-1]
            else:
                mpos, npos = L.pos(r, c)
                if mpos >= L.Tm or npos >= L.Tn:
                    continue
                b = g.batch - 1
                mi = mpos + ((L.Tm - 1 - mpos) // L.pm) * L.pm
                nj = npos + ((L.Tn - 1 - npos) // L.pn) * L.pn
            m0, m = _tile(mi, p.mt, g.M)
            n0, n = _tile(nj, p.nt, g.N)
            nbytes = m * n * oes
            base = o.addr + (b * g.M * g.N + m0 * g.N + n0) * oes
            nch = min(ch, _cdiv(nbytes, il))
            per = _cdiv(nbytes, nch)
            first = (base // il) % ch
            for i in range(nch):
                load[(first + i) % ch] += per
    return max(load) * ch / rt.mem[o.space] + rt.lat + rt.hop * L.R


def _predict(call: KernelCall, g: _Gemm, p: MatmulPlan, chip, rt: _Rates | None = None,
             memo: dict | None = None, bound: float | None = None) -> int:
    """Cycles of a plan, as a software pipeline of K steps on the busiest PE.

    Per step: the DPE time T, the throughput bound X = max(T, the busiest fetching DMA
    queue, memory bytes of all fetches over its bandwidth, the busiest NoC edge), and the
    latency of a fetch L (issued when its buffer frees, done when the contended transfer
    and the DMA latency are). With ``nbuf`` buffers a step takes max(X, (L + T) / nbuf).
    Memory time per step is that of the busiest channel (bank) given the tiles' addresses.
    Jobs add the accumulator drain (epilogue + the burst of every PE's store) when it is not
    hidden; the run adds the first fetch (fill) and the last drain. A memory-bound floor adds
    the DMA latencies of the busiest queue, shared among the queues fetching at once.
    """
    rt = rt or _Rates(chip)
    R, C = chip.pe_grid.rows, chip.pe_grid.cols
    L = _Layout(g, p, R, C)
    es, oes = g.es, ISA_ITEMSIZE[g.out_dtype]
    kg = _k_groups(g.K, p.kt)
    nsteps = sum(c for _, c in kg)
    a_sp, b_sp, o_sp = call.inputs[0].space, call.inputs[1].space, call.output.space

    ms = [_tile(u * L.pm, p.mt, g.M)[1] for u in range(L.QM)]
    ns = [_tile(v * L.pn, p.nt, g.N)[1] for v in range(L.QN)]
    if p.layout == "tiles":
        jobs = [(_tile(mi, p.mt, g.M)[1], _tile(nj, p.nt, g.N)[1]) for _, mi, nj in L.tile_jobs(0)]
    else:
        jobs = [(m, n) for m in ms for n in ns if m and n] * g.batch
    if not jobs:
        return 1 << 62
    if bound is not None:       # the busiest PE's DPE work alone: skip plans that cannot win
        work = {mn: sum(c * rt.dpe(mn[0], k, mn[1], g.dtype) for k, c in kg) for mn in set(jobs)}
        if sum(work[j] for j in jobs) >= bound:
            return 1 << 62
    fa, fb, col_a, col_b, both = _issuers(L)
    mt_full, nt_full = min(p.mt, g.M), min(p.nt, g.N)
    lat = rt.lat + rt.hop * R
    shared = L.a_shared or L.b_shared
    memo = {} if memo is None else memo      # per call: what depends on layout and tile only
    key = (p.layout, p.groups, p.mt, p.nt)
    if key not in memo:
        memo[key] = (_fetch_bases(call, g, L), _final_stores(call, g, L, rt))
    fetches, final_stores = memo[key]

    def channel_time(kbytes):
        if (key, kbytes) not in memo:
            memo[key, kbytes] = _channel_time(fetches, kbytes, kbytes, rt)
        return memo[key, kbytes]

    def step(m, k, n):
        t = rt.dpe(m, k, n, g.dtype)
        if g.transposed_b:
            t = max(t, _cdiv(k * n * es, rt.mlu) + rt.mlu_lat)
        a_b, b_b = mt_full * k * es, k * nt_full * es
        mem = {"dram": 0.0, "sram": 0.0}
        mem[a_sp] += len(fa) * a_b
        mem[b_sp] += len(fb) * b_b
        mem_t = max(mem["dram"] / rt.dram, mem["sram"] / rt.sram,
                    (col_a * a_b + col_b * b_b) / rt.link,
                    channel_time(k * es))
        # throughput: the busiest queue at the rates its DMAs get alone; latency: each DMA of
        # that queue waits behind the step's other fetches on the shared servers (FCFS)
        qa = rt.dma_alone(a_b, a_sp, R - 1) if fa else 0.0
        qb = rt.dma_alone(b_b, b_sp, R - 1) if fb else 0.0
        qa_c = max(qa, mem_t + lat) if fa else 0.0
        qb_c = max(qb, mem_t + lat) if fb else 0.0
        queue = qa + qb if both else max(qa, qb)
        fetch = qa_c + qb_c if both else max(qa_c, qb_c)
        x = max(t, queue, mem_t)
        # the first fetch, all queues at once. When every fetching queue fetches both A and B
        # (one after the other), all of A's traffic goes first and B's waits only behind it;
        # otherwise queues fetching one operand go on to their next fetches meanwhile
        first = fetch
        if both and fa == fb:
            a_end = max(qa, mem_t * len(fa) * a_b / max(1, len(fa) * a_b + len(fb) * b_b) + lat)
            first = max(a_end + qb, mem_t + lat)
        return max(x, (fetch + t) / p.nbuf), fetch, queue, mem_t, t, first

    period, queue, store, busy = {}, {}, {}, {}
    epi = {mn: _epilogue_cycles(g, rt, *mn) for mn in set(jobs)}
    # PEs reach the end of their jobs together: a job's stores (all active PEs) share the
    # output memory, with each other and with the next job's fetches
    active = min(R * C, g.batch * L.Tm * L.Tn)
    # fetching rotates over a row's / column's PEs job by job (see a_issuer)
    store_share = 1.0 if not shared else 1.0 / min(len(jobs), C if L.a_shared else R)
    # a new N tile per job means new column params (bias, dequantization vector): loads in this
    # PE's queue behind the previous store, then the bias's widening on the SIMD engine
    params = _params_cycles(call, g, p, rt, active, R)
    widen = (_cdiv(min(BIAS_ROWS, p.mt, g.M) * min(p.nt, g.N), rt.simd) + rt.simd_lat) if g.has_bias else 0
    params_reload = 0.0
    if params and (len({n for _, n in jobs}) > 1 or L.QN > 1):
        params_reload = params + widen
    wave = {}
    residuals = [(call.inputs[st.operand].space, ISA_ITEMSIZE[st.dtype]) for st in g.residuals]
    row_scale = _row_scale(call)
    for m, n in set(jobs):
        store[m, n] = rt.dma_alone(m * n * oes, o_sp, R // 2)
        wave[m, n] = max(store[m, n], active * m * n * oes / rt.mem[o_sp] + lat)
        # a fused epilogue's residual tiles (and the rows' scales): loads in this PE's queue,
        # after its store
        res_load = sum(rt.dma_alone(m * n * rs, sp, R // 2) for sp, rs in residuals)
        if row_scale is not None:
            res_load += rt.dma_alone(m * 4, row_scale.space, R // 2)
        per = [(c, step(m, k, n)) for k, c in kg]
        # the fetching queue also carries this PE's store of the job
        # every active PE loads its residual tiles once per job, through the fetches' memory
        res_mem = sum(active * m * n * rs / rt.mem[sp] for sp, rs in residuals)
        queue[m, n] = sum(c * s[2] for c, s in per) + store_share * (store[m, n] + res_load) + params_reload
        # between two jobs' stores, a chain through the queue: the next params, the epilogue that
        # reads them, the store that waits for the epilogue
        chain = store[m, n] + params_reload + epi[m, n] if params_reload else 0.0
        busy[m, n] = (sum(c * s[0] for c, s in per), sum(c * s[3] for c, s in per) + res_mem)
        period[m, n] = max(busy[m, n][0], queue[m, n], chain, busy[m, n][1])
    path = sum(period[j] for j in jobs)
    # the ends of the queue: the first job's first fetch is the fill, the last job's epilogue
    # and store are the drain (and no chain leads to the first job); the first job's queue also
    # loads the column params when no job reloads; the DPE has its first tile after the fill
    first, last = jobs[0], jobs[-1]
    s0 = step(first[0], kg[0][0], first[1])
    b_first = busy[first][0] - s0[0] + s0[4]
    q_first = queue[first] - s0[2]
    if g.transposed_b:     # the queue goes on while the MLU transposes the first W tile
        q_first -= _cdiv(kg[0][0] * nt_full * es, rt.mlu) + rt.mlu_lat
    if params and not params_reload:
        q_first += params + widen
    if len(jobs) == 1:
        path += max(b_first, q_first - store_share * store[last], busy[last][1]) - period[last]
    else:
        path += max(b_first, q_first, busy[first][1]) - period[first]
        path += max(busy[last][0], queue[last] - store_share * store[last], busy[last][1]) - period[last]
    for t in range(len(jobs) - 1):      # the next job's DPE waits for this accumulator to drain
        if p.cbufs == 1:                # the DPE waits for the store
            path += epi[jobs[t]] + wave[jobs[t]] + params_reload
        elif o_sp in (a_sp, b_sp):      # the burst of stores holds up the next fetches (FCFS);
            # the DPE runs on what is already prefetched meanwhile
            nxt = jobs[t + 1]
            path += max(0.0, epi[jobs[t]] + wave[jobs[t]] - (p.nbuf - 1) * period[nxt] / nsteps)
        else:
            path += max(0.0, epi[jobs[t]] + store[jobs[t]] - period[jobs[t + 1]])
    fill = step(mt_full, kg[0][0], nt_full)[5]
    if g.transposed_b:
        fill += _cdiv(kg[0][0] * nt_full * es, rt.mlu) + rt.mlu_lat
    # after many jobs, or with each PE fetching its own tiles, PEs finish at staggered times and
    # about half of the pile-up shows; after one job on multicast operands (which every PE of a
    # row or column receives at once), all of it
    drain = epi[jobs[-1]] + max(store[jobs[-1]], (1.0 if len(jobs) == 1 and shared else 0.5) * final_stores)
    # memory-bound floor: every byte over its memory once per fetch
    a_bytes = g.batch * g.M * g.K * es * ((R // L.pm) * L.QN if L.a_shared else L.Tn)
    b_bytes = g.batch * g.N * g.K * es * ((C // L.pn) * L.QM if L.b_shared else L.Tm)
    o_bytes = g.batch * g.M * g.N * oes
    by = {"dram": 0, "sram": 0}
    for x, s in ((a_bytes, a_sp), (b_bytes, b_sp), (o_bytes, o_sp)):
        by[s] += x
    for sp, rs in residuals:
        by[sp] += g.batch * g.M * g.N * rs
    mem_path = max(by["dram"] / rt.dram, by["sram"] / rt.sram)
    n_jobs_q = len(jobs) if p.layout == "tiles" else g.batch * L.QM * L.QN
    n_dma = nsteps * n_jobs_q * ((1 if fa else 0) + (1 if fb else 0) if both else 1)
    # memory-bound: the busiest queue's DMA latencies show when few queues fetch at once; the
    # last output store is part of mem_path already
    floor = (mem_path + n_dma * lat / max(1, len(fa | fb))
             + rt.dpe(*jobs[-1][:1], kg[-1][0], jobs[-1][1], g.dtype) + epi[jobs[-1]] + lat)
    return int(max(fill + path + drain, floor))


# --- emission ---------------------------------------------------------------------------------

def _lin(base: int, stride: int, looped: bool):
    return Strided(base, stride) if looped and stride else base


class _Emitter:
    def __init__(self, call: KernelCall, g: _Gemm, p: MatmulPlan, chip, builder):
        self.call, self.g, self.p, self.chip, self.b = call, g, p, chip, builder
        self.R, self.C = chip.pe_grid.rows, chip.pe_grid.cols
        self.L = _Layout(g, p, self.R, self.C)
        self.buf = _Buffers(g, p)
        self.steps = _k_steps(g.K, p.kt)
        self.nk = len(self.steps)
        self.pe_tok: dict[int, dict] = {}
        self.rates = _Rates(chip)

    # one job list, the same length on every PE
    def jobs(self, r: int, c: int):
        L, p, g = self.L, self.p, self.g
        if p.layout == "tiles":
            return L.tile_jobs(r * self.C + c)
        mpos, npos = L.pos(r, c)
        out = []
        for bi in range(g.batch):
            for u in range(L.QM):
                mi = mpos + u * L.pm
                for v in range(L.QN):
                    nj = npos + v * L.pn
                    out.append((bi, mi, nj))
        return out

    def m_tile(self, mi):
        return _tile(mi, self.p.mt, self.g.M)

    def n_tile(self, nj):
        return _tile(nj, self.p.nt, self.g.N)

    def run(self) -> None:
        p, L, b = self.p, self.L, self.b
        R, C = self.R, self.C
        # group tokens: A per PE row (shared) or per PE; B per PE column (shared) or per PE
        a_full = {}; a_free = {}; b_full = {}; b_free = {}
        for r in range(R):
            for c in range(C):
                ka = ("row", r) if L.a_shared else ("pe", r, c)
                kb = ("col", c) if L.b_shared else ("pe", r, c)
                for d_full, d_free, k in ((a_full, a_free, ka), (b_full, b_free, kb)):
                    if k not in d_full:
                        d_full[k] = [b.token() for _ in range(p.nbuf)]
                        d_free[k] = [b.token() for _ in range(p.nbuf)]
        self.a_full, self.a_free, self.b_full, self.b_free = a_full, a_free, b_full, b_free
        for r in range(R):
            for c in range(C):
                self.emit_pe(r, c)

    def emit_pe(self, r: int, c: int) -> None:
        g, L, bld = self.g, self.L, self.b
        pe = bld.pe(r, c)
        jobs = self.jobs(r, c)
        ka = ("row", r) if L.a_shared else ("pe", r, c)
        kb = ("col", c) if L.b_shared else ("pe", r, c)
        a_cons = self.C if L.a_shared else 1
        b_cons = self.R if L.b_shared else 1
        fetch_a = [(not L.a_shared) or L.a_issuer(r, t) == (r, c) for t in range(len(jobs))]
        fetch_b = [(not L.b_shared) or L.b_issuer(c, t) == (r, c) for t in range(len(jobs))]
        # which operands exist per job for this PE: A if its M tile exists (shared: whole row)
        has_a = [self.m_tile(mi)[1] > 0 and (L.a_shared or self.n_tile(nj)[1] > 0) for _, mi, nj in jobs]
        has_b = [self.n_tile(nj)[1] > 0 and (L.b_shared or self.m_tile(mi)[1] > 0) for _, mi, nj in jobs]
        real = [self.m_tile(mi)[1] > 0 and self.n_tile(nj)[1] > 0 for _, mi, nj in jobs]
        if not any(has_a) and not any(has_b):
            return
        # running load indices (q) of each operand at the start of each job
        qa, qb = [], []
        na = nb_ = 0
        for t in range(len(jobs)):
            qa.append(na); qb.append(nb_)
            na += self.nk if has_a[t] else 0
            nb_ += self.nk if has_b[t] else 0
        self.emit_dma(pe, r, c, jobs, real, has_a, has_b, qa, qb, fetch_a, fetch_b, ka, kb, a_cons, b_cons)
        if g.transposed_b:
            self.emit_mlu(pe, jobs, real, has_a, has_b, qb, kb)
        self.emit_dpe(pe, jobs, real, has_a, has_b, qa, qb, ka, kb)
        if any(real):
            self.emit_epilogue(pe, jobs, real)

    # --- tokens private to this PE, created lazily -------------------------------------------
    def _pe_tokens(self, pe):
        if pe.pe not in self.pe_tok:
            b = self.b
            self.pe_tok[pe.pe] = {"dp": b.token(), "ep": b.token(), "st": b.token(), "bias": b.token(),
                                      "scale": b.token(), "bconv": b.token(), "radd": b.token(),
                                      "pre": b.token(), "res": b.token(),
                                      "wt_full": [b.token() for _ in range(self.p.nbuf)],
                                      "wt_free": [b.token() for _ in range(self.p.nbuf)]}
        return self.pe_tok[pe.pe]

    # --- DMA queue ------------------------------------------------------------------------------
    def _load_a(self, pe, job, s, q, ka, a_cons, looped, nbuf_iter):
        """Fetch A tile for step s (q: its load index); looped: operands advance per iteration."""
        g, p, L = self.g, self.p, self.L
        bi, mi, _ = job
        m0, m = self.m_tile(mi)
        k = self.steps[s]
        es = g.es
        x = self.call.inputs[0]
        src = x.addr + g.a_offsets[bi] + (m0 * g.K + s * p.kt) * es
        slot, use = q % p.nbuf, q // p.nbuf
        wait = (self.a_free[ka][slot], _lin(a_cons * use, a_cons, looped)) if use else None
        if looped and not use:
            wait = (self.a_free[ka][slot], Strided(0, a_cons))
        pe.dma(x.space, _lin(src, nbuf_iter * p.kt * es, looped), "local", self.buf.a[slot],
               rows=m, row_bytes=k * es, src_stride=g.K * es,
               dst_pe=pe.pe, mcast="row" if L.a_shared else "none",
               wait=wait, signal=self.a_full[ka][slot])

    def _load_b(self, pe, job, s, q, kb, b_cons, looped, nbuf_iter):
        g, p, L = self.g, self.p, self.L
        bi, _, nj = job
        n0, n = self.n_tile(nj)
        k = self.steps[s]
        es = g.es
        w = self.call.inputs[1]
        slot, use = q % p.nbuf, q // p.nbuf
        wait = (self.b_free[kb][slot], _lin(b_cons * use, b_cons, looped)) if use else None
        if looped and not use:
            wait = (self.b_free[kb][slot], Strided(0, b_cons))
        if g.transposed_b:     # W[n0:n0+n, k0:k0+k] -> [n, k]
            src = w.addr + (n0 * g.K + s * p.kt) * es
            step = nbuf_iter * p.kt * es
            dst = self.buf.w[slot]
            rows, row_bytes, stride = n, k * es, g.K * es
        else:                  # B[k0:k0+k, n0:n0+n] -> [k, n]
            src = w.addr + g.b_offsets[bi] + (s * p.kt * g.N + n0) * es
            step = nbuf_iter * p.kt * g.N * es
            dst = self.buf.b[slot]
            rows, row_bytes, stride = k, n * es, g.N * es
        pe.dma(w.space, _lin(src, step, looped), "local", dst, rows=rows, row_bytes=row_bytes,
               src_stride=stride, dst_pe=pe.pe,
               mcast="col" if L.b_shared else "none", wait=wait, signal=self.b_full[kb][slot])

    def emit_dma(self, pe, r, c, jobs, real, has_a, has_b, qa, qb, fetch_a, fetch_b, ka, kb, a_cons, b_cons):
        g, p = self.g, self.p
        tok = self._pe_tokens(pe)
        events = []      # (sort key, kind, payload)
        nk = self.nk
        # a run of steps [s0, s1) of job t: loads of this PE, compressed into loops
        for t, job in enumerate(jobs):
            la = fetch_a[t] and has_a[t]
            lb = fetch_b[t] and has_b[t]
            if la or lb:
                events.append(((t * nk, 1), "steps", (t, la, lb)))
        # stores: before the loads that (transitively) wait for this accumulator to drain
        real_idx = [t for t in range(len(jobs)) if real[t]]
        prev_n = prev_key = None
        for i, t in enumerate(real_idx):
            nxt = real_idx[i + 1] if i + 1 < len(real_idx) else None
            # (stores stay in job order: the DPE counts completed stores to reuse an accumulator)
            key = (min(nxt * nk + p.nbuf, len(jobs) * nk) if nxt is not None else len(jobs) * nk + 1, 0, i, 0)
            events.append((key, "store", (t, i)))
            if (g.has_bias or g.scaled) and jobs[t][2] != prev_n:
                # the bias tile of job i replaces that of job i-1 once i-1's epilogue is done,
                # which its store (just before in this queue) waits for
                # (the first one after the job's first nbuf fetches, which the DPE waits for)
                bkey = (t * nk + min(p.nbuf, nk), 0, -2, 0) if i == 0 else prev_key[:3] + (1,)
                events.append((bkey, "bias", (t, i)))
            if g.residuals or g.row_scaled:
                # a fused epilogue's residual tiles (and the rows' scales): after the job's own
                # loads (the epilogue needs them last), and after the store of job i-1, whose
                # epilogue read the buffer
                at = (t + 1) * nk
                rkey = (at, 0, -1, 0) if i == 0 else max((at, 0, -1, 0), prev_key[:3] + (2,))
                events.append((rkey, "residual", (t, i)))
            prev_n, prev_key = jobs[t][2], key
        # split step runs at store positions
        cut_points = sorted(k for k, kind, _ in events if kind in ("store", "bias"))
        items = []
        for key, kind, payload in events:
            if kind != "steps":
                items.append((key, kind, payload))
                continue
            t, la, lb = payload
            bounds = [0, nk]
            for cp in cut_points:
                s = cp[0] - t * nk
                if 0 < s < nk:
                    bounds.append(s)
            bounds = sorted(set(bounds))
            for s0, s1 in itertools.pairwise(bounds):
                items.append(((t * nk + s0, 1), "run", (t, s0, s1, la, lb)))
        items.sort(key=lambda e: e[0])
        self.bias_loads = 0
        for key, kind, payload in items:
            if kind == "run":
                t, s0, s1, la, lb = payload
                self._emit_run(pe, jobs[t], t, s0, s1, la, lb, qa[t], qb[t], ka, kb, a_cons, b_cons)
            elif kind == "store":
                t, i = payload
                self._store(pe, jobs[t], t, i, tok)
            elif kind == "residual":
                self._residual_load(pe, jobs[payload[0]], tok)
            else:
                t, i = payload
                self._column_params_load(pe, jobs[t], tok)

    def _emit_run(self, pe, job, t, s0, s1, la, lb, qa0, qb0, ka, kb, a_cons, b_cons):
        """The loads of steps [s0, s1) of one job; whole groups of nbuf full steps as a loop."""
        p = self.p
        nfull = sum(1 for s in range(s0, s1) if self.steps[s] == p.kt)   # a prefix: only the last step is short
        n_iter = nfull // p.nbuf
        s = s0
        if n_iter >= 2:
            with pe.repeat(n_iter):
                for j in range(p.nbuf):
                    if la:
                        self._load_a(pe, job, s0 + j, qa0 + s0 + j, ka, a_cons, True, p.nbuf)
                    if lb:
                        self._load_b(pe, job, s0 + j, qb0 + s0 + j, kb, b_cons, True, p.nbuf)
            s = s0 + n_iter * p.nbuf
        for s in range(s, s1):  # noqa: B020 (the plain tail after the loop)
            if la:
                self._load_a(pe, job, s, qa0 + s, ka, a_cons, False, 0)
            if lb:
                self._load_b(pe, job, s, qb0 + s, kb, b_cons, False, 0)

    def _store(self, pe, job, t, i, tok):
        g, p = self.g, self.p
        bi, mi, nj = job
        m0, m = self.m_tile(mi)
        n0, n = self.n_tile(nj)
        o = self.call.output
        oes = ISA_ITEMSIZE[g.out_dtype]
        wait_tok = tok["ep"] if self._has_epilogue() else tok["dp"]
        pe.dma("local", self.buf.c[i % p.cbufs], o.space,
               o.addr + (bi * g.M * g.N + m0 * g.N + n0) * oes, rows=m, row_bytes=n * oes,
               dst_stride=g.N * oes, wait=(wait_tok, i + 1), signal=tok["st"])

    def _residual_load(self, pe, job, tok):
        """The job's tile of each residual operand of the fused epilogue, packed [m, n]; and
        the scales of its rows (m fp32) when the activation was quantized per row."""
        g = self.g
        bi, mi, nj = job
        m0, m = self.m_tile(mi)
        n0, n = self.n_tile(nj)
        if g.row_scaled:
            rs = _row_scale(self.call)
            pe.dma(rs.space, rs.addr + (bi * g.M + m0) * 4, "local", self.buf.row_scale, nbytes=m * 4,
                   signal=tok["res"])
        for st, (raw, _) in zip(g.residuals, self.buf.res):
            src = self.call.inputs[st.operand]
            es = ISA_ITEMSIZE[st.dtype]
            pe.dma(src.space, src.addr + _output_index(g, bi, m0, n0) * es, "local", raw, rows=m,
                   row_bytes=n * es, src_stride=g.N * es, signal=tok["res"])

    def _column_params_load(self, pe, job, tok):
        """Bias (and dequantization vector) of the job's N tile, replicated over the rows the
        epilogue adds per command: each read `rows` times from memory, or read once and copied
        local to local, whichever `_params_load` finds sooner on this chip."""
        g, p = self.g, self.p
        n0, n = self.n_tile(job[2])
        rows = min(BIAS_ROWS, p.mt, g.M)
        bufs = ([(self.buf.bias_raw, tok["bias"])] if g.has_bias else []) + (
            [(self.buf.scale, tok["scale"])] if g.scaled else [])
        active = min(self.R * self.C, g.batch * self.L.Tm * self.L.Tn)
        for src_p, (raw, signal) in zip(_column_params(self.call, g), bufs):
            es = ISA_ITEMSIZE[src_p.dtype]
            if len(src_p.shape) == 0:     # a scalar bias
                row, copies, src, direct = es, rows * n - 1, src_p.addr, False
            else:
                row, copies, src = n * es, rows - 1, src_p.addr + n0 * es
                direct = _params_load(self.rates, src_p.space, row, rows, active, self.R)[0]
            if direct:
                pe.dma(src_p.space, src, "local", raw, rows=copies + 1, row_bytes=row, src_stride=0,
                       signal=signal)
                continue
            pe.dma(src_p.space, src, "local", raw, nbytes=row, signal=None if copies else signal)
            if copies:
                pe.dma("local", raw, "local", raw + row, rows=copies, row_bytes=row, src_stride=0,
                       signal=signal)

    # --- MLU queue (linear: transpose W tiles) --------------------------------------------------
    def _steps(self, pe, s0: int, emit_step) -> None:
        """emit_step(s, looped) for steps s0..nk-1: whole groups of nbuf full-size steps as one
        repeat block (operands advance per iteration), the rest plain."""
        p = self.p
        nfull = sum(1 for s in range(s0, self.nk) if self.steps[s] == p.kt)
        n_iter = nfull // p.nbuf
        s = s0
        if n_iter >= 2:
            with pe.repeat(n_iter):
                for j in range(p.nbuf):
                    emit_step(s0 + j, True)
            s = s0 + n_iter * p.nbuf
        for s in range(s, self.nk):  # noqa: B020 (the plain tail after the loop)
            emit_step(s, False)

    def emit_mlu(self, pe, jobs, real, has_a, has_b, qb, kb):
        """linear: transpose each W tile [n, k] into the DPE's [k, n] operand."""
        p, g = self.p, self.g
        tok = self._pe_tokens(pe)
        nw = 0       # transposes done on this PE (its private W^T slots)
        for t, job in enumerate(jobs):
            if not has_b[t]:
                continue
            n = self.n_tile(job[2])[1]

            def dummy(s, looped, q0=qb[t]):
                q = q0 + s
                pe.nop(Engine.MLU, wait=(self.b_full[kb][q % p.nbuf], _lin(q // p.nbuf + 1, 1, looped)),
                       signal=self.b_free[kb][q % p.nbuf])

            def step(s, looped, q0=qb[t], nw0=nw, n=n):
                q, w = q0 + s, nw0 + s
                slot, use = q % p.nbuf, q // p.nbuf
                ws, wu = w % p.nbuf, w // p.nbuf
                if wu or looped:
                    pe.nop(Engine.MLU, wait=(tok["wt_free"][ws], _lin(wu, 1, looped)))
                pe.mlu_transpose(self.buf.w[slot], self.buf.b[ws], n, self.steps[s], dtype=g.dtype,
                                 wait=(self.b_full[kb][slot], _lin(use + 1, 1, looped)),
                                 signal=tok["wt_full"][ws])
                pe.nop(Engine.MLU, signal=self.b_free[kb][slot])

            if real[t]:
                self._steps(pe, 0, step)
                nw += self.nk
            else:
                self._steps(pe, 0, dummy)

    # --- DPE queue ------------------------------------------------------------------------------
    def emit_dpe(self, pe, jobs, real, has_a, has_b, qa, qb, ka, kb):
        g, p = self.g, self.p
        tok = self._pe_tokens(pe)
        i_real = 0
        nw = 0
        for t, job in enumerate(jobs):
            if not real[t]:          # consume the shared tiles this PE has no use for
                def dummy(s, looped, t=t):
                    if has_a[t]:
                        q = qa[t] + s
                        pe.nop(Engine.DPE, wait=(self.a_full[ka][q % p.nbuf], _lin(q // p.nbuf + 1, 1, looped)),
                               signal=self.a_free[ka][q % p.nbuf])
                    if has_b[t] and not g.transposed_b:
                        q = qb[t] + s
                        pe.nop(Engine.DPE, wait=(self.b_full[kb][q % p.nbuf], _lin(q // p.nbuf + 1, 1, looped)),
                               signal=self.b_free[kb][q % p.nbuf])
                self._steps(pe, 0, dummy)
                continue
            m = self.m_tile(job[1])[1]
            n = self.n_tile(job[2])[1]
            cb = self.buf.c[i_real % p.cbufs]
            if i_real >= p.cbufs:
                pe.nop(Engine.DPE, wait=(tok["st"], i_real - p.cbufs + 1))
            # steps: 0 plain (no accumulate), full-size middle steps looped, the rest plain
            s = 0
            self._dpe_step(pe, job, s, qa[t], qb[t], nw, ka, kb, m, n, cb, False, False)
            s = 1
            mid = [x for x in range(1, self.nk) if self.steps[x] == p.kt]
            n_iter = len(mid) // p.nbuf
            if n_iter >= 2:
                with pe.repeat(n_iter):
                    for j in range(p.nbuf):
                        self._dpe_step(pe, job, 1 + j, qa[t], qb[t], nw, ka, kb, m, n, cb, True, True)
                s = 1 + n_iter * p.nbuf
            for s in range(s, self.nk):  # noqa: B020 (the plain tail after the loop)
                self._dpe_step(pe, job, s, qa[t], qb[t], nw, ka, kb, m, n, cb, True, False)
            pe.nop(Engine.DPE, signal=tok["dp"])
            nw += self.nk
            i_real += 1

    def _dpe_step(self, pe, job, s, qa0, qb0, nw0, ka, kb, m, n, cb, acc, looped):
        g, p = self.g, self.p
        tok = self._pe_tokens(pe)
        qa, qb = qa0 + s, qb0 + s
        sa, ua = qa % p.nbuf, qa // p.nbuf
        pe.nop(Engine.DPE, wait=(self.a_full[ka][sa], _lin(ua + 1, 1, looped)))
        if g.transposed_b:
            q = nw0 + s
            sb, ub = q % p.nbuf, q // p.nbuf
            full, free = tok["wt_full"][sb], tok["wt_free"][sb]
        else:
            sb, ub = qb % p.nbuf, qb // p.nbuf
            full, free = self.b_full[kb][sb], self.b_free[kb][sb]
        pe.dpe_matmul(self.buf.a[sa], self.buf.b[sb], cb, m, self.steps[s], n, dtype=g.dtype,
                      accumulate=acc, wait=(full, _lin(ub + 1, 1, looped)), signal=free)
        pe.nop(Engine.DPE, signal=self.a_free[ka][sa])

    # --- epilogue -------------------------------------------------------------------------------
    def _has_epilogue(self) -> bool:
        return self.g.has_bias or self.g.scaled or self.g.out_dtype != self.g.acc_dtype or bool(self.g.epilogue)

    def emit_epilogue(self, pe, jobs, real):
        """Per job, in place on the accumulator: + bias (or dequantize), the fused elementwise
        steps, round to the output dtype."""
        g, p = self.g, self.p
        if not self._has_epilogue():
            return
        tok = self._pe_tokens(pe)
        i_real = n_bias = 0
        last_n = None
        fused = bool(g.epilogue)
        fin = "fp32" if fused else g.out_dtype         # what the bias add / dequantization write
        done = tok["pre"] if fused else tok["ep"]
        fes = ISA_ITEMSIZE[fin]
        convert = fin != g.acc_dtype
        for t, job in enumerate(jobs):
            if not real[t]:
                continue
            m = self.m_tile(job[1])[1]
            n = self.n_tile(job[2])[1]
            cb = self.buf.c[i_real % p.cbufs]
            dp = (tok["dp"], i_real + 1)
            i_real += 1
            ready = (done, i_real)
            if g.scaled:
                if job[2] != last_n:
                    n_bias += 1
                    last_n = job[2]
                    if g.has_bias:
                        rows = min(BIAS_ROWS, p.mt, g.M)
                        pe.simd_unary("copy", self.buf.bias_raw, self.buf.bias32, rows * n, dtype=g.bias_dtype,
                                      out_dtype="fp32", wait=(tok["bias"], n_bias))
                self._dequantize(pe, cb, m, n, dp, (tok["scale"], n_bias), done, fin,
                                 (tok["res"], self._res_loads() * i_real))
            elif not g.has_bias:
                if convert:
                    pe.simd_unary("copy", cb, cb, m * n, dtype=g.acc_dtype, out_dtype=fin,
                                  wait=dp, signal=done)
                else:
                    ready = dp
            else:
                if job[2] != last_n:       # a new bias tile: widen it to the accumulator dtype
                    n_bias += 1
                    last_n = job[2]
                    rows = min(BIAS_ROWS, p.mt, g.M)
                    pe.simd_unary("copy", self.buf.bias_raw, self.buf.bias32, rows * n, dtype=g.bias_dtype,
                                  out_dtype=g.acc_dtype, wait=(tok["bias"], n_bias), signal=tok["bconv"])
                chunks = list(range(0, m, BIAS_ROWS))
                if g.acc_dtype == "int32":     # exact integer add on the reduction engine
                    pe.nop(Engine.REDUCE, wait=(tok["bconv"], n_bias))
                    for ci, r0 in enumerate(chunks):
                        last = ci == len(chunks) - 1
                        pe.re_acc(cb + r0 * n * 4, self.buf.bias32, min(BIAS_ROWS, m - r0) * n,
                                  dtype="int32", wait=dp if ci == 0 else None,
                                  signal=(tok["radd"] if convert else done) if last else None)
                    if convert:
                        pe.simd_unary("copy", cb, cb, m * n, dtype=g.acc_dtype, out_dtype=fin,
                                      wait=(tok["radd"], i_real), signal=done)
                else:
                    for ci, r0 in enumerate(chunks):
                        pe.simd_binary("add", cb + r0 * n * 4, self.buf.bias32, cb + r0 * n * fes,
                                       min(BIAS_ROWS, m - r0) * n, dtype="fp32", out_dtype=fin,
                                       wait=dp if ci == 0 else None,
                                       signal=done if ci == len(chunks) - 1 else None)
            if fused:
                self._fused_steps(pe, cb, m * n, ready, (tok["res"], self._res_loads() * i_real), tok["ep"])

    def _res_loads(self) -> int:
        """DMAs per job that signal the "res" token: residual tiles and the rows' scales."""
        return len(self.g.residuals) + int(self.g.row_scaled)

    def _fused_steps(self, pe, cb, count, ready, res_ready, done):
        """The fused elementwise steps on the fp32 tile at `cb` (after `ready`; the residual
        tiles after `res_ready`), the last one rounding to the output dtype."""
        g = self.g
        if g.residuals:
            pe.nop(Engine.SIMD, wait=res_ready)
        wait = ready
        k = 0
        for si, st in enumerate(g.epilogue):
            last = si == len(g.epilogue) - 1
            out = g.out_dtype if last else "fp32"
            signal = done if last else None
            if st.form == "unary":
                pe.simd_unary(st.fn, cb, cb, count, dtype="fp32", out_dtype=out, wait=wait, signal=signal)
            elif st.form == "scale":
                pe.simd_scalar("MUL", cb, cb, count, st.imm, dtype="fp32", out_dtype=out, wait=wait,
                               signal=signal)
            else:
                raw, wide = self.buf.res[k]
                k += 1
                if wide != raw:
                    pe.simd_unary("copy", raw, wide, count, dtype=st.dtype, out_dtype="fp32", wait=wait)
                    wait = None
                lhs, rhs = (cb, wide) if st.acc_first else (wide, cb)
                pe.simd_binary(st.fn, lhs, rhs, cb, count, dtype="fp32", out_dtype=out, wait=wait, signal=signal)
            wait = None

    def _dequantize(self, pe, cb, m, n, dp, scale_ready, done, out_dtype, rows_ready):
        """acc[m, n] (int32) -> fp32 (-> * s[m]) -> * d[n] (+ bias[n]) -> `out_dtype`, packed in
        place."""
        g = self.g
        oes = ISA_ITEMSIZE[out_dtype]
        pe.simd_unary("copy", cb, cb, m * n, dtype=g.acc_dtype, out_dtype="fp32", wait=dp)
        if g.row_scaled:
            pe.simd_row_bcast("MUL", cb, self.buf.row_scale, cb, m, n, dtype="fp32", out_dtype="fp32",
                              wait=rows_ready)
        chunks = list(range(0, m, BIAS_ROWS))
        for ci, r0 in enumerate(chunks):
            last = ci == len(chunks) - 1
            count = min(BIAS_ROWS, m - r0) * n
            src, dst = cb + r0 * n * 4, cb + r0 * n * oes
            wait = scale_ready if ci == 0 else None
            if g.has_bias:
                pe.simd_binary("MUL", src, self.buf.scale, src, count, dtype="fp32", out_dtype="fp32", wait=wait)
                pe.simd_binary("ADD", src, self.buf.bias32, dst, count, dtype="fp32", out_dtype=out_dtype,
                               signal=done if last else None)
            else:
                pe.simd_binary("MUL", src, self.buf.scale, dst, count, dtype="fp32", out_dtype=out_dtype,
                               wait=wait, signal=done if last else None)


class MatmulTemplate(KernelTemplate):
    """Tiled GEMM on the DPE: multicast operand sharing, double-buffered K loop, fused bias."""
    ops = ("matmul", "linear")

    def flops(self, call: KernelCall) -> int:
        g = _gemm(call)
        return 2 * g.batch * g.M * g.K * g.N + len(g.epilogue) * g.batch * g.M * g.N

    def accepts_epilogue(self, op: str, operands: list[Any], result: Any, step: tuple,
                         other: Any = None) -> bool:
        """Whether the epilogue can apply `step` (an `epilogue` entry: ("unary", kind, alpha,
        beta) or ("binary", kind, position, side)) to each output tile of this instance
        (operand/result TensorSpecs; `other`: a binary step's other operand). The epilogue
        computes in fp32, so an int32 accumulator must be dequantized first (operand 3)."""
        if tile_epilogue(step[0], step[1]) is None:
            return False
        x = operands[0]
        if x is not None and not x.is_float and not (len(operands) > 3 and operands[3] is not None):
            return False
        if step[0] == "binary":
            return other is not None and other.is_float and tuple(other.shape) == tuple(result.shape)
        return True

    def plans(self, call: KernelCall, chip: Any) -> Iterator[MatmulPlan]:
        g = _gemm(call)
        R, C = chip.pe_grid.rows, chip.pe_grid.cols
        ntile = chip.dpe.n_tile
        ktile = int(chip.dpe.macs_per_cycle[g.dtype]) // ntile
        cap = chip.local_mem.bytes
        layouts = [("rows", d) for d in range(1, R + 1) if R % d == 0]
        layouts += [("cols", d) for d in range(1, C) if C % d == 0]
        if g.batch > 1:
            layouts.append(("tiles", 1))

        def sizes(total, unit, mults, parts=(1, 2, 4, 8)):
            out = {min(unit * x, total) for x in mults}
            out |= {min(_cdiv(_cdiv(total, d), unit) * unit, total) for d in parts}
            return sorted(x for x in out if 0 < x <= unit * max(mults))

        mts = sizes(g.M, 8, (2, 4, 8, 16, 32, 64))
        nts = sizes(g.N, ntile, (1, 2, 4, 8, 16))
        kts = sizes(g.K, ktile, (1, 2, 4, 8, 16, 32), parts=())
        for lay in layouts:
            for mt in mts:
                for nt in nts:
                    for kt in kts:
                        for nbuf, cbufs in ((2, 1), (2, 2), (3, 1), (3, 2)):
                            p = MatmulPlan(lay[0], lay[1], mt, nt, kt, nbuf, cbufs)
                            if _Buffers(g, p).total <= cap:
                                yield p

    def predict(self, call: KernelCall, plan: MatmulPlan, chip: Any) -> int:
        return _predict(call, _gemm(call), plan, chip)

    def choose(self, call: KernelCall, chip: Any) -> MatmulPlan:
        g = _gemm(call)
        rt = _Rates(chip)
        memo: dict = {}
        best, best_c = None, math.inf
        for p in self.plans(call, chip):
            c = _predict(call, g, p, chip, rt, memo, best_c)
            if c < best_c:
                best, best_c = p, c
        if best is None:
            return super().choose(call, chip)
        return best

    def emit(self, call: KernelCall, plan: MatmulPlan, chip: Any, builder: Any) -> None:
        g = _gemm(call)
        _Emitter(call, g, plan, chip, builder).run()


register_kernel(MatmulTemplate())
