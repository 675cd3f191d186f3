"""The convolution kernel's cost model: `_predict`, the busiest PE as a software pipeline of its
DMA, MLU and DPE stages, and `_dpe_floor`, the bound `choose` prunes plans with."""
from __future__ import annotations

from typing import Any

from ops.kernel import ISA_ITEMSIZE, KernelCall, streaming_dma_cycles
from ops.kernels.conv_tiles import ConvPlan, _Buffers, _Geom, _clears, _im2col, _inits, _jobs_of, _row_tile
from ops.kernels.matmul_cost import _Rates
from ops.kernels.matmul_tiles import _cdiv
from ops.kernels.window_tiles import RowTile


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


def _epilogue_cycles(geo: _Geom, m: int, nt: int, rt: _Rates) -> int:
    """SIMD cycles of one job's epilogue (`conv_emit.emit_epilogue`): an int32 accumulator widened,
    the per-channel dequantization and bias passes (one row broadcast each), or a rounding copy."""
    flat = _cdiv(m * nt, rt.simd) + rt.simd_lat
    per_row = m * _cdiv(nt, rt.simd) + rt.simd_lat
    passes = int(geo.scaled) + int(geo.has_bias)
    if passes:
        return passes * per_row + (flat if geo.acc_dtype != "fp32" else 0)
    return flat if geo.has_epilogue else 0


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

    def job_cost(m: int, pi: int | None) -> tuple[float, float, float, float, dict, float]:
        """(steady time of the job's steps, its first step's chain, epilogue, store, the bytes of
        this PE's part of its weight tiles, and its loads' time on the DMA queue, latencies left
        out: queued behind each other, they overlap)."""
        key = (m, pi)
        if key in memo:
            return memo[key]
        total, first, loads = 0.0, (0.0, 0.0), 0.0
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
                loads += count * (d - (1 + len(slab)) * lat)
                if gi == 0:
                    first = (d, mlu)
        epi = store = 0.0
        if t is not None:
            epi = _epilogue_cycles(geo, m, nt, rt)
            store = dma(m * t.rows * geo.OW * oes, o.space)
        memo[key] = (total, first, epi, store, by, loads)
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
            steady, first, epi, store, _, loads = job_cost(min(p.mt, geo.Og - oi * p.mt), pi)
            if idx == 0:
                tm += steady + first_chain(first)
            elif p.cbufs == 1:       # the DPE waits for the previous accumulator to drain
                tm += steady + epi + store
            else:     # the previous accumulator drains meanwhile: its epilogue (SIMD engine) or
                # the loads and its store (DMA queue) may set the pace
                tm += max(steady, epi, loads + store)
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
