"""Attention in key blocks with an online softmax (flash attention), with or without a mask.

Work items are (batch, query heads, block of query rows), as in the whole-row schedule
(ops/kernels/attention.py); each PE walks its items' keys in blocks of `ks`. Per block
("job"), DMA loads K, V (and the first block of an item its Q); the MLU transposes K; the DPE
computes the scores Q K^T; the SIMD engine scales them, masks them, and updates the running row
max m and sum l (rescaled by exp(m_old - m)); the DPE computes the block's P V into a scratch
tile T, and the SIMD engine merges it into the fp32 accumulator O = O * exp(m_old - m) + T;
after the last block, O / l is stored. Jobs are pipelined: K, V, scores, P and T are
double-buffered, the DPE computes the scores of job j+1 before P V of job j.

A mask operand (`MaskView`: any mask that broadcasts to the scores) is read per job for the
job's distinct elements only: a (B, 1, 1, S) decode mask costs one row of the block's keys per
item, whatever the number of query heads stacked in it. The SIMD engine turns the tile into
d, which it subtracts from the scores: for an i1 mask (int32 0/1) d = 1/m - 1 (+inf where the
mask is false, 0 where true), for an additive mask d = -mask; where the mask repeats over query
rows, the MLU replicates d's row first. Masked scores are then exactly -inf (causal masking
too, when a mask is present), the running max is kept >= FLT_LOWEST and the final sum >= L_MIN,
so that a row with no key to attend gives zeros, as torch's _safe_softmax.
"""
from __future__ import annotations

from dataclasses import dataclass

from ops.kernel import KernelCall, LocalArena
from ops.kernels.attention_replay import dpe_cycles, replay_busiest
from ops.kernels.attention_work import (
    ALIGN,
    DEBUG,
    FLT_LOWEST,
    L_MIN,
    NEG_BIG,
    AttentionPlan,
    Dims,
    Item,
    MaskView,
    busiest,
    items,
    q_dma,
    run_ahead,
    split,
)
from simulator.isa import Engine


@dataclass(frozen=True)
class _Job:
    t: int      # item (index in the PE's work)
    k0: int     # first key of the block
    sj: int     # keys in the block
    first: bool
    last: bool


def _jobs(work: list, ks: int) -> list[_Job]:
    out = []
    for t, w in enumerate(work):
        starts = list(range(0, w.s, ks))
        for i, k0 in enumerate(starts):
            out.append(_Job(t, k0, min(ks, w.s - k0), i == 0, i == len(starts) - 1))
    return out


def layout(d: Dims, lq: int, ks: int, group: int = 1, mask: MaskView | None = None) -> dict:
    """Local-memory offsets of one PE's buffers for items of `group` heads x `lq` rows."""
    arena = LocalArena(ALIGN)
    take = arena.take

    it, rows = d.item, lq * group
    lay = {"q": [take(rows * d.e * it) for _ in range(2)],
           "k": [take(ks * d.e * it) for _ in range(2)],
           "v": [take(ks * d.ev * it) for _ in range(2)],
           "kt": take(d.e * ks * it),
           "sc": [take(rows * ks * 4) for _ in range(2)]}
    lay["p"] = lay["sc"] if it == 4 else [take(rows * ks * it) for _ in range(2)]
    lay["t"] = [take(rows * d.ev * 4) for _ in range(2)]
    lay["o"] = take(rows * d.ev * 4)
    lay["ob"] = [take(rows * d.ev * it) for _ in range(2)]
    for name in ("m", "l", "a"):
        lay[name] = [take(rows * 4) for _ in range(2)]
    for name in ("cm", "mn", "cs", "r"):
        lay[name] = take(rows * 4)
    if mask is not None:
        hm, nm, km = mask.tile(group, lq, ks)
        lay["mraw"] = [take(hm * nm * km * mask.item) for _ in range(2)]
        lay["md"] = take(hm * nm * km * 4)
        if nm == 1 and lq > 1:          # d repeats over the rows: the MLU replicates it
            lay["mfull"] = take(hm * lq * km * 4)
    lay["end"] = arena.end
    return lay


def _mask_tile(mask: MaskView, w: Item, jb: _Job) -> tuple[int, int, int, bool]:
    """(heads, rows, keys) of the distinct mask elements of a job, and whether d's rows are
    replicated over the item's rows."""
    hm, nm, km = mask.tile(w.heads, w.n, jb.sj)
    return hm, nm, km, nm == 1 and w.n > 1


# ----------------------------------------------------------------------------- cost model

def predict(call: KernelCall, d: Dims, plan: AttentionPlan, causal: bool, chip, mask: MaskView | None) -> int:
    """The busiest PEs' own commands replayed on the chip's engines (attention_replay), with
    the PEs that stream meanwhile sharing the memories; the slowest of them."""
    lay = layout(d, plan.lq, plan.ks, plan.group, mask)
    cycles = replay_busiest(chip, split(items(d, plan.lq, causal, plan.group), plan.pes),
                            lambda work, pe, b: _emit_pe(call, d, lay, work, _jobs(work, plan.ks), causal, pe, b,
                                                         mask))
    if DEBUG:
        print(plan, cycles)
    return cycles


def bound(d: Dims, plan: AttentionPlan, causal: bool, chip) -> float:
    """What `predict` cannot go below: the DPE work of the PE it replays first."""
    _, heaviest = busiest(split(items(d, plan.lq, causal, plan.group), plan.pes), 1)
    rows = [(work[jb.t].rows, jb.sj) for work in heaviest for jb in _jobs(work, plan.ks)]
    return sum(dpe_cycles(chip, n, d.e, sj, d.dt) + dpe_cycles(chip, n, sj, d.ev, d.dt) for n, sj in rows)


# ----------------------------------------------------------------------------- emission

def emit(call: KernelCall, d: Dims, plan: AttentionPlan, causal: bool, builder, mask: MaskView | None) -> None:
    lay = layout(d, plan.lq, plan.ks, plan.group, mask)
    for p, work in enumerate(split(items(d, plan.lq, causal, plan.group), plan.pes)):
        if work:
            _emit_pe(call, d, lay, work, _jobs(work, plan.ks), causal, builder.pe(p), builder, mask)


def _emit_pe(call: KernelCall, d: Dims, lay: dict, work: list[Item], jobs: list[_Job], causal: bool, pe,
             builder, mask: MaskView | None) -> None:
    """One PE's jobs (item, key block), pipelined; per block the running row max m and sum l
    are updated, and the block's P V (into T) is merged into the item's accumulator
    O = O * exp(m_old - m) + T."""
    ldq, ldk, ldv, tr, sc, pr, pv, mg, fin, st = (builder.token() for _ in range(10))
    ldm, cvt, rep = (builder.token() for _ in range(3)) if mask is not None else (None,) * 3
    q, k, v = call.inputs[:3]
    out = call.output
    it_, dt = d.item, d.dt
    bf = it_ != 4
    scale = float(call.attrs["scale"])
    # with a mask, masked scores are -inf (a row may have no key left: see the module docstring)
    masked_score = NEG_BIG if mask is None else float("-inf")
    last_job = {}
    for j, jb in enumerate(jobs):
        last_job[jb.t] = j
    replicated = []         # replications of d up to and including job j
    for jb in jobs:
        reps = mask is not None and _mask_tile(mask, work[jb.t], jb)[3]
        replicated.append((replicated[-1] if replicated else 0) + reps)

    def load(j: int) -> None:
        jb = jobs[j]
        w = work[jb.t]
        if jb.first:
            wait = (sc, last_job[jb.t - 2] + 1) if jb.t >= 2 else None
            q_dma(pe, q.space, q.addr + (w.bh * d.l + w.q0) * d.e * it_, lay["q"][jb.t % 2], w, d, d.e,
                  True, wait=wait, signal=ldq)
        # K's slot is free once transposed, V's once multiplied: separate waits let the
        # next block's K land (and be transposed) while this block's P V waits
        pe.dma(k.space, k.addr + (w.kv * d.s + jb.k0) * d.e * it_, "local", lay["k"][j % 2],
               nbytes=jb.sj * d.e * it_, wait=(tr, j - 1) if j >= 2 else None, signal=ldk)
        pe.dma(v.space, v.addr + (w.kv * d.s + jb.k0) * d.ev * it_, "local", lay["v"][j % 2],
               nbytes=jb.sj * d.ev * it_, wait=(pv, j - 1) if j >= 2 else None, signal=ldv)
        if mask is not None:
            load_mask(j)

    def load_mask(j: int) -> None:
        """The job's distinct mask elements, one DMA per distinct head (rows sl apart)."""
        jb = jobs[j]
        w = work[jb.t]
        hm, nm, km, _ = _mask_tile(mask, w, jb)
        m_ = call.inputs[3]
        b, h0 = divmod(w.bh, d.h)
        row_bytes = km * mask.item
        for h in range(hm):
            src = m_.addr + mask.offset(b, h0 + h, w.q0, jb.k0) * mask.item
            dst = lay["mraw"][j % 2] + h * nm * row_bytes
            wait = (cvt, j - 1) if j >= 2 and h == 0 else None
            pe.dma(m_.space, src, "local", dst, rows=nm, row_bytes=row_bytes, src_stride=mask.sl * mask.item,
                   dst_stride=row_bytes, wait=wait, signal=ldm if h == hm - 1 else None)

    def store(t: int) -> None:
        w = work[t]
        q_dma(pe, out.space, out.addr + (w.bh * d.l + w.q0) * d.ev * it_, lay["ob"][t % 2], w, d, d.ev,
              False, wait=(fin, t + 1), signal=st)

    def transpose(j: int) -> None:
        if j >= 1:
            pe.nop(Engine.MLU, wait=(sc, j))
        pe.mlu_transpose(lay["k"][j % 2], lay["kt"], jobs[j].sj, d.e, dtype=dt, wait=(ldk, j + 1), signal=tr)
        if mask is not None and _mask_tile(mask, work[jobs[j].t], jobs[j])[3]:
            replicate(j)

    def replicate(j: int) -> None:
        """d's one row per distinct head, repeated over the item's rows (a stride-0 copy)."""
        jb = jobs[j]
        w = work[jb.t]
        hm, _, km, _ = _mask_tile(mask, w, jb)
        for h in range(hm):
            pe.mlu_copy2d(lay["md"] + h * km * 4, lay["mfull"] + h * w.n * km * 4, w.n, km * 4, src_stride=0,
                          wait=(cvt, j + 1) if h == 0 else None, signal=rep if h == hm - 1 else None)

    def scores(j: int) -> None:
        jb = jobs[j]
        pe.nop(Engine.DPE, wait=(ldq, jb.t + 1))
        pe.dpe_matmul(lay["q"][jb.t % 2], lay["kt"], lay["sc"][j % 2], work[jb.t].rows, d.e, jb.sj,
                      dtype=dt, wait=(tr, j + 1), signal=sc)

    def pv_(j: int) -> None:
        jb = jobs[j]
        if j >= 2:
            pe.nop(Engine.DPE, wait=(mg, j - 1))       # T slot merged
        pe.nop(Engine.DPE, wait=(ldv, j + 1))
        pe.dpe_matmul(lay["p"][j % 2], lay["v"][j % 2], lay["t"][j % 2], work[jb.t].rows, jb.sj, d.ev,
                      dtype=dt, wait=(pr, j + 1), signal=pv)

    def convert(j: int) -> None:
        """d from the job's mask tile: +inf / 0 for an i1 mask, -mask for an additive one."""
        jb = jobs[j]
        hm, nm, km, _ = _mask_tile(mask, work[jb.t], jb)
        cnt, raw, md = hm * nm * km, lay["mraw"][j % 2], lay["md"]
        if mask.boolean:     # 1 / m - 1: RECIP reads the int32 0/1 as fp32
            pe.simd_unary("RECIP", raw, md, cnt, dtype="int32", out_dtype="fp32", wait=(ldm, j + 1))
            pe.simd_scalar("SUB", md, md, cnt, 1.0, signal=cvt)
        else:
            pe.simd_scalar("MUL", raw, md, cnt, -1.0, dtype=dt, out_dtype="fp32", wait=(ldm, j + 1), signal=cvt)

    def apply_mask(j: int, x: int) -> None:
        """Scores -= d, per distinct head (d's rows replicated, or per-row values)."""
        jb = jobs[j]
        w = work[jb.t]
        hm, _, km, reps = _mask_tile(mask, w, jb)
        src = lay["mfull"] if reps else lay["md"]
        if reps:
            pe.nop(Engine.SIMD, wait=(rep, replicated[j]))
        per_head = w.n * km
        heads = [(0, w.heads)] if hm == w.heads else [(h, 1) for h in range(w.heads)]
        for h, count in heads:
            at = x + h * w.n * jb.sj * 4
            dsrc = src + (h if hm > 1 else 0) * per_head * 4
            if km == jb.sj:
                pe.simd_binary("SUB", at, dsrc, at, count * w.n * jb.sj)
            else:
                pe.simd_row_bcast("SUB", at, dsrc, at, count * w.n, jb.sj)

    def softmax(j: int) -> None:
        jb = jobs[j]
        w = work[jb.t]
        n, sj, sl, u = w.rows, jb.sj, j % 2, jb.t % 2
        x, m, l_, a = lay["sc"][sl], lay["m"][u], lay["l"][u], lay["a"][sl]
        cm, mn, cs = lay["cm"], lay["mn"], lay["cs"]
        if mask is not None:
            convert(j)
        pe.simd_scalar("MUL", x, x, n * sj, scale, wait=(sc, j + 1))
        if causal:
            for r in range(n):
                c0 = max(0, w.q0 + r % w.n + 1 - jb.k0)
                if c0 < sj:
                    at = x + (r * sj + c0) * 4
                    pe.simd_scalar("MIN", at, at, sj - c0, masked_score)
        if mask is not None:
            apply_mask(j, x)
        cmds = []
        if jb.first:
            pe.simd_row_reduce("MAX", x, m, n, sj)
            if mask is not None:
                pe.simd_scalar("MAX", m, m, n, FLT_LOWEST)
            pe.simd_row_bcast("SUB", x, m, x, n, sj)
            pe.simd_unary("EXP", x, x, n * sj)
            cmds.append(lambda sig: pe.simd_row_reduce("ADD", x, l_, n, sj, signal=sig))
        else:
            pe.simd_row_reduce("MAX", x, cm, n, sj)
            pe.simd_binary("MAX", m, cm, mn, n)
            pe.simd_row_bcast("SUB", x, mn, x, n, sj)
            pe.simd_unary("EXP", x, x, n * sj)
            pe.simd_binary("SUB", m, mn, a, n)
            pe.simd_unary("EXP", a, a, n)
            pe.simd_unary("COPY", mn, m, n)
            pe.simd_row_reduce("ADD", x, cs, n, sj)
            pe.simd_binary("MUL", l_, a, l_, n)
            cmds.append(lambda sig: pe.simd_binary("ADD", l_, cs, l_, n, signal=sig))
        if bf:
            cmds[-1](None)
            pe.simd_unary("COPY", x, lay["p"][sl], n * sj, out_dtype=dt, signal=pr)
        else:
            cmds[-1](pr)

    def merge(j: int) -> None:
        jb = jobs[j]
        n, sl = work[jb.t].rows * d.ev, j % 2
        o, t_ = lay["o"], lay["t"][sl]
        if jb.first:
            pe.simd_unary("COPY", t_, o, n, wait=(pv, j + 1), signal=mg)
        else:
            pe.simd_row_bcast("MUL", o, lay["a"][sl], o, work[jb.t].rows, d.ev, wait=(pv, j + 1))
            pe.simd_binary("ADD", o, t_, o, n, signal=mg)

    def final(t: int) -> None:
        w, u = work[t], t % 2
        if mask is not None:
            pe.simd_scalar("MAX", lay["l"][u], lay["l"][u], w.rows, L_MIN)
        pe.simd_unary("RECIP", lay["l"][u], lay["r"], w.rows)
        if t >= 2:
            pe.nop(Engine.SIMD, wait=(st, t - 1))
        pe.simd_row_bcast("MUL", lay["o"], lay["r"], lay["ob"][u], w.rows, d.ev, out_dtype=dt, signal=fin)

    def merge_and_final(j: int) -> None:
        merge(j)
        if jobs[j].last:
            final(jobs[j].t)

    def store_last(j: int) -> None:
        if jobs[j].last:
            store(jobs[j].t)

    nj = len(jobs)
    for j in range(nj):
        transpose(j)
    run_ahead(nj, scores, pv_)
    run_ahead(nj, softmax, merge_and_final)
    run_ahead(nj, load, store_last, depth=2)
