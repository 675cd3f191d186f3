"""Convolution kernel template for `ember.conv` (1-D and 2-D, grouped, strided, dilated, padded,
optional bias) as an implicit GEMM on the dot-product engine.

Per image n and group g the convolution is a GEMM

    Y[n, g*Og + o, p] = sum_k W[g*Og + o, k] * X_cols[k, p]     k = (c, i, j), p = (oh, ow)

with M = output channels of the group (Og), K = C/groups * kh * kw and N = output pixels. The
weight is the GEMM's A operand as it lies in memory ([O, C/g*kh*kw] row major), and the output
tile [o, p] is a block of the NCHW result, so neither needs a layout change.

Shape of the schedule (one plan):

* Jobs are (image, group, ``mt`` output channels, ``nr`` whole output rows). With ``share``
  1, PE q runs jobs q, q + P, q + 2P, ... and fetches its own weight tiles. With ``share`` R
  (the PE rows), a PE column runs a weight tile on R row tiles at once, one per PE, and each
  PE fetches a block of the tile's rows and multicasts it down the column, so the weights
  cross memory once per column instead of once per PE (a PE past the last row tile only
  fetches and releases its block). Inside a job, K is walked ``cc`` input channels at a
  time through ``nbuf`` alternating local buffers, so the DMA and the memory layout unit (MLU)
  prepare step s + 1 while the DPE multiplies step s.
* Per step the DMA engine loads the weight tile [mt, cc*kh*kw] (or its block of it; one
  strided DMA) and an input slab [cc, rows, W] holding the input rows the job's output rows
  read (one DMA when the slab rows are whole input rows, else one per channel).
* The MLU builds the patch matrix [cc*kh*kw, nr*OW] from the slab with strided 2-D copies,
  one per tap and output row (over channels) or per tap and channel (over output rows),
  whichever is fewer: a tap's output rows are slab rows ``sh`` apart. A horizontal stride
  first splits the slab into its ``sw`` column phases (one strided copy per phase), after
  which a tap's pixels are contiguous again. Zero padding: slab rows above or below the input
  are copied from a zero tile; pixels whose tap falls left or right of the input are never
  written, and stay at the zeros each patch buffer is cleared to before its first use.
  1x1 convolutions with stride 1 and no padding skip the MLU: the slab is the patch matrix.
* The DPE accumulates in fp32 into [mt, nr*OW]; the epilogue on the SIMD engine adds the bias
  per output channel and rounds to the output dtype in place; a strided DMA stores the tile.
  ``cbufs`` accumulators let the next job's DPE run while the epilogue and store drain.
* Full K steps are emitted as `PEStream.repeat` blocks, so a program grows with the jobs, not
  with C.

`predict` models the busiest PE as a software pipeline of the three stages (DMA, MLU, DPE),
each step bounded by the slowest stage and by the buffers' round trip; see `_predict`.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ops.kernel import (
    ISA_DTYPE,
    ISA_ITEMSIZE,
    KernelCall,
    KernelTemplate,
    LocalArena,
    Placement,
    local_bytes,
    register_kernel,
    streaming_dma_cycles,
)
from ops.kernels.matmul import ACC_DTYPE, _cdiv, _lin, _Rates
from simulator.isa import Engine

ALIGN = 64


@dataclass(frozen=True)
class ConvPlan:
    """One tiling: output channels per job, output rows per job, input channels per K step,
    buffering of the K loop and of the accumulator."""
    mt: int
    nr: int
    cc: int
    nbuf: int = 2
    cbufs: int = 1
    share: int = 1       # PEs of a column that fetch each weight tile together (1: each PE alone)

    def __str__(self) -> str:
        shared = f" shared/{self.share}" if self.share > 1 else ""
        return f"{self.mt}ch x {self.nr}rows, {self.cc}ch/step b{self.nbuf}c{self.cbufs}{shared}"


@dataclass(frozen=True)
class _Geom:
    """The call's convolution in 2-D terms (a 1-D convolution is one with H = kh = 1)."""
    N: int
    C: int
    H: int
    W: int
    O: int
    G: int
    kh: int
    kw: int
    sh: int
    sw: int
    ph: int
    pw: int
    dh: int
    dw: int
    OH: int
    OW: int
    dtype: str
    out_dtype: str
    has_bias: bool

    @property
    def Cg(self) -> int:
        return self.C // self.G

    @property
    def Og(self) -> int:
        return self.O // self.G

    @property
    def es(self) -> int:
        return ISA_ITEMSIZE[self.dtype]

    @property
    def taps(self) -> int:
        return self.kh * self.kw

    @property
    def Ws(self) -> int:
        """Slab row length: whole input rows, rounded up to a multiple of the stride so that
        the column phases of all rows are one strided copy each."""
        return _cdiv(self.W, self.sw) * self.sw

    @property
    def direct(self) -> bool:
        """1x1, stride 1, no padding: the input slab is the patch matrix itself."""
        return (self.kh, self.kw, self.sh, self.sw, self.ph, self.pw) == (1, 1, 1, 1, 0, 0)

    def ow_range(self, j: int) -> tuple[int, int]:
        """Output columns [a, b) whose tap j lands inside the input."""
        off = j * self.dw - self.pw
        a = max(0, _cdiv(-off, self.sw))
        b = min(self.OW, (self.W - 1 - off) // self.sw + 1)
        return a, max(a, b)

    @property
    def phases(self) -> list[int]:
        """Column phases (mod sw) that some tap reads."""
        return sorted({(j * self.dw - self.pw) % self.sw for j in range(self.kw)})

    @property
    def clipped(self) -> bool:
        """Whether some tap misses the input for some output column (horizontal padding)."""
        return any(self.ow_range(j) != (0, self.OW) for j in range(self.kw))


def _geom(call: KernelCall) -> _Geom:
    x, w = call.inputs[0], call.inputs[1]
    a = call.attrs
    stride, padding, dilation = list(a["stride"]), list(a["padding"]), list(a["dilation"])
    if len(x.shape) == 3:          # 1-D: one input row
        N, C, W = x.shape
        H, kh, kw = 1, 1, w.shape[2]
        (sw,), (pw,), (dw,) = stride, padding, dilation
        sh, ph, dh = 1, 0, 1
        OH, OW = 1, call.output.shape[2]
    else:
        N, C, H, W = x.shape
        kh, kw = w.shape[2:]
        sh, sw = stride
        ph, pw = padding
        dh, dw = dilation
        OH, OW = call.output.shape[2:]
    has_bias = len(call.inputs) > 2 and call.inputs[2] is not None
    return _Geom(N, C, H, W, w.shape[0], int(a["groups"]), kh, kw, sh, sw, ph, pw, dh, dw, OH, OW,
                 x.dtype, call.output.dtype, has_bias)


@dataclass(frozen=True)
class RowTile:
    """Output rows [oh0, oh0 + rows) of a windowed op and the input slab they read: `rows_in`
    rows from `ih0`, the first `ztop` and last `zbot` of them outside the input (padding)."""
    oh0: int
    rows: int
    ih0: int
    rows_in: int
    ztop: int
    zbot: int

    @property
    def valid(self) -> int:
        return self.rows_in - self.ztop - self.zbot

    @staticmethod
    def of(oh0: int, rows: int, H: int, kh: int, sh: int, ph: int, dh: int) -> dict:
        """The fields of the tile of `rows` output rows from `oh0` (kernel kh, stride sh,
        padding ph, dilation dh over an input of H rows)."""
        ih0 = oh0 * sh - ph
        rows_in = (rows - 1) * sh + (kh - 1) * dh + 1
        ztop = min(rows_in, max(0, -ih0))
        zbot = min(rows_in - ztop, max(0, ih0 + rows_in - H))
        return {"oh0": oh0, "rows": rows, "ih0": ih0, "rows_in": rows_in, "ztop": ztop, "zbot": zbot}


def _row_tile(geo: _Geom, nr: int, pi: int) -> RowTile:
    oh0 = pi * nr
    return RowTile(**RowTile.of(oh0, min(nr, geo.OH - oh0), geo.H, geo.kh, geo.sh, geo.ph, geo.dh))


def emit_fill_tile(pe, src: Placement, raw: int, dst: int, elems: int, value: float, dtype: str,
                   signal: int) -> None:
    """`elems` copies of `value` (as `dtype`) at `dst` in local memory, with no immediate-load
    command: bytes of `src` read as int8 into `raw` (`elems` bytes) are finite whatever they
    hold, so times 0 they are 0. Signals `signal` twice (DMA, then SIMD)."""
    n = min(src.nbytes, elems)
    pe.dma(src.space, src.addr, "local", raw, rows=_cdiv(elems, n), row_bytes=n, src_stride=0,
           dst_stride=n, signal=signal)
    if value:
        pe.simd_scalar("MUL", raw, dst, elems, 0.0, dtype="int8", out_dtype="fp32", wait=(signal, 1))
        pe.simd_scalar("ADD", dst, dst, elems, value, dtype="fp32", out_dtype=dtype, signal=signal)
    else:
        pe.simd_scalar("MUL", raw, dst, elems, 0.0, dtype="int8", out_dtype=dtype, wait=(signal, 1),
                       signal=signal)


@dataclass(frozen=True)
class _Copy:
    """One MLU strided copy inside local memory (offsets from the slab, phase, patch and zero
    buffers' bases are resolved by the caller)."""
    src: tuple[str, int]
    dst: tuple[str, int]
    rows: int
    row_bytes: int
    src_stride: int
    dst_stride: int


def _im2col(geo: _Geom, t: RowTile, ccs: int, nt: int) -> list[_Copy]:
    """The MLU copies that turn a slab of `ccs` channels into the patch matrix [ccs*kh*kw, nt]."""
    es, Ws = geo.es, geo.Ws
    chan = t.rows_in * Ws * es
    out: list[_Copy] = []
    if t.ztop:
        out.append(_Copy(("zero", 0), ("slab", 0), ccs, t.ztop * Ws * es, 0, chan))
    if t.zbot:
        out.append(_Copy(("zero", 0), ("slab", (t.rows_in - t.zbot) * Ws * es), ccs, t.zbot * Ws * es, 0, chan))
    Wq = Ws // geo.sw
    plane = ccs * t.rows_in * Wq * es      # one column phase of the slab
    if geo.sw > 1:
        for b in geo.phases:
            out.append(_Copy(("slab", b * es), ("phase", b * plane), ccs * t.rows_in * Wq, es, geo.sw * es, es))
    chan = t.rows_in * Wq * es            # a channel's rows in the slab (or in one phase)
    by_rows = t.rows <= ccs                  # one copy per output row (over channels), or per channel
    for i in range(geo.kh):
        for j in range(geo.kw):
            a, e = geo.ow_range(j)
            if a >= e:
                continue
            off = j * geo.dw - geo.pw
            b = off % geo.sw
            col = a + (off - b) // geo.sw
            base = b * plane if geo.sw > 1 else 0
            space = "phase" if geo.sw > 1 else "slab"
            k = i * geo.kw + j
            if by_rows:
                for r in range(t.rows):
                    src = base + ((r * geo.sh + i * geo.dh) * Wq + col) * es
                    out.append(_Copy((space, src), ("patch", (k * nt + r * geo.OW + a) * es), ccs,
                                     (e - a) * es, chan, geo.taps * nt * es))
            else:
                for c in range(ccs):
                    src = base + c * chan + (i * geo.dh * Wq + col) * es
                    out.append(_Copy((space, src), ("patch", ((c * geo.taps + k) * nt + a) * es), t.rows,
                                     (e - a) * es, geo.sh * Wq * es, geo.OW * es))
    return out


def _clears(geo: _Geom, p: ConvPlan, chip: Any) -> list[_Copy]:
    """The MLU copies from the zero tile that clear what the patch copies never write: the
    pixels a tap misses left or right of the input, per tap and output row over the channels,
    and the columns past the last (short) row tile; or the whole buffer when that is cheaper."""
    es, nt, OW = geo.es, p.nr * geo.OW, geo.OW
    out = []
    for k in range(geo.taps):
        a, e = geo.ow_range(k % geo.kw)
        lo = min(a, OW)
        hi = max(min(e, OW), lo)
        for r in range(p.nr):
            for c0, c1 in ((0, lo), (hi, OW)):
                if c1 > c0:
                    out.append(_Copy(("zero", 0), ("patch", (k * nt + r * OW + c0) * es), p.cc, (c1 - c0) * es, 0,
                                     geo.taps * nt * es))
    short = geo.OH % p.nr * OW
    if short:
        out.append(_Copy(("zero", 0), ("patch", short * es), p.cc * geo.taps, (nt - short) * es, 0, nt * es))
    whole = [_Copy(("zero", 0), ("patch", 0), p.cc * geo.taps, nt * es, 0, nt * es)]

    def cycles(copies):
        return sum(_cdiv(c.rows * c.row_bytes, chip.mlu.bytes_per_cycle) + chip.mlu.latency_cycles for c in copies)

    return out if cycles(out) < cycles(whole) else whole


class _Buffers:
    """Local-memory map of one plan (the same on every PE)."""

    def __init__(self, geo: _Geom, p: ConvPlan):
        es, nt = geo.es, p.nr * geo.OW
        kt = p.cc * geo.taps
        rows_in = _row_tile(geo, p.nr, 0).rows_in
        arena = LocalArena(ALIGN)
        self.a = [arena.take(p.mt * kt * es) for _ in range(p.nbuf)]
        self.slab_bytes = p.cc * rows_in * geo.Ws * es
        if geo.direct:
            self.patch = [arena.take(kt * nt * es) for _ in range(p.nbuf)]
            self.slab = self.patch
            self.phase = 0
        else:
            self.slab = [arena.take(self.slab_bytes) for _ in range(p.nbuf)]
            self.phase = arena.take(self.slab_bytes) if geo.sw > 1 else 0
            self.patch = [arena.take(kt * nt * es) for _ in range(p.nbuf)]
        self.acc = [arena.take(p.mt * nt * 4) for _ in range(p.cbufs)]
        self.zero_elems = self.zero_elems_of(geo, p)
        self.zero = arena.take(self.zero_elems * es)
        self.zero_raw = arena.take(self.zero_elems)          # int8 scratch it is made from
        self.bias_raw = self.bias32 = 0
        if geo.has_bias:
            self.bias_raw = arena.take(geo.O * es)
            self.bias32 = arena.take(geo.O * 4)
        self.total = arena.end

    @staticmethod
    def zero_elems_of(geo: _Geom, p: ConvPlan) -> int:
        """Elements of the zero tile: a patch row, or the most slab rows a tile pads with."""
        first, last = _row_tile(geo, p.nr, 0), _row_tile(geo, p.nr, _cdiv(geo.OH, p.nr) - 1)
        # the first tile starts highest; no tile reaches lower than the last one
        zrows = max(first.ztop, min(first.rows_in, last.ih0 + last.rows_in - geo.H), 1)
        return max(p.nr * geo.OW, zrows * geo.Ws)

    def at(self, ref: tuple[str, int], slot: int) -> int:
        name, off = ref
        base = {"zero": self.zero, "slab": self.slab[slot], "phase": self.phase,
                "patch": self.patch[slot]}[name]
        return base + off


def _jobs(geo: _Geom, p: ConvPlan) -> list[tuple[int, int, int, int]]:
    """(image, group, output-channel tile, row tile) of every job, in order."""
    return [(n, g, oi, pi) for n in range(geo.N) for g in range(geo.G)
            for oi in range(_cdiv(geo.Og, p.mt)) for pi in range(_cdiv(geo.OH, p.nr))]


def _k_steps(geo: _Geom, p: ConvPlan) -> list[int]:
    """Input channels of each K step."""
    return [min(p.cc, geo.Cg - c0) for c0 in range(0, geo.Cg, p.cc)]


def _inits(geo: _Geom, p: ConvPlan) -> tuple[bool, bool]:
    """Whether the patch buffers and the slabs need clearing before the first step."""
    short = geo.OH % p.nr != 0
    return short or (geo.clipped and not geo.direct), geo.Ws != geo.W and not geo.direct


# --- the cost model ---------------------------------------------------------------------------

def _mlu_cycles(geo: _Geom, t: RowTile, ccs: int, rt: _Rates) -> int:
    """MLU cycles of one step's copies (`_im2col`), counted per tap rather than per copy."""
    es, Ws = geo.es, geo.Ws

    def copy(nbytes):
        return _cdiv(nbytes, rt.mlu) + rt.mlu_lat

    cyc = sum(copy(ccs * z * Ws * es) for z in (t.ztop, t.zbot) if z)
    if geo.sw > 1:
        cyc += len(geo.phases) * copy(ccs * t.rows_in * Ws // geo.sw * es)
    for j in range(geo.kw):
        a, e = geo.ow_range(j)
        if a < e:
            cyc += min(ccs, t.rows) * geo.kh * copy(max(ccs, t.rows) * (e - a) * es)
    return cyc


def _slab_dmas(geo: _Geom, t: RowTile, ccs: int) -> list[int]:
    """Bytes of each DMA that loads one step's slab."""
    if t.valid <= 0:
        return []
    if geo.Ws == geo.W:
        return [ccs * t.valid * geo.W * geo.es]
    return [t.valid * geo.W * geo.es] * ccs


def _predict(call: KernelCall, geo: _Geom, p: ConvPlan, chip: Any, rt: _Rates | None = None) -> int:
    """Cycles of a plan: the busiest PE's jobs, each a software pipeline of its K steps.

    A step's three stages are the DMA queue (this PE's weight tile, or its share of one, and
    its slab, each at the rate a PE gets while every busy PE streams: `streaming_dma_cycles`),
    the MLU (patch copies) and the DPE. With ``nbuf`` buffers a step takes max(slowest stage,
    (DMA + MLU + DPE) / nbuf); a PE's first step waits for its whole chain (after the zero
    tile, when one is needed). Between jobs the DPE waits for the accumulator's epilogue and
    store when ``cbufs`` is 1. The run ends with the last epilogue and store; no run is faster
    than its bytes over the memories. PEs that share weight tiles run in step, so a column
    goes at the pace of its first row's jobs.
    """
    rt = rt or _Rates(chip)
    R, C = chip.pe_grid.rows, chip.pe_grid.cols
    n_o, n_r = _cdiv(geo.Og, p.mt), _cdiv(geo.OH, p.nr)
    n_jobs = geo.N * geo.G * n_o * n_r
    if p.share == 1:
        active = min(R * C, n_jobs)
        last = (n_jobs - 1) % (R * C)                  # the PE with the last job
    else:
        n_vb = _cdiv(geo.N * n_r, R)
        units = geo.G * n_o * n_vb
        active = R * min(C, units)
        last = (units - 1) % C                        # row 0 of the column with the last unit
    es, oes = geo.es, ISA_ITEMSIZE[geo.out_dtype]
    nt = p.nr * geo.OW
    x, w, o = call.inputs[0], call.inputs[1], call.output
    full, rem = divmod(geo.Cg, p.cc)
    groups = [(p.cc, full)] * (full > 0) + [(rem, 1)] * (rem > 0)      # (channels, steps)
    lat = chip.dma.latency_cycles + chip.noc.hop_latency_cycles * chip.pe_grid.rows
    memo: dict = {}

    def dma(nbytes, space):
        return streaming_dma_cycles(nbytes, space, active, chip)

    def job_cost(m: int, pi: int | None) -> tuple[float, float, float, float, dict]:
        """(steady time of the job's steps, its first step's chain, epilogue, store, and the
        bytes of this PE's part of its weight tiles)."""
        key = (m, pi)
        if key in memo:
            return memo[key]
        total, first = 0.0, (0.0, 0.0)
        by = {"dram": 0, "sram": 0}
        part = _cdiv(m, p.share)
        t = None if pi is None else _row_tile(geo, p.nr, pi)
        for gi, (ccs, count) in enumerate(groups):
            k = ccs * geo.taps
            d = dma(part * k * es, w.space)
            by[w.space] += count * part * k * es
            if t is not None:
                slab = _slab_dmas(geo, t, ccs)
                d += sum(dma(b, x.space) for b in slab) if slab else chip.dma.latency_cycles
                mlu = 0 if geo.direct else _mlu_cycles(geo, t, ccs, rt)
                dpe = rt.dpe(m, k, nt, geo.dtype)
                total += count * max(d, mlu, dpe, (d + mlu + dpe) / p.nbuf)
                if gi == 0:
                    first = (d, mlu)
        epi = store = 0.0
        if t is not None:
            if geo.has_bias:
                epi = m * _cdiv(nt, rt.simd) + rt.simd_lat
            elif geo.out_dtype != ACC_DTYPE[geo.dtype]:
                epi = _cdiv(m * nt, rt.simd) + rt.simd_lat
            store = dma(m * t.rows * geo.OW * oes, o.space)
        memo[key] = (total, first, epi, store, by)
        return memo[key]

    # before the first step: the zero tile, the buffers cleared with it (the slabs and, 1x1
    # convolutions, the patch buffers before the DMA writes them; else each patch buffer on the
    # MLU before its first patch)
    init_patch, init_slab = _inits(geo, p)
    zero_ready = 0.0
    if init_patch or init_slab or any(t.ztop or t.zbot for t in (_row_tile(geo, p.nr, 0),
                                                                  _row_tile(geo, p.nr, n_r - 1))):
        zero = _Buffers.zero_elems_of(geo, p)
        zero_ready = dma(zero, x.space) + _cdiv(zero, rt.simd) + rt.simd_lat
    kt = p.cc * geo.taps
    before_dma = zero_ready if init_slab or (geo.direct and init_patch) else 0.0
    before_dma += p.nbuf * init_slab * (_cdiv(p.cc * nt * es, rt.mlu) + rt.mlu_lat)
    if geo.direct:
        before_dma += p.nbuf * init_patch * (_cdiv(kt * nt * es, rt.mlu) + rt.mlu_lat)
    before_mlu = max(before_dma, zero_ready)
    if init_patch and not geo.direct:
        before_mlu += sum(_cdiv(c.rows * c.row_bytes, rt.mlu) + rt.mlu_lat for c in _clears(geo, p, chip))

    def first_chain(first):
        d, mlu = first
        return max(before_dma + d, before_mlu) + mlu

    # the busiest PE: the first one (the most jobs) or the one with the last (edge) jobs; PEs
    # that share weight tiles go at the pace of their column's first row
    worst = 0.0
    for q in sorted({0, last}):
        tm = 0.0
        lead = _jobs_of(geo, p, R, C, q)
        for idx, (_, oi, _, pi) in enumerate(lead):
            steady, first, epi, store, _ = job_cost(min(p.mt, geo.Og - oi * p.mt), pi)
            tm += steady
            if idx == 0:
                tm += first_chain(first)
            elif p.cbufs == 1:       # the DPE waits for the previous accumulator to drain
                tm += epi + store
        worst = max(worst, tm + epi + store)
    # bytes: every job's weights (shared: once per column and unit) and slab, and the output
    by = {"dram": 0.0, "sram": 0.0}
    fetches = geo.N * n_r if p.share == 1 else n_vb * R      # weight-tile fetches per tile, by part
    for oi in range(n_o):
        for space, b in job_cost(min(p.mt, geo.Og - oi * p.mt), None)[4].items():
            by[space] += b * geo.G * fetches
    for pi in range(n_r):
        t = _row_tile(geo, p.nr, pi)
        by[x.space] += geo.N * geo.G * n_o * sum(count * sum(_slab_dmas(geo, t, ccs)) for ccs, count in groups)
    by[o.space] += geo.N * geo.O * geo.OH * geo.OW * oes
    mem = max(by["dram"] / rt.dram, by["sram"] / rt.sram) + lat
    return int(max(worst + lat, mem))


def _dpe_floor(geo: _Geom, p: ConvPlan, chip: Any, rt: _Rates) -> float:
    """A lower bound of `_predict`: the busiest PE's (or sharing column's) count of jobs, each
    at least the DPE time of the narrowest output-channel tile."""
    R, C = chip.pe_grid.rows, chip.pe_grid.cols
    n_o, n_r = _cdiv(geo.Og, p.mt), _cdiv(geo.OH, p.nr)
    if p.share == 1:
        per_pe = _cdiv(geo.N * geo.G * n_o * n_r, R * C)
    else:
        per_pe = _cdiv(geo.G * n_o * _cdiv(geo.N * n_r, R), C)
    m = min(p.mt, geo.Og - (n_o - 1) * p.mt)
    full, rem = divmod(geo.Cg, p.cc)
    job = full * rt.dpe(m, p.cc * geo.taps, p.nr * geo.OW, geo.dtype)
    if rem:
        job += rt.dpe(m, rem * geo.taps, p.nr * geo.OW, geo.dtype)
    return per_pe * job


# --- emission ---------------------------------------------------------------------------------

def _jobs_of(geo: _Geom, p: ConvPlan, R: int, C: int, q: int) -> list[tuple]:
    """The jobs of PE q in order, as (group, output-channel tile, image, row tile).

    ``share`` 1: jobs round robin over the PEs. ``share`` R: work units (a weight tile, R row
    tiles) round robin over the PE columns, the unit's row tiles one per PE of the column, so a
    column's PEs run jobs on the same weight tiles in step; a PE past the last row tile gets
    (group, tile, None, None): it only takes part in fetching the column's weights.
    """
    n_o, n_r = _cdiv(geo.Og, p.mt), _cdiv(geo.OH, p.nr)
    if p.share == 1:
        out = []
        for j in range(q, geo.N * geo.G * n_o * n_r, R * C):
            rest, pi = divmod(j, n_r)
            rest, oi = divmod(rest, n_o)
            n, g = divmod(rest, geo.G)
            out.append((g, oi, n, pi))
        return out
    r, c = divmod(q, C)
    n_vb = _cdiv(geo.N * n_r, R)
    out = []
    for w in range(c, geo.G * n_o * n_vb, C):
        u, vb = divmod(w, n_vb)
        g, oi = divmod(u, n_o)
        j = vb * R + r
        out.append((g, oi) + (divmod(j, n_r) if j < geo.N * n_r else (None, None)))
    return out


class _Emitter:
    def __init__(self, call: KernelCall, geo: _Geom, p: ConvPlan, chip, builder):
        self.call, self.geo, self.p, self.chip, self.b = call, geo, p, chip, builder
        self.R, self.C = chip.pe_grid.rows, chip.pe_grid.cols
        self.buf = _Buffers(geo, p)
        self.steps = _k_steps(geo, p)
        self.nk = len(self.steps)
        self.nt = p.nr * geo.OW
        self.tiles = [_row_tile(geo, p.nr, i) for i in range(_cdiv(geo.OH, p.nr))]

    def run(self) -> None:
        b, p = self.b, self.p
        pe_jobs = [_jobs_of(self.geo, p, self.R, self.C, q) for q in range(self.R * self.C)]
        # weight-tile tokens per sharing group (a PE, or a PE column): "full" counts the parts
        # fetched, "free" the consumers done with a slot
        self.a_full, self.a_free = {}, {}
        for q in range(self.R * self.C):
            key = self.group(q)
            if key not in self.a_full:
                self.a_full[key] = [b.token() for _ in range(p.nbuf)]
                self.a_free[key] = [b.token() for _ in range(p.nbuf)]
        for q, jobs in enumerate(pe_jobs):
            if jobs:
                self.emit_pe(q, jobs)

    def group(self, q: int):
        return ("pe", q) if self.p.share == 1 else ("col", q % self.C)

    def emit_pe(self, q: int, jobs) -> None:
        b, p = self.b, self.p
        pe = b.pe(q)
        tok = {name: b.token() for name in ("zero", "bias", "dp", "ep", "st")}
        for name in ("ld_s", "mlu", "dpe"):
            tok[name] = [b.token() for _ in range(p.nbuf)]
        self.tok = tok
        self.part = q // self.C if p.share > 1 else 0     # which rows of a weight tile this PE fetches
        self.a_full_pe, self.a_free_pe = self.a_full[self.group(q)], self.a_free[self.group(q)]
        real = [j for j in jobs if j[2] is not None]
        if real:
            self.emit_setup(pe)
        self.emit_dma(pe, jobs)
        if real and not self.geo.direct:
            self.emit_mlu(pe, real)
        self.emit_dpe(pe, jobs)
        if real:
            self.emit_epilogue(pe, real)

    # --- setup: the zero tile, cleared patch buffers, the bias in fp32 ------------------------
    def emit_setup(self, pe) -> None:
        geo, buf, tok, p = self.geo, self.buf, self.tok, self.p
        x = self.call.inputs[0]
        es, nt = geo.es, self.nt
        init_patch, init_slab = _inits(geo, p)
        if init_patch or init_slab or any(t.ztop or t.zbot for t in self.tiles):
            emit_fill_tile(pe, x, buf.zero_raw, buf.zero, buf.zero_elems, 0.0, geo.dtype, tok["zero"])
            pe.nop(Engine.MLU, wait=(tok["zero"], 2))
        # patch buffers start as zeros: pixels whose taps miss the input are never written, and
        # columns past a short row tile are multiplied but not stored
        for slot in range(p.nbuf):
            if init_patch and geo.direct:     # (else the MLU clears each slot before its first use)
                pe.mlu_copy2d(buf.zero, buf.patch[slot], p.cc * geo.taps, nt * es, src_stride=0,
                              dst_stride=nt * es)
            if init_slab:      # slab columns past the input are read by the phase split
                pe.mlu_copy2d(buf.zero, buf.slab[slot], buf.slab_bytes // (geo.Ws * es), geo.Ws * es,
                              src_stride=0, dst_stride=geo.Ws * es)
        if geo.direct and init_patch or init_slab:   # the DMA writes these buffers next
            pe.nop(Engine.MLU, signal=tok["zero"])
            pe.nop(Engine.DMA, wait=(tok["zero"], 3))
        if geo.has_bias:
            bias = self.call.inputs[2]
            pe.dma(bias.space, bias.addr, "local", buf.bias_raw, nbytes=geo.O * es, signal=tok["bias"])
            pe.simd_unary("copy", buf.bias_raw, buf.bias32, geo.O, dtype=geo.dtype, out_dtype="fp32",
                          wait=(tok["bias"], 1))

    # --- helpers ----------------------------------------------------------------------------
    def m_of(self, oi: int) -> int:
        return min(self.p.mt, self.geo.Og - oi * self.p.mt)

    def _steps(self, pe, s0: int, s1: int, emit_step, first_plain: bool = False) -> None:
        """emit_step(s, looped) for steps s0..s1-1: whole groups of nbuf full-size steps as one
        repeat block (operands advance per iteration), the rest plain."""
        p = self.p
        s = s0
        if first_plain and s < s1:
            emit_step(s, False)
            s += 1
        nfull = sum(1 for x in range(s, s1) if self.steps[x] == p.cc)
        n_iter = nfull // p.nbuf
        if n_iter >= 2:
            with pe.repeat(n_iter):
                for j in range(p.nbuf):
                    emit_step(s + j, True)
            s += n_iter * p.nbuf
        for s in range(s, s1):  # noqa: B020 (the plain tail after the loop)
            emit_step(s, False)

    def _wait(self, token, use: int, looped: bool):
        if looped:
            return (token, _lin(use, 1, True))
        return (token, use) if use else None

    # --- DMA queue ----------------------------------------------------------------------------
    def emit_dma(self, pe, jobs) -> None:
        p = self.p
        qa = qr = 0              # steps so far: all (weight slots), of real jobs (slab/patch slots)
        pending = None           # (job, index among real jobs) whose store is still to emit
        n_real = 0
        for job in jobs:
            real = job[2] is not None
            head = min(p.nbuf, self.nk) if pending is not None else self.nk

            def load(s, looped, job=job, qa=qa, qr=qr, real=real):
                if real:
                    self._load_slab(pe, job, s, qr + s, looped)
                self._load_weights(pe, job, s, qa + s, looped)

            self._steps(pe, 0, head, load)
            if pending is not None:
                self._store(pe, *pending)
                pending = None
            self._steps(pe, head, self.nk, load)
            qa += self.nk
            if real:
                qr += self.nk
                pending = (job, n_real)
                n_real += 1
        if pending is not None:
            self._store(pe, *pending)

    def _load_slab(self, pe, job, s, q, looped) -> None:
        geo, p, buf, tok = self.geo, self.p, self.buf, self.tok
        g, _, n, pi = job
        es = geo.es
        slot, use = q % p.nbuf, q // p.nbuf
        stride_iter = p.nbuf * p.cc          # channels a loop iteration advances
        c0 = s * p.cc
        ccs = self.steps[s]
        t = self.tiles[pi]
        x = self.call.inputs[0]
        # the valid input rows of ccs channels, behind the MLU's (or DPE's) use of the slot
        free = tok["dpe"] if geo.direct else tok["mlu"]
        wait = self._wait(free[slot], use, looped)
        src = x.addr + ((n * geo.C + g * geo.Cg + c0) * geo.H * geo.W + (t.ih0 + t.ztop) * geo.W) * es
        chan = geo.H * geo.W * es
        dst = buf.slab[slot] + t.ztop * geo.Ws * es
        if t.valid <= 0:
            pe.nop(Engine.DMA, wait=wait, signal=tok["ld_s"][slot])
        elif geo.Ws == geo.W:
            pe.dma(x.space, _lin(src, stride_iter * chan, looped), "local", dst, rows=ccs,
                   row_bytes=t.valid * geo.W * es, src_stride=chan,
                   dst_stride=self.nt * es if geo.direct else t.rows_in * geo.W * es,
                   wait=wait, signal=tok["ld_s"][slot])
        else:
            for c in range(ccs):
                pe.dma(x.space, _lin(src + c * chan, stride_iter * chan, looped), "local",
                       dst + c * t.rows_in * geo.Ws * es, rows=t.valid, row_bytes=geo.W * es,
                       src_stride=geo.W * es, dst_stride=geo.Ws * es, wait=wait if c == 0 else None,
                       signal=tok["ld_s"][slot] if c == ccs - 1 else None)

    def _load_weights(self, pe, job, s, q, looped) -> None:
        """This PE's part of the weight tile [m, ccs*kh*kw] of step s: all of it, or (shared) a
        block of its rows, multicast down the PE column."""
        geo, p, buf = self.geo, self.p, self.buf
        g, oi = job[0], job[1]
        es = geo.es
        slot, use = q % p.nbuf, q // p.nbuf
        m = self.m_of(oi)
        per = _cdiv(m, p.share)
        r0, r1 = min(m, self.part * per), min(m, (self.part + 1) * per)
        k = self.steps[s] * geo.taps
        kk = geo.Cg * geo.taps
        w = self.call.inputs[1]
        wait = (self.a_free_pe[slot], _lin(p.share * use, p.share, looped)) if use or looped else None
        if r1 <= r0:
            pe.nop(Engine.DMA, wait=wait, signal=self.a_full_pe[slot])
            return
        src = w.addr + ((g * geo.Og + oi * p.mt + r0) * kk + s * p.cc * geo.taps) * es
        pe.dma(w.space, _lin(src, p.nbuf * p.cc * geo.taps * es, looped), "local", buf.a[slot] + r0 * k * es,
               rows=r1 - r0, row_bytes=k * es, src_stride=kk * es, dst_pe=pe.pe,
               mcast="col" if p.share > 1 else "none", wait=wait, signal=self.a_full_pe[slot])

    def _store(self, pe, job, i) -> None:
        geo, p, buf, tok = self.geo, self.p, self.buf, self.tok
        g, oi, n, pi = job
        t = self.tiles[pi]
        o = self.call.output
        oes = ISA_ITEMSIZE[geo.out_dtype]
        has_epi = geo.has_bias or geo.out_dtype != ACC_DTYPE[geo.dtype]
        wait = (tok["ep"], i + 1) if has_epi else (tok["dp"], i + 1)
        plane = geo.OH * geo.OW
        dst = o.addr + ((n * geo.O + g * geo.Og + oi * p.mt) * plane + t.oh0 * geo.OW) * oes
        pe.dma("local", buf.acc[i % p.cbufs], o.space, dst, rows=self.m_of(oi), row_bytes=t.rows * geo.OW * oes,
               src_stride=self.nt * oes, dst_stride=plane * oes, wait=wait, signal=tok["st"])

    # --- MLU queue ----------------------------------------------------------------------------
    def emit_mlu(self, pe, jobs) -> None:
        geo, p, buf, tok = self.geo, self.p, self.buf, self.tok
        clear = _inits(geo, p)[0] and not geo.direct
        q0 = 0
        for job in jobs:
            t = self.tiles[job[3]]

            def step(s, looped, q0=q0, t=t):
                q = q0 + s
                slot, use = q % p.nbuf, q // p.nbuf
                # the patch slot is free once the DPE has used it
                pe.nop(Engine.MLU, wait=self._wait(tok["dpe"][slot], use, looped))
                for c in _clears(geo, p, self.chip) if clear and q < p.nbuf else ():   # a slot's first use
                    pe.mlu_copy2d(buf.at(c.src, slot), buf.at(c.dst, slot), c.rows, c.row_bytes,
                                  src_stride=c.src_stride, dst_stride=c.dst_stride)
                copies = _im2col(geo, t, self.steps[s], self.nt)
                for ci, c in enumerate(copies):
                    pe.mlu_copy2d(buf.at(c.src, slot), buf.at(c.dst, slot), c.rows, c.row_bytes,
                                  src_stride=c.src_stride, dst_stride=c.dst_stride,
                                  wait=(tok["ld_s"][slot], _lin(use + 1, 1, looped)) if ci == 0 else None)
                pe.nop(Engine.MLU, signal=tok["mlu"][slot])

            first = min(p.nbuf, self.nk) if q0 == 0 else 0      # plain, for the clearing
            self._steps(pe, 0, first, step)
            self._steps(pe, first, self.nk, step)
            q0 += self.nk

    # --- DPE queue ----------------------------------------------------------------------------
    def emit_dpe(self, pe, jobs) -> None:
        geo, p, buf, tok = self.geo, self.p, self.buf, self.tok
        ready = tok["ld_s"] if geo.direct else tok["mlu"]
        full, free = self.a_full_pe, self.a_free_pe
        qa = qr = i = 0
        for job in jobs:
            if job[2] is None:       # no rows of this unit: consume the shared weight tiles
                def skip(s, looped, qa=qa):
                    slot, use = (qa + s) % p.nbuf, (qa + s) // p.nbuf
                    pe.nop(Engine.DPE, wait=(full[slot], _lin(p.share * (use + 1), p.share, looped)),
                           signal=free[slot])

                self._steps(pe, 0, self.nk, skip)
                qa += self.nk
                continue
            m = self.m_of(job[1])
            cb = buf.acc[i % p.cbufs]
            if i >= p.cbufs:
                pe.nop(Engine.DPE, wait=(tok["st"], i - p.cbufs + 1))

            def step(s, looped, qa=qa, qr=qr, m=m, cb=cb):
                sa, ua = (qa + s) % p.nbuf, (qa + s) // p.nbuf
                slot, use = (qr + s) % p.nbuf, (qr + s) // p.nbuf
                pe.nop(Engine.DPE, wait=(full[sa], _lin(p.share * (ua + 1), p.share, looped)))
                pe.dpe_matmul(buf.a[sa], buf.patch[slot], cb, m, self.steps[s] * geo.taps, self.nt,
                              dtype=geo.dtype, accumulate=s > 0,
                              wait=(ready[slot], _lin(use + 1, 1, looped)), signal=tok["dpe"][slot])
                pe.nop(Engine.DPE, signal=free[sa])

            self._steps(pe, 0, self.nk, step, first_plain=True)
            pe.nop(Engine.DPE, signal=tok["dp"])
            qa += self.nk
            qr += self.nk
            i += 1

    # --- epilogue (SIMD) ----------------------------------------------------------------------
    def emit_epilogue(self, pe, jobs) -> None:
        geo, p, buf, tok = self.geo, self.p, self.buf, self.tok
        if not (geo.has_bias or geo.out_dtype != ACC_DTYPE[geo.dtype]):
            return
        for i, job in enumerate(jobs):
            m = self.m_of(job[1])
            cb = buf.acc[i % p.cbufs]
            if geo.has_bias:
                o_abs = job[0] * geo.Og + job[1] * p.mt
                pe.simd_row_bcast("add", cb, buf.bias32 + o_abs * 4, cb, m, self.nt, dtype="fp32",
                                  out_dtype=geo.out_dtype, wait=(tok["dp"], i + 1), signal=tok["ep"])
            else:
                pe.simd_unary("copy", cb, cb, m * self.nt, dtype="fp32", out_dtype=geo.out_dtype,
                              wait=(tok["dp"], i + 1), signal=tok["ep"])


class ConvTemplate(KernelTemplate):
    """Implicit GEMM convolution: weight tiles and input slabs by DMA, patches by the MLU, MACs
    on the DPE, bias and rounding on the SIMD engine."""
    ops = ("conv",)

    def accepts(self, op: str, operands, result, attrs, chip=None) -> bool:
        x, w = operands[0], operands[1]
        if x is None or w is None or len(x.shape) not in (3, 4):
            return False
        call = KernelCall(op, (_spec(x), _spec(w), None if len(operands) < 3 or operands[2] is None
                               else _spec(operands[2])), _spec(result), dict(attrs))
        geo = _geom(call)
        return _Buffers(geo, ConvPlan(min(8, geo.Og), 1, 1)).total <= local_bytes(chip)

    def flops(self, call: KernelCall) -> int:
        geo = _geom(call)
        return 2 * geo.N * geo.O * geo.OH * geo.OW * geo.Cg * geo.taps

    def plans(self, call: KernelCall, chip: Any) -> Iterator[ConvPlan]:
        geo = _geom(call)
        cap = chip.local_mem.bytes
        ntile = chip.dpe.n_tile

        def options(total, unit, mults):
            out = {min(unit * x, total) for x in mults} | {total}
            out |= {_cdiv(total, d) for d in (2, 4, 8) if total >= d}
            return sorted(x for x in out if 0 < x <= max(unit * max(mults), 1))

        mts = options(geo.Og, 8, (1, 2, 4, 8, 16, 32, 64))
        nrs = sorted({min(geo.OH, r) for r in (1, 2, 4, 8, 16, 32, 64)} | {_cdiv(geo.OH, d) for d in (2, 4, 8)}
                     | {max(1, min(geo.OH, _cdiv(ntile * x, geo.OW))) for x in (1, 2, 4, 8)})
        ccs = sorted({min(geo.Cg, c) for c in (1, 2, 4, 8, 16, 32, 64, 128, 256)} | {geo.Cg})
        for mt in mts:
            for nr in nrs:
                for cc in ccs:
                    for nbuf, cbufs in ((2, 1), (2, 2), (3, 1)):
                        for share in sorted({1, chip.pe_grid.rows}):
                            p = ConvPlan(mt, nr, cc, nbuf, cbufs, share)
                            if _Buffers(geo, p).total <= cap:
                                yield p

    def predict(self, call: KernelCall, plan: ConvPlan, chip: Any) -> int:
        return _predict(call, _geom(call), plan, chip)

    def choose(self, call: KernelCall, chip: Any) -> ConvPlan:
        """The plan with the fewest predicted cycles; plans whose busiest PE's DPE work alone
        cannot beat the best so far are not predicted."""
        geo, rt = _geom(call), _Rates(chip)
        best, best_c = None, float("inf")
        for p in self.plans(call, chip):
            if _dpe_floor(geo, p, chip, rt) < best_c:
                c = _predict(call, geo, p, chip, rt)
                if c < best_c:
                    best, best_c = p, c
        return best if best is not None else super().choose(call, chip)

    def emit(self, call: KernelCall, plan: ConvPlan, chip: Any, builder: Any) -> None:
        _Emitter(call, _geom(call), plan, chip, builder).run()


def _spec(t) -> Placement:
    """A placement of a TensorSpec's shape (and ISA dtype) for `accepts`."""
    return Placement("sram", 0, tuple(t.shape), ISA_DTYPE.get(t.dtype, "fp32"))


register_kernel(ConvTemplate())
