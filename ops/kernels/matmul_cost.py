"""The GEMM kernel's cost model: the chip's rates (`_Rates`, shared with the convolution) and
`_predict`, a software-pipeline model of the busiest PE (DPE, its fetching DMA queue, the memory
channels and NoC edges every fetch shares) plus fill and drain."""
from __future__ import annotations

import dataclasses

from ops.kernel import ISA_ITEMSIZE, KernelCall
from ops.kernels.matmul_tiles import (BIAS_ROWS, MatmulPlan, _Gemm, _Layout, _cdiv, _column_params, _k_groups,
                                      _row_scale, _tile, channel_shares)


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
    if g.scaled:     # (widen an int32 accumulator,) (scale rows,) scale, (widen the bias tile, add it)
        widen = g.acc_dtype != "fp32"
        cyc += (1 + widen) * _cdiv(m * n, rt.simd) + (widen + chunks) * rt.simd_lat
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
            job = L.end_job(r, c)
            if job is None:
                continue
            b, mi, nj = job
            m0, m = _tile(mi, p.mt, g.M)
            n0, n = _tile(nj, p.nt, g.N)
            if m and (n or L.a_shared):
                key = ("row", r) if L.a_shared else (r, c)
                if key not in seen_a:
                    seen_a.add(key)
                    out.append((x.space, x.addr + g.a_offsets[b] + m0 * g.kbytes(g.K), m, 0))
            if n and (m or L.b_shared):
                key = ("col", c) if L.b_shared else (r, c)
                if key not in seen_b:
                    seen_b.add(key)
                    base = w.addr + (n0 * g.kbytes(g.K) if g.transposed_b else g.b_offsets[b] + n0 * es)
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
        for channel, share in channel_shares(base, nbytes, rt.channels[space], rt.interleave[space]):
            loads[space, channel] = loads.get((space, channel), 0) + share
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
            job = L.end_job(r, c, last=True)
            if job is None:
                continue
            b, mi, nj = job
            m0, m = _tile(mi, p.mt, g.M)
            n0, n = _tile(nj, p.nt, g.N)
            nbytes = m * n * oes
            base = o.addr + (b * g.M * g.N + m0 * g.N + n0) * oes
            for channel, share in channel_shares(base, nbytes, ch, il):
                load[channel] += share
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
        if g.mlu_transposes:
            t = max(t, _cdiv(k * n * es, rt.mlu) + rt.mlu_lat)
        a_b, b_b = mt_full * g.kbytes(k), nt_full * g.kbytes(k)
        mem = {"dram": 0.0, "sram": 0.0}
        mem[a_sp] += len(fa) * a_b
        mem[b_sp] += len(fb) * b_b
        mem_t = max(mem["dram"] / rt.dram, mem["sram"] / rt.sram,
                    (col_a * a_b + col_b * b_b) / rt.link,
                    channel_time(g.kbytes(k)))
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
    if g.mlu_transposes:   # the queue goes on while the MLU transposes the first W tile
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
    if g.mlu_transposes:
        fill += _cdiv(kg[0][0] * nt_full * es, rt.mlu) + rt.mlu_lat
    # after many jobs, or with each PE fetching its own tiles, PEs finish at staggered times and
    # about half of the pile-up shows; after one job on multicast operands (which every PE of a
    # row or column receives at once), all of it
    drain = epi[jobs[-1]] + max(store[jobs[-1]], (1.0 if len(jobs) == 1 and shared else 0.5) * final_stores)
    # memory-bound floor: every byte over its memory once per fetch
    a_bytes = g.batch * g.M * g.kbytes(g.K) * ((R // L.pm) * L.QN if L.a_shared else L.Tn)
    b_bytes = g.batch * g.N * g.kbytes(g.K) * ((C // L.pn) * L.QM if L.b_shared else L.Tm)
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
