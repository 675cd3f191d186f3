"""Attention in column sweeps: the PEs of one grid column share every K/V block (no mask).

With the whole-row and key-block schedules every item loads the keys it sees, so a prefill
reads K and V about L / (2 lq) times over: from DRAM (where a served model's caches are) that,
not the DPE, bounds it. Here the PEs of a column form a group, and a group works through
sweeps: one key/value head, some of its query heads, and a chunk of query positions spread over
the group's PEs. Per sweep, the group's first PE streams the head's K/V blocks (`ks` keys) once,
each as one DMA multicast down the column (`mcast="col"`), and every PE of the column runs all
of its rows of the sweep against each block: K and V cross the memory once per sweep.

A PE's rows of a sweep are segments of `pb` query positions of one query head, stacked in
local memory by position (the query heads of one block of positions next to each other), and
spread over the group's PEs in a snake (PE 0, 1, ..., P-1, P-1, ..., 0, 0, ...), so that with
causal masking each PE gets as many early as late positions. Q is scaled once per sweep (so the
scores need no pass of their own). With causal masking a block of keys k0.. is seen by the rows
of positions >= k0: as blocks advance, rows drop out from the front of the stack, so the rows a
block serves are a suffix of it. The DPE and the SIMD engine work on those rows in "units" of
about equal size (at most `tile` rows): the DPE computes a unit's scores [n, ks] into one of
two score slots, the SIMD engine masks the causal diagonal (one MIN per row there), updates the
running max m and sum l, takes exp (rounded to the operand dtype in place: the DPE's P) and
rescales the unit's rows of the fp32 accumulator O by exp(m_old - m) (rows that see their first
block start m, l and O instead); the DPE then accumulates P V into O. The DPE computes the
scores of unit i+1 before P V of unit i. The rows whose last block this was are normalized
(O / l, rounded in place) and stored at once.

Causal sweeps load the memory unevenly: their first blocks serve every row (the DPE bounds
them), their last ones few (the K/V stream does). With `stagger`, every other group walks its
keys from the last block to the first (rows join as the blocks reach them), so that while some
groups' streams need the memory most, the others' need it least.

Synchronization: block g of the group's stream lands in slot g % 2 of every PE's K and V
buffers (the MLU transposes K in place). Each PE signals, per block of the stream and in
order, that it no longer reads K (kfree, after its last scores of that block) and V (vfree,
after its last P V); the streaming PE loads block g once every PE of the group has freed block
g - 2 (one wait per PE and token: a shared count could be met by a PE ahead and one behind).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ops.kernel import KernelCall, LocalArena
from ops.kernels.attention_replay import ReplayBuilder, dpe_cycles
from ops.kernels.attention_work import ALIGN, DEBUG, NEG_BIG, Dims
from simulator.isa import Engine

ROW_CHOICES = (64, 128, 256, 512)
TILE_CHOICES = (64, 128)
KS_CHOICES = (32, 64, 128)
PB_CHOICES = (16, 32)


@dataclass(frozen=True)
class SweepPlan:
    rows: int   # query rows per PE per sweep, at most
    tile: int   # rows per unit of DPE and SIMD work, at most
    ks: int     # keys per block
    pb: int     # query positions per segment (divides ks)
    group: int  # query heads of one key/value head per sweep (they share every K/V block)
    stagger: bool = False   # odd groups walk the keys last to first (see the module docstring)


@dataclass(frozen=True)
class _Segment:
    bh: int     # batch * H + query head
    p0: int     # first query position
    n: int      # positions
    last: int   # the last key block its rows see


@dataclass(frozen=True)
class _Sweep:
    kv: int                             # batch * Hk + key/value head
    segments: tuple[tuple[_Segment, ...], ...]   # per PE of the group, in stack order
    blocks: int                         # key blocks of the stream

    @property
    def cost(self) -> int:
        """Rows x blocks they see (what the DPE and SIMD engine spend), plus the stream's length."""
        return sum(s.n * (s.last + 1) for pe in self.segments for s in pe) + 64 * self.blocks


@dataclass(frozen=True)
class _Unit:
    w: int      # the PE's sweep (index into the group's sweeps)
    j: int      # key block of the sweep
    g: int      # block of the group's stream
    a: int      # rows [a, b) of the PE's stack
    b: int
    join: int   # rows [a, join) see their first block here (their m, l, O start), the rest update
    fin: tuple[int, int]   # rows whose last block this is: normalized and stored after it


def _groups(chip) -> list[list[int]]:
    """The PEs of each grid column, the streaming one (row 0, next to memory) first."""
    rows, cols = chip.pe_grid.rows, chip.pe_grid.cols
    return [[r * cols + c for r in range(rows)] for c in range(cols)]


def _sweeps(d: Dims, plan: SweepPlan, causal: bool, per_group: int) -> list[_Sweep]:
    rep = d.h // d.hk
    hs = min(plan.group, rep)
    per_pe = max(1, plan.rows // (hs * plan.pb))      # position blocks per PE per sweep
    chunk = per_pe * per_group * plan.pb
    out = []
    for b in range(d.batch):
        for j in range(d.hk):
            for h0 in range(0, rep, hs):
                heads = range(j * rep + h0, j * rep + min(rep, h0 + hs))
                for c0 in range(0, d.l, chunk):
                    c1 = min(d.l, c0 + chunk)
                    ext = min(c1, d.s) if causal else d.s
                    blocks = math.ceil(ext / plan.ks)
                    owned: list[list[_Segment]] = [[] for _ in range(per_group)]
                    for i, p0 in enumerate(range(c0, c1, plan.pb)):
                        cyc = i % (2 * per_group)
                        pe = cyc if cyc < per_group else 2 * per_group - 1 - cyc
                        n = min(plan.pb, c1 - p0)
                        last = math.ceil(min(p0 + n, d.s) / plan.ks) - 1 if causal else blocks - 1
                        owned[pe] += [_Segment(b * d.h + h, p0, n, last) for h in heads]
                    out.append(_Sweep(b * d.hk + j, tuple(tuple(sorted(s, key=lambda x: (x.p0, x.bh)))
                                                             for s in owned), blocks))
    return out


def _assign(sweeps: list[_Sweep], groups: int) -> list[list[_Sweep]]:
    """Sweeps to groups, longest first onto the least loaded group."""
    load, out = [0] * groups, [[] for _ in range(groups)]
    for s in sorted(sweeps, key=lambda s: -s.cost):
        g = min(range(groups), key=lambda i: load[i])
        out[g].append(s)
        load[g] += s.cost
    return out


def layout(d: Dims, plan: SweepPlan) -> dict:
    arena = LocalArena(ALIGN)
    take = arena.take
    it, r, t, ks = d.item, plan.rows, plan.tile, plan.ks
    lay = {"q": take(r * d.e * it), "o": take(r * d.ev * 4),
           "sc": [take(t * ks * 4) for _ in range(2)],
           "k": [take(ks * d.e * it) for _ in range(2)],     # K, transposed in place to K^T
           "v": [take(ks * d.ev * it) for _ in range(2)],
           "m": take(r * 4), "l": take(r * 4)}
    for name in ("cm", "mn", "cs", "al", "rr"):
        lay[name] = take(t * 4)
    lay["end"] = arena.end
    return lay


def plans(d: Dims, chip, causal: bool):
    """Sweep plans that fit local memory: all of a head's positions in one sweep if they fit
    (K/V read once per head), else fewer rows per PE; with causal masking, with and without
    the stagger."""
    rep = d.h // d.hk
    per_group = chip.pe_grid.rows
    seen = set()
    # the query heads of a key/value head together (they share each block) where they fit,
    # else one by one; blocks of at least Ev/2 keys (a rescale of O costs Ev/ks SIMD passes
    # per score)
    for group in (rep, 1) if rep > 1 else (1,):
        if seen:
            break                       # (one key/value head's query heads together fit)
        for ks in KS_CHOICES:
            if ks > max(d.s, KS_CHOICES[0]) or ks < min(d.ev // 2, KS_CHOICES[-1], d.s):
                continue
            for pb in PB_CHOICES:
                floor = pb * min(group, rep)
                if ks % pb or floor > ROW_CHOICES[-1]:
                    continue
                need = math.ceil(d.l / (pb * per_group)) * floor        # the rows of one sweep per head
                for rows in {max(floor, min(r, need)) for r in ROW_CHOICES}:
                    for tile in {min(t, rows) for t in TILE_CHOICES}:
                        for stagger in (False, True) if causal else (False,):
                            plan = SweepPlan(rows, tile, ks, pb, group, stagger)
                            if plan not in seen and layout(d, plan)["end"] <= chip.local_mem.bytes:
                                seen.add(plan)
                                yield plan


# ----------------------------------------------------------------------------- cost model

def _replayed(call: KernelCall, d: Dims, plan: SweepPlan, causal: bool, chip):
    """(groups' PEs, their sweeps, the groups the cost model replays, the multicast bandwidth
    those get together): the busiest group, and with a stagger the busiest of the other
    direction too; the groups' K/V streams share the memory, which the replayed get their
    part of."""
    groups = _groups(chip)
    work = _assign(_sweeps(d, plan, causal, len(groups[0])), len(groups))
    cost = [sum(s.cost for s in w) for w in work]
    replayed = [max(range(0, len(work), 2 if plan.stagger else 1), key=lambda g: cost[g])]
    if plan.stagger and len(work) > 1:
        replayed.append(max(range(1, len(work), 2), key=lambda g: cost[g]))
    streams = max(len(replayed), sum(cost) / max(max(cost), 1))
    k = call.inputs[1]
    mem = {"dram": chip.dram_bytes_per_s, "sram": chip.sram.bytes_per_s}[k.space] / chip.clock_hz
    link = chip.noc.link_bytes_per_s / chip.clock_hz
    share = min(mem * len(replayed) / streams, link * len(replayed))
    return groups, work, replayed, streams, share


def predict(call: KernelCall, d: Dims, plan: SweepPlan, causal: bool, chip) -> int:
    """The replayed groups' own commands on the chip's engines (attention_replay): their
    multicast K/V streams through one server of their share of the memory, their PEs' Q and
    output transfers at the share all PEs get."""
    groups, work, replayed, streams, share = _replayed(call, d, plan, causal, chip)
    replay = ReplayBuilder(chip, round(streams * len(groups[0])), multicast_share=share)
    lay = layout(d, plan)
    for g in replayed:
        _emit_group(call, d, plan, causal, lay, work[g], groups[g], replay, backwards=plan.stagger and g % 2 == 1)
    cycles = replay.cycles()
    if DEBUG:
        print(plan, int(cycles))
    return int(cycles)


def bound(call: KernelCall, d: Dims, plan: SweepPlan, causal: bool, chip) -> float:
    """What `predict` cannot go below: the replayed PEs' DPE work, and their K/V streams
    through the multicast server."""
    groups, work, replayed, _, share = _replayed(call, d, plan, causal, chip)
    dpe, stream = 0.0, 0.0
    for g in replayed:
        sweeps = work[g]
        starts = [0]
        for sw in sweeps:
            starts.append(starts[-1] + sw.blocks)
            stream += sum(min(plan.ks, d.s - j * plan.ks) for j in range(sw.blocks)) * (d.e + d.ev) * d.item / share
        for p in range(len(groups[g])):
            busy = 0.0
            for u in _units(plan, sweeps, p, starts, False):
                sj = min(plan.ks, d.s - u.j * plan.ks)
                busy += dpe_cycles(chip, u.b - u.a, d.e, sj, d.dt) + dpe_cycles(chip, u.b - u.a, sj, d.ev, d.dt)
            dpe = max(dpe, busy)
    return max(dpe, stream)


# ----------------------------------------------------------------------------- emission

def emit(call: KernelCall, d: Dims, plan: SweepPlan, causal: bool, chip, builder) -> None:
    groups = _groups(chip)
    lay = layout(d, plan)
    for g, (sweeps, pes) in enumerate(zip(_assign(_sweeps(d, plan, causal, len(groups[0])), len(groups)), groups)):
        if sweeps:
            _emit_group(call, d, plan, causal, lay, sweeps, pes, builder, backwards=plan.stagger and g % 2 == 1)


def _units(plan: SweepPlan, sweeps: list[_Sweep], p: int, starts: list[int], backwards: bool) -> list[_Unit]:
    """PE p's units (key block, run of rows) in order over the group's stream (its blocks
    last to first when `backwards`)."""
    out = []
    for w, sw in enumerate(sweeps):
        segs = sw.segments[p]
        rows = sum(s.n for s in segs)
        first = [0] * (sw.blocks + 1)      # first row that sees block j (the stack's suffix)
        for j in range(sw.blocks + 1):
            at = 0
            for s in segs:
                if s.last >= j:
                    break
                at += s.n
            first[j] = at
        for step in range(sw.blocks):
            j = sw.blocks - 1 - step if backwards else step
            # the rows that see the block, in units of about equal size (at most `tile`)
            count = math.ceil((rows - first[j]) / plan.tile)
            if not count:
                continue
            cuts = [first[j] + (rows - first[j]) * c // count for c in range(count + 1)]
            for a, b in zip(cuts, cuts[1:]):
                # rows [first[j], first[j + 1]) see keys up to block j and no further
                own = min(b, max(a, first[j + 1]))
                if backwards:
                    out.append(_Unit(w, j, starts[w] + step, a, b, own, (a, b) if j == 0 else (a, a)))
                else:
                    out.append(_Unit(w, j, starts[w] + step, a, b, b if j == 0 else a, (a, own)))
    return out


def _emit_group(call: KernelCall, d: Dims, plan: SweepPlan, causal: bool, lay: dict, sweeps: list[_Sweep],
                pes: list[int], builder, backwards: bool = False) -> None:
    starts = [0]
    for sw in sweeps:
        starts.append(starts[-1] + sw.blocks)
    nblocks = starts[-1]
    kvk, kvv = builder.token(), builder.token()
    kfree = {p: builder.token() for p in range(len(pes))}
    vfree = {p: builder.token() for p in range(len(pes))}
    dma_queues = []
    for p, pe_index in enumerate(pes):
        units = _units(plan, sweeps, p, starts, backwards)
        dma_queues.append(_emit_pe(call, d, plan, causal, lay, sweeps, p, units, nblocks, kvk, kvv,
                                   kfree[p], vfree[p], builder.pe(pe_index), builder))
    # the streaming PE's K/V multicasts, in the stream's order, among its own transfers
    k, v = call.inputs[1], call.inputs[2]
    it = d.item
    lead = builder.pe(pes[0])
    stream = []
    for w, sw in enumerate(sweeps):
        for step in range(sw.blocks):
            g = starts[w] + step
            k0 = (sw.blocks - 1 - step if backwards else step) * plan.ks
            sj = min(plan.ks, d.s - k0)

            def load(g=g, k0=k0, sj=sj, kv=sw.kv) -> None:
                for tok, src, width, dst, done in ((kfree, k, d.e, lay["k"], kvk), (vfree, v, d.ev, lay["v"], kvv)):
                    if g >= 2:
                        for p in range(len(pes)):
                            lead.nop(Engine.DMA, wait=(tok[p], g - 1))
                    lead.dma(src.space, src.addr + (kv * d.s + k0) * width * it, "local", dst[g % 2],
                             nbytes=sj * width * it, mcast="col", signal=done)
            stream.append(((2 * g, 0), load))
    for _, cmd in sorted(dma_queues[0] + stream, key=lambda x: x[0]):
        cmd()
    for p in range(1, len(pes)):
        for _, cmd in sorted(dma_queues[p], key=lambda x: x[0]):
            cmd()


def _emit_pe(call: KernelCall, d: Dims, plan: SweepPlan, causal: bool, lay: dict, sweeps: list[_Sweep], p: int,
             units: list[_Unit], nblocks: int, kvk: int, kvv: int, kfree: int, vfree: int, pe, builder) -> list:
    """PE p's MLU, DPE and SIMD commands; returns its DMA commands as (position, emit) pairs,
    for the group to merge with the K/V stream in an order free of deadlocks: block g's loads
    at 2g; a sweep's Q just after the block of the PE's last scores of its previous sweep (it
    waits for them); a unit's stores after the loads of the block its next unit reads (their
    normalization follows that unit's softmax), within a sweep after the next block's loads
    too, so that they do not hold the stream up (at a sweep's start not: that sweep's first
    P V waits for them, and the loads two blocks on wait for that P V)."""
    ldq, qs, tr, sc, pr, pv, fin, st = (builder.token() for _ in range(8))
    q, out = call.inputs[0], call.output
    it, dt = d.item, d.dt
    scale = float(call.attrs["scale"])
    if not units:
        for g in range(nblocks):
            pe.nop(Engine.DPE, signal=kfree)
            pe.nop(Engine.DPE, signal=vfree)
        return []
    mine = sorted({u.w for u in units})          # the sweeps this PE has rows in
    rows = {w: sum(s.n for s in sweeps[w].segments[p]) for w in mine}
    first_unit = {}
    for i, u in enumerate(units):
        first_unit.setdefault(u.w, i)
    last_unit = {u.w: i for i, u in enumerate(units)}
    used = sorted({u.g for u in units})
    blk_index = {g: i for i, g in enumerate(used)}
    # unit -> the last unit before it whose P V wrote some of its rows of O
    prev_of_rows: dict[int, int] = {}
    for i, u in enumerate(units):
        for i2 in range(i - 1, -1, -1):
            v2 = units[i2]
            if v2.w != u.w:
                break
            if v2.g != u.g and v2.a < u.b and u.a < v2.b:
                prev_of_rows[i] = i2
                break

    # MLU: K of each block this PE uses, transposed in place to K^T [E, sj]
    for g in used:
        j_units = [u for u in units if u.g == g]
        sj = min(plan.ks, d.s - j_units[0].j * plan.ks)
        pe.mlu_transpose(lay["k"][g % 2], lay["k"][g % 2], sj, d.e, dtype=dt, wait=(kvk, g + 1), signal=tr)

    # DPE: scores of unit i+1 before P V of unit i; kfree / vfree once per stream block, in order
    def sj_of(u: _Unit) -> int:
        return min(plan.ks, d.s - u.j * plan.ks)

    def free(tok: int, start: int, stop: int) -> int:
        for _ in range(start, stop):
            pe.nop(Engine.DPE, signal=tok)
        return max(start, stop)

    stores_before = {}                           # sweep -> stores of the PE's earlier sweeps
    n_stores = 0
    for u in units:
        stores_before.setdefault(u.w, n_stores)
        n_stores += len(_pieces(sweeps[u.w].segments[p], *u.fin))

    kf = free(kfree, 0, units[0].g)
    vf = free(vfree, 0, units[0].g)

    def scores(i: int) -> None:
        nonlocal kf
        u = units[i]
        if first_unit[u.w] == i:
            pe.nop(Engine.DPE, wait=(qs, mine.index(u.w) + 1))
        pe.dpe_matmul(lay["q"] + u.a * d.e * it, lay["k"][u.g % 2], lay["sc"][i % 2], u.b - u.a, d.e, sj_of(u),
                      dtype=dt, wait=(tr, blk_index[u.g] + 1), signal=sc)
        if i + 1 == len(units) or units[i + 1].g != u.g:
            kf = free(kfree, kf, units[i + 1].g if i + 1 < len(units) else nblocks)

    def pv_(i: int) -> None:
        nonlocal vf
        u = units[i]
        if first_unit[u.w] == i and stores_before[u.w]:
            pe.nop(Engine.DPE, wait=(st, stores_before[u.w]))     # O's rows stored
        pe.nop(Engine.DPE, wait=(kvv, u.g + 1))
        sj = sj_of(u)
        # rows that start here take P V as it is, the others accumulate it
        parts = [(r0, r1, acc) for r0, r1, acc in ((u.a, u.join, False), (u.join, u.b, True)) if r0 < r1]
        for c, (r0, r1, acc) in enumerate(parts):
            pe.dpe_matmul(lay["sc"][i % 2] + (r0 - u.a) * sj * it, lay["v"][u.g % 2], lay["o"] + r0 * d.ev * 4,
                          r1 - r0, sj, d.ev, dtype=dt, accumulate=acc, wait=(pr, i + 1) if c == 0 else None,
                          signal=pv if c == len(parts) - 1 else None)
        if i + 1 == len(units) or units[i + 1].g != u.g:
            vf = free(vfree, vf, units[i + 1].g if i + 1 < len(units) else nblocks)

    # (not across sweeps: the next sweep's scores wait for its Q, which may queue behind
    # blocks this PE has to free first)
    scores(0)
    for i in range(len(units)):
        ahead = i + 1 < len(units) and first_unit[units[i + 1].w] != i + 1
        if ahead:
            scores(i + 1)
        pv_(i)
        if i + 1 < len(units) and not ahead:
            scores(i + 1)

    # SIMD: per unit its softmax update (and the rescale of O), then the previous unit's
    # finished rows
    position = {w: [s.p0 + r for s in sweeps[w].segments[p] for r in range(s.n)] for w in mine}

    def softmax(i: int) -> None:
        u = units[i]
        n, sj = u.b - u.a, sj_of(u)
        k0 = u.j * plan.ks
        x = lay["sc"][i % 2]
        m, l_ = lay["m"] + u.a * 4, lay["l"] + u.a * 4
        cm, mn, cs, al = lay["cm"], lay["mn"], lay["cs"], lay["al"]
        pe.nop(Engine.SIMD, wait=(sc, i + 1))
        if causal:
            for r, pos in enumerate(position[u.w][u.a:u.b]):
                c0 = pos + 1 - k0
                if c0 < sj:
                    at = x + (r * sj + c0) * 4
                    pe.simd_scalar("MIN", at, at, sj - c0, NEG_BIG)
        nj = u.join - u.a             # rows [0, nj) of the unit start here, [nj, n) update
        if nj == n:
            pe.simd_row_reduce("MAX", x, m, n, sj)
            pe.simd_row_bcast("SUB", x, m, x, n, sj)
            pe.simd_unary("EXP", x, x, n * sj, out_dtype=dt)
            pe.simd_row_reduce("ADD", x, l_, n, sj, dtype=dt, out_dtype="fp32", signal=pr)
            return
        nu, mu, lu, mnu, csu, alu = n - nj, m + nj * 4, l_ + nj * 4, mn + nj * 4, cs + nj * 4, al + nj * 4
        pe.simd_row_reduce("MAX", x, cm, n, sj)
        pe.simd_binary("MAX", mu, cm + nj * 4, mnu, nu)
        if nj:
            pe.simd_unary("COPY", cm, mn, nj)
        pe.simd_row_bcast("SUB", x, mn, x, n, sj)
        pe.simd_unary("EXP", x, x, n * sj, out_dtype=dt)
        pe.simd_row_reduce("ADD", x, cs, n, sj, dtype=dt, out_dtype="fp32")
        pe.simd_binary("SUB", mu, mnu, alu, nu)
        pe.simd_unary("EXP", alu, alu, nu)
        pe.simd_binary("MUL", lu, alu, lu, nu)
        pe.simd_binary("ADD", lu, csu, lu, nu)
        if nj:
            pe.simd_unary("COPY", cs, l_, nj)
        pe.simd_unary("COPY", mn, m, n)
        pe.nop(Engine.SIMD, wait=(pv, prev_of_rows[i] + 1))       # O's rows: the last P V done
        o = lay["o"] + u.join * d.ev * 4
        pe.simd_row_bcast("MUL", o, alu, o, nu, d.ev, signal=pr)

    fins = []            # (unit, fin count) of units with finished rows

    def finish(i: int) -> None:
        u = units[i]
        fa, fb = u.fin
        if fa >= fb:
            return
        o = lay["o"] + fa * d.ev * 4
        pe.simd_unary("RECIP", lay["l"] + fa * 4, lay["rr"], fb - fa, wait=(pv, i + 1))
        pe.simd_row_bcast("MUL", o, lay["rr"], o, fb - fa, d.ev, out_dtype=dt, signal=fin)
        fins.append(i)

    def prescale(w: int) -> None:
        """Q of the sweep times the scale, rounded to the operand dtype (the scores need no pass)."""
        pe.simd_scalar("MUL", lay["q"], lay["q"], rows[w] * d.e, scale, dtype=dt, out_dtype=dt,
                       wait=(ldq, mine.index(w) + 1), signal=qs)

    for i, u in enumerate(units):
        if first_unit[u.w] == i:
            # the new sweep's Q, then the last sweep's rows, before its m and l are overwritten
            prescale(u.w)
            if i >= 1:
                finish(i - 1)
            softmax(i)
        else:
            softmax(i)
            if i >= 1:
                finish(i - 1)
    finish(len(units) - 1)

    # DMA: Q per sweep (one strided DMA per block of positions: its heads), stores per segment
    cmds = []
    for w in mine:
        segs = sweeps[w].segments[p]
        prev = mine.index(w) - 1
        # as soon as the PE's last scores of its previous sweep are done
        wait = (sc, last_unit[mine[prev]] + 1) if prev >= 0 else None
        key = (2 * units[last_unit[mine[prev]]].g + 1, 0) if prev >= 0 else (-1, 0)

        def load_q(segs=segs, wait=wait) -> None:
            at, blocks = 0, []
            for s in segs:                       # runs of one block of positions, heads in order
                if blocks and blocks[-1][1] == s.p0 and blocks[-1][2] + 1 == s.bh:
                    blocks[-1] = (blocks[-1][0], s.p0, s.bh, blocks[-1][3] + 1, s.n)
                else:
                    blocks.append((at, s.p0, s.bh, 1, s.n))
                at += s.n
            for bi, (row, p0, bh_last, heads, n) in enumerate(blocks):
                bh0 = bh_last - heads + 1
                nbytes = n * d.e * it
                pe.dma(q.space, q.addr + (bh0 * d.l + p0) * d.e * it, "local", lay["q"] + row * d.e * it,
                       rows=heads, row_bytes=nbytes, src_stride=d.l * d.e * it, dst_stride=nbytes,
                       wait=wait if bi == 0 else None, signal=ldq if bi == len(blocks) - 1 else None)
        cmds.append((key, load_q))
    for order, i in enumerate(fins):
        u = units[i]
        fa, fb = u.fin
        if i + 1 == len(units):
            key = (2 * nblocks + 2, 1)
        elif first_unit[units[i + 1].w] == i + 1:
            key = (2 * units[i + 1].g + 1, 1)         # the next sweep's P V waits for it
        else:
            key = (2 * units[i + 1].g + 3, 1)         # after the next block's loads, not before

        def store(u=u, fa=fa, fb=fb, count=order + 1) -> None:
            for bi, (r0, r1, s, at) in enumerate(_pieces(sweeps[u.w].segments[p], fa, fb)):
                pe.dma("local", lay["o"] + fa * d.ev * 4 + (r0 - fa) * d.ev * it, out.space,
                       out.addr + (s.bh * d.l + s.p0 + r0 - at) * d.ev * it, nbytes=(r1 - r0) * d.ev * it,
                       wait=(fin, count) if bi == 0 else None, signal=st)
        cmds.append((key, store))
    return cmds


def _pieces(segments, fa: int, fb: int) -> list[tuple[int, int, _Segment, int]]:
    """(first row, end row, segment, the segment's first row) of each segment's part of rows
    [fa, fb) of the stack: each is one contiguous run of the output."""
    out, at = [], 0
    for s in segments:
        r0, r1 = max(fa, at), min(fb, at + s.n)
        if r0 < r1:
            out.append((r0, r1, s, at))
        at += s.n
    return out
