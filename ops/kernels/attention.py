"""Scaled dot-product attention (`ember.attention` without a mask operand, causal or not, with
grouped-query heads) on the DPE and SIMD engines.

Work items are (batch, query head, block of `lq` query rows); each PE takes a contiguous range
of them. Per item, the whole key row of the block fits local memory ("whole S" variant):

- DMA loads the Q block [lq, E], and K [s, E] and V [s, Ev] of the item's key/value head, where
  s = S, or for causal attention only the keys the block can see (s = min(S, q0 + lq)):
  the keys after the block's last query are never loaded nor computed;
- the MLU transposes K to K^T [E, s]; the DPE computes scores = Q K^T [lq, s] in fp32;
- the SIMD engine scales them, sets each causal row's keys j > i to a large negative (one
  MIN-with-immediate per row over the masked tail: no mask tile is needed), and takes a
  two-pass softmax: row max, subtract, exp, row sum, reciprocal, multiply (rounded to the
  operand dtype, as the DPE's P operand);
- the DPE computes P V [lq, Ev] in fp32; a bf16 result is rounded by one SIMD copy; the DMA
  engine stores the block.

With grouped-query heads, a plan may stack the rows of the query heads that share a key/value
head into one item (`AttentionPlan.group`): Q and the output move as one strided DMA per item,
and each K/V load, transpose and block serves all of them (the DPE sees `group` times the
rows, the causal mask repeats per head).

Inputs, scores, probabilities and outputs are double-buffered, and the DPE runs one item ahead
(scores of item t+1 before P V of item t), so that the DMA, MLU, DPE and SIMD engines overlap
across items. Causal rows always see key 0, so no row is fully masked.

When the key row does not fit, plans walk it in blocks of `ks` keys (flash attention): per
block, scores and masking as above, then an online softmax: the block's row max updates the
running max m, the block's exponentials sum into the running sum l (rescaled by
exp(m_old - m)), the DPE computes the block's P V into a scratch tile T, and the SIMD engine
merges it into the fp32 accumulator O = O * exp(m_old - m) + T; after the last block,
O / l is stored. Blocks are pipelined like items (K, V, scores, P and T double-buffered).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ops.kernel import (
    ISA_DTYPE,
    ISA_ITEMSIZE,
    KernelCall,
    KernelTemplate,
    LocalArena,
    local_bytes,
    register_kernel,
    streaming_dma_cycles,
)
from simulator.isa import Engine

ALIGN = 64
#: what masked scores become (exp(NEG_BIG - max) == 0 in fp32)
NEG_BIG = -3.0e38
#: Fraction of the other PEs' transfers that one DMA waits behind (as the row-wise kernels),
#: and of the last item's compute that follows the busiest engine's work.
FILL_SHARE = 0.5
_DEBUG = bool(__import__("os").environ.get("EMBER_ATTENTION_DEBUG"))
LQ_CHOICES = (8, 16, 32, 64, 128, 256)
KS_CHOICES = (16, 32, 64, 128, 256, 512)


@dataclass(frozen=True)
class AttentionPlan:
    pes: int    # PEs that share the work items
    lq: int     # query rows per item (per query head)
    ks: int = 0  # keys per block (online softmax over blocks), 0: the whole key row at once
    group: int = 1  # query heads of one key/value head in one item (their rows stacked): they
                    # share each K/V load, transpose and block, and the DPE sees `group` times the rows


@dataclass(frozen=True)
class _Dims:
    batch: int      # product of the leading batch dims
    h: int          # query heads
    hk: int         # key/value heads
    l: int          # query length
    s: int          # key length
    e: int          # head size of query/key
    ev: int         # head size of value
    item: int       # operand bytes per element
    dt: str         # operand ISA dtype


def _dims(call: KernelCall) -> _Dims:
    q, k, v = call.inputs[:3]
    h = q.shape[-3] if len(q.shape) >= 3 else 1
    hk = k.shape[-3] if len(k.shape) >= 3 else 1
    batch = math.prod(q.shape[:-3]) if len(q.shape) >= 3 else 1
    return _Dims(batch, h, hk, q.shape[-2], k.shape[-2], q.shape[-1], v.shape[-1],
                 ISA_ITEMSIZE[q.dtype], q.dtype)


def _layout(d: _Dims, lq: int) -> dict:
    arena = LocalArena(ALIGN)
    take = arena.take

    it = d.item
    lay = {"q": [take(lq * d.e * it) for _ in range(2)],
           "k": [take(d.s * d.e * it) for _ in range(2)],
           "v": [take(d.s * d.ev * it) for _ in range(2)],
           "kt": take(d.e * d.s * it),
           "sc": [take(lq * d.s * 4) for _ in range(2)]}
    lay["p"] = lay["sc"] if it == 4 else [take(lq * d.s * it) for _ in range(2)]
    lay["o"] = [take(lq * d.ev * 4) for _ in range(2)]
    lay["ob"] = lay["o"] if it == 4 else [take(lq * d.ev * it) for _ in range(2)]
    lay["mx"] = take(lq * 4)
    lay["sm"] = take(lq * 4)
    lay["end"] = arena.end
    return lay


def _layout_blocked(d: _Dims, lq: int, ks: int) -> dict:
    arena = LocalArena(ALIGN)
    take = arena.take

    it = d.item
    lay = {"q": [take(lq * d.e * it) for _ in range(2)],
           "k": [take(ks * d.e * it) for _ in range(2)],
           "v": [take(ks * d.ev * it) for _ in range(2)],
           "kt": take(d.e * ks * it),
           "sc": [take(lq * ks * 4) for _ in range(2)]}
    lay["p"] = lay["sc"] if it == 4 else [take(lq * ks * it) for _ in range(2)]
    lay["t"] = [take(lq * d.ev * 4) for _ in range(2)]
    lay["o"] = take(lq * d.ev * 4)
    lay["ob"] = [take(lq * d.ev * it) for _ in range(2)]
    for name in ("m", "l", "a"):
        lay[name] = [take(lq * 4) for _ in range(2)]
    for name in ("cm", "mn", "cs", "r"):
        lay[name] = take(lq * 4)
    lay["end"] = arena.end
    return lay


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


@dataclass(frozen=True)
class _Item:
    bh: int     # batch * H + head (the first of `heads` consecutive query heads)
    kv: int     # batch * Hk + key/value head
    q0: int     # first query row
    n: int      # query rows per head
    s: int      # keys it sees
    heads: int = 1  # query heads whose rows are stacked (n rows each, query positions q0 ...)

    @property
    def rows(self) -> int:
        return self.heads * self.n


def _items(d: _Dims, lq: int, causal: bool, group: int = 1) -> list[_Item]:
    """Work items ordered so that the query heads of one key/value head, on the same query
    block, follow each other: they share the loaded K, V and K^T. With `group` > 1, that many
    such heads are one item (their rows stacked)."""
    rep = d.h // d.hk
    out = []
    for b in range(d.batch):
        for j in range(d.hk):
            for q0 in range(0, d.l, lq):
                n = min(lq, d.l - q0)
                s = min(d.s, q0 + n) if causal else d.s
                for g in range(0, rep, group):
                    out.append(_Item(b * d.h + j * rep + g, b * d.hk + j, q0, n, s, group))
    return out


def _q_dma(pe, space: str, addr: int, local: int, w: _Item, d: _Dims, width: int, to_local: bool, **sync) -> None:
    """The item's rows of Q (to local) or of the output (from local): one row block per head,
    heads d.l rows apart in memory, stacked in local memory."""
    nbytes = w.n * width * d.item
    if w.heads == 1:
        if to_local:
            pe.dma(space, addr, "local", local, nbytes=nbytes, **sync)
        else:
            pe.dma("local", local, space, addr, nbytes=nbytes, **sync)
        return
    head = d.l * width * d.item
    if to_local:
        pe.dma(space, addr, "local", local, rows=w.heads, row_bytes=nbytes, src_stride=head, dst_stride=nbytes, **sync)
    else:
        pe.dma("local", local, space, addr, rows=w.heads, row_bytes=nbytes, src_stride=nbytes, dst_stride=head, **sync)


def _runs(work: list[_Item]) -> list[int]:
    """The K/V run of each item: consecutive items with the same key/value head and keys."""
    run, out = -1, []
    for t, w in enumerate(work):
        if t == 0 or (w.kv, w.s) != (work[t - 1].kv, work[t - 1].s):
            run += 1
        out.append(run)
    return out


def _split(items: list, pes: int) -> list[list]:
    per = math.ceil(len(items) / pes)
    return [items[p * per:(p + 1) * per] for p in range(pes)]


class AttentionKernel(KernelTemplate):
    ops = ("attention",)

    def accepts(self, op, operands, result, attrs, chip=None) -> bool:
        q, k, v = operands[:3]
        mask = operands[3] if len(operands) > 3 else None
        if mask is not None or any(t is None for t in (q, k, v)):
            return False
        if q.dtype not in ("f32", "bf16") or len({q.dtype, k.dtype, v.dtype, result.dtype}) != 1:
            return False
        if not (q.rank == k.rank == v.rank >= 2) or q.rank >= 4 and q.shape[:-3] != k.shape[:-3]:
            return False
        if min(q.shape[-2], k.shape[-2], q.shape[-1], v.shape[-1]) < 1:
            return False
        hq = q.shape[-3] if q.rank >= 3 else 1
        hk = k.shape[-3] if k.rank >= 3 else 1
        if hq % hk:
            return False
        it = ISA_ITEMSIZE[ISA_DTYPE[q.dtype]]
        d = _Dims(1, hq, hk, q.shape[-2], k.shape[-2], q.shape[-1], v.shape[-1], it, ISA_DTYPE[q.dtype])
        return (_layout(d, 1)["end"] <= local_bytes(chip)
                or _layout_blocked(d, 1, KS_CHOICES[0])["end"] <= local_bytes(chip))

    # ---- plans and cost model -------------------------------------------------------------
    def plans(self, call: KernelCall, chip):
        d = _dims(call)
        for group in sorted({1, d.h // d.hk}):
            rows = d.batch * d.h // group
            seen = set()
            for lq in (*LQ_CHOICES, d.l):
                lq = min(lq, d.l)
                if lq in seen or _layout(d, lq * group)["end"] > chip.local_mem.bytes:
                    continue
                seen.add(lq)
                n = rows * math.ceil(d.l / lq)
                yield AttentionPlan(max(1, min(chip.num_pes, n)), lq, 0, group)
            if seen:
                continue
            # the key row does not fit: walk it in blocks with an online softmax
            for lq in sorted({min(c, d.l) for c in LQ_CHOICES}):
                for ks in KS_CHOICES:
                    if ks < d.s and _layout_blocked(d, lq * group, ks)["end"] <= chip.local_mem.bytes:
                        n = rows * math.ceil(d.l / lq)
                        yield AttentionPlan(max(1, min(chip.num_pes, n)), lq, ks, group)

    def flops(self, call: KernelCall) -> int:
        d = _dims(call)
        f = 2 * d.batch * d.h * d.l * d.s * (d.e + d.ev)
        return f // 2 if call.attrs.get("causal") else f

    def bytes_moved(self, call: KernelCall) -> dict[str, int]:
        moved = super().bytes_moved(call)
        if call.attrs.get("causal"):
            # keys past the last query row are never read
            d = _dims(call)
            unseen = max(0, d.s - d.l) * d.item * d.batch * d.hk
            moved[call.inputs[1].space] -= unseen * d.e
            moved[call.inputs[2].space] -= unseen * d.ev
        return moved

    def _engine_cycles(self, d: _Dims, it: _Item, causal: bool, chip) -> dict[str, float]:
        w, lut, lat = chip.simd.elems_per_cycle, chip.simd.lut_cycles, chip.simd.latency_cycles
        n, s = it.rows, it.s
        rows_v = n * math.ceil(s / w)
        simd = (math.ceil(n * s / w) + lat)                      # scale
        simd += 2 * (rows_v + lat)                               # max, sum
        simd += rows_v + lat                                     # subtract max
        simd += math.ceil(n * s / w) * lut + lat                 # exp
        simd += math.ceil(n / w) * lut + lat                     # reciprocal
        simd += rows_v + lat                                     # normalize
        if causal:
            for r in range(n):
                tail = s - (it.q0 + r % it.n + 1)
                if tail > 0:
                    simd += math.ceil(tail / w) + lat
        if d.item != 4:
            simd += math.ceil(n * d.ev / w) + lat
        nt = chip.dpe.n_tile
        kt = int(chip.dpe.macs_per_cycle[d.dt]) // nt
        dpe = (math.ceil(d.e / kt) * math.ceil(s / nt) * (n + chip.dpe.pass_overhead_cycles)
               + math.ceil(s / kt) * math.ceil(d.ev / nt) * (n + chip.dpe.pass_overhead_cycles))
        mlu = math.ceil(s * d.e * d.item / chip.mlu.bytes_per_cycle) + chip.mlu.latency_cycles
        return {"simd": simd, "dpe": dpe, "mlu": mlu}

    def _dma(self, nbytes: int, space: str, pes: int, chip) -> float:
        """One DMA between `space` and a PE while every PE streams (as the row-wise kernels
        price it): latency, bytes at the rate one PE gets alone, and a share of the wait behind
        the other PEs' transfers on the shared memory and the column's NoC port."""
        return streaming_dma_cycles(nbytes, space, pes, chip)

    def _pe_cycles(self, call: KernelCall, d: _Dims, work: list[_Item], causal: bool, pes: int,
                   chip) -> dict[str, float]:
        q, k, v = call.inputs[:3]
        out = call.output
        run = _runs(work)
        eng = {"simd": 0.0, "dpe": 0.0, "mlu": 0.0, "dma": 0.0, "chain": 0.0}
        for t, w in enumerate(work):
            c = self._engine_cycles(d, w, causal, chip)
            dma = (self._dma(w.rows * d.e * d.item, q.space, pes, chip)
                   + self._dma(w.rows * d.ev * d.item, out.space, pes, chip))
            if t == 0 or run[t] != run[t - 1]:
                eng["mlu"] += c["mlu"]
                dma += (self._dma(w.s * d.e * d.item, k.space, pes, chip)
                        + self._dma(w.s * d.ev * d.item, v.space, pes, chip))
                if run.count(run[t]) == 1:
                    # runs of one item: V of item t+2 waits for P V of item t, and K of item t+3
                    # queues behind it: two items take one item's loads, transpose, scores and
                    # P V in a row
                    eng["chain"] += (dma + c["mlu"] + c["dpe"]) / 2
            eng["simd"] += c["simd"]
            eng["dpe"] += c["dpe"]
            eng["dma"] += dma
        return eng

    def predict(self, call: KernelCall, plan: AttentionPlan, chip) -> int:
        """Per PE, the busiest engine over its items (they overlap across items), plus the
        first item's loads and transpose and the last item's softmax and P V, which overlap
        with nothing; the slowest PE."""
        d = _dims(call)
        causal = bool(call.attrs.get("causal"))
        if plan.ks:
            return self._predict_blocked(call, d, plan, causal, chip)
        worst = 0.0
        for work in _split(_items(d, plan.lq, causal, plan.group), plan.pes):
            if not work:
                continue
            eng = self._pe_cycles(call, d, work, causal, plan.pes, chip)
            head = self._pe_cycles(call, d, work[:1], causal, plan.pes, chip)
            tail = self._engine_cycles(d, work[-1], causal, chip)
            fill = head["dma"] + head["mlu"] + FILL_SHARE * (tail["simd"] + tail["dpe"])
            if _DEBUG:
                print(plan, {k_: int(v_) for k_, v_ in eng.items()}, int(fill))
            worst = max(worst, max(eng.values()) + fill)
        return int(worst)

    def _job_cycles(self, call: KernelCall, d: _Dims, w: _Item, jb: _Job, causal: bool, pes: int,
                    chip) -> dict[str, float]:
        """Engine cycles of one key block of one item (blocked path)."""
        wd, lut, lat = chip.simd.elems_per_cycle, chip.simd.lut_cycles, chip.simd.latency_cycles
        n, sj = w.rows, jb.sj
        whole = math.ceil(n * sj / wd)
        rows_v = n * math.ceil(sj / wd)
        vec = math.ceil(n / wd)
        simd = whole + lat + 2 * (rows_v + lat) + rows_v + lat + whole * lut + lat
        if not jb.first:
            simd += 3 * (vec + lat) + (vec * lut + lat) + 2 * (vec + lat)
        if d.item != 4:
            simd += whole + lat
        if causal:
            for r in range(n):
                tail = sj - max(0, w.q0 + r % w.n + 1 - jb.k0)
                if tail > 0:
                    simd += math.ceil(tail / wd) + lat
        o = math.ceil(n * d.ev / wd)
        simd += o + lat if jb.first else n * math.ceil(d.ev / wd) + o + 2 * lat
        if jb.last:
            simd += vec * lut + lat + n * math.ceil(d.ev / wd) + lat
        nt = chip.dpe.n_tile
        kt = int(chip.dpe.macs_per_cycle[d.dt]) // nt
        ovh = chip.dpe.pass_overhead_cycles
        dpe = (math.ceil(d.e / kt) * math.ceil(sj / nt) * (n + ovh)
               + math.ceil(sj / kt) * math.ceil(d.ev / nt) * (n + ovh))
        mlu = math.ceil(sj * d.e * d.item / chip.mlu.bytes_per_cycle) + chip.mlu.latency_cycles
        q, k, v = call.inputs[:3]
        dma = (self._dma(sj * d.e * d.item, k.space, pes, chip)
               + self._dma(sj * d.ev * d.item, v.space, pes, chip))
        if jb.first:
            dma += self._dma(n * d.e * d.item, q.space, pes, chip)
        if jb.last:
            dma += self._dma(n * d.ev * d.item, call.output.space, pes, chip)
        return {"simd": simd, "dpe": dpe, "mlu": mlu, "dma": dma}

    def _predict_blocked(self, call: KernelCall, d: _Dims, plan: AttentionPlan, causal: bool, chip) -> int:
        worst = 0.0
        seen: dict[tuple, dict[str, float]] = {}
        for work in _split(_items(d, plan.lq, causal, plan.group), plan.pes):
            if not work:
                continue
            eng = {"simd": 0.0, "dpe": 0.0, "mlu": 0.0, "dma": 0.0, "chain": 0.0}
            jobs = _jobs(work, plan.ks)
            for jb in jobs:
                w = work[jb.t]
                # a block's cycles depend on its size, its place in the item, and where the
                # causal diagonal crosses it: blocks alike in those are costed once
                key = (w.n, w.heads, jb.sj, jb.first, jb.last, w.q0 - jb.k0 if causal else 0)
                c = seen.get(key)
                if c is None:
                    c = seen[key] = self._job_cycles(call, d, w, jb, causal, plan.pes, chip)
                for key in c:
                    eng[key] += c[key]
                # V of block j+2 waits for P V of block j, and K of block j+3 queues behind
                # it: two blocks take one block's loads, transpose, scores and P V in a row
                eng["chain"] += (c["dma"] + c["mlu"] + c["dpe"]) / 2
            head = self._job_cycles(call, d, work[0], jobs[0], causal, plan.pes, chip)
            tail = self._job_cycles(call, d, work[-1], jobs[-1], causal, plan.pes, chip)
            fill = head["dma"] + head["mlu"] + FILL_SHARE * (tail["simd"] + tail["dpe"])
            if _DEBUG:
                print(plan, {k_: int(v_) for k_, v_ in eng.items()}, int(fill))
            worst = max(worst, max(eng.values()) + fill)
        return int(worst)

    # ---- emission -------------------------------------------------------------------------
    def emit(self, call: KernelCall, plan: AttentionPlan, chip, builder) -> None:
        d = _dims(call)
        causal = bool(call.attrs.get("causal"))
        if plan.ks:
            lay = _layout_blocked(d, plan.lq * plan.group, plan.ks)
            for p, work in enumerate(_split(_items(d, plan.lq, causal, plan.group), plan.pes)):
                if work:
                    self._emit_blocked(call, d, lay, work, _jobs(work, plan.ks), causal, builder.pe(p), builder)
            return
        lay = _layout(d, plan.lq * plan.group)
        for p, work in enumerate(_split(_items(d, plan.lq, causal, plan.group), plan.pes)):
            if work:
                self._emit_pe(call, d, lay, work, causal, builder.pe(p), builder)

    def _emit_blocked(self, call: KernelCall, d: _Dims, lay: dict, work: list[_Item], jobs: list[_Job],
                      causal: bool, pe, builder) -> None:
        """Items whose key row does not fit: jobs (item, key block), pipelined as the whole-row
        path pipelines items; per block the running row max m and sum l are updated, and the
        block's P V (into T) is merged into the item's accumulator O = O * exp(m_old - m) + T."""
        ldq, ldk, ldv, tr, sc, pr, pv, mg, fin, st = (builder.token() for _ in range(10))
        q, k, v = call.inputs[:3]
        out = call.output
        it_, dt = d.item, d.dt
        bf = it_ != 4
        scale = float(call.attrs["scale"])
        last_job = {}
        for j, jb in enumerate(jobs):
            last_job[jb.t] = j

        def load(j: int) -> None:
            jb = jobs[j]
            w = work[jb.t]
            if jb.first:
                wait = (sc, last_job[jb.t - 2] + 1) if jb.t >= 2 else None
                _q_dma(pe, q.space, q.addr + (w.bh * d.l + w.q0) * d.e * it_, lay["q"][jb.t % 2], w, d, d.e,
                       True, wait=wait, signal=ldq)
            # K's slot is free once transposed, V's once multiplied: separate waits let the
            # next block's K land (and be transposed) while this block's P V waits
            pe.dma(k.space, k.addr + (w.kv * d.s + jb.k0) * d.e * it_, "local", lay["k"][j % 2],
                   nbytes=jb.sj * d.e * it_, wait=(tr, j - 1) if j >= 2 else None, signal=ldk)
            pe.dma(v.space, v.addr + (w.kv * d.s + jb.k0) * d.ev * it_, "local", lay["v"][j % 2],
                   nbytes=jb.sj * d.ev * it_, wait=(pv, j - 1) if j >= 2 else None, signal=ldv)

        def store(t: int) -> None:
            w = work[t]
            _q_dma(pe, out.space, out.addr + (w.bh * d.l + w.q0) * d.ev * it_, lay["ob"][t % 2], w, d, d.ev,
                   False, wait=(fin, t + 1), signal=st)

        def transpose(j: int) -> None:
            if j >= 1:
                pe.nop(Engine.MLU, wait=(sc, j))
            pe.mlu_transpose(lay["k"][j % 2], lay["kt"], jobs[j].sj, d.e, dtype=dt,
                             wait=(ldk, j + 1), signal=tr)

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

        def softmax(j: int) -> None:
            jb = jobs[j]
            w = work[jb.t]
            n, sj, sl, u = w.rows, jb.sj, j % 2, jb.t % 2
            x, m, l_, a = lay["sc"][sl], lay["m"][u], lay["l"][u], lay["a"][sl]
            cm, mn, cs = lay["cm"], lay["mn"], lay["cs"]
            pe.simd_scalar("MUL", x, x, n * sj, scale, wait=(sc, j + 1))
            if causal:
                for r in range(n):
                    c0 = max(0, w.q0 + r % w.n + 1 - jb.k0)
                    if c0 < sj:
                        at = x + (r * sj + c0) * 4
                        pe.simd_scalar("MIN", at, at, sj - c0, NEG_BIG)
            cmds = []
            if jb.first:
                pe.simd_row_reduce("MAX", x, m, n, sj)
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
            pe.simd_unary("RECIP", lay["l"][u], lay["r"], w.rows)
            if t >= 2:
                pe.nop(Engine.SIMD, wait=(st, t - 1))
            pe.simd_row_bcast("MUL", lay["o"], lay["r"], lay["ob"][u], w.rows, d.ev, out_dtype=dt, signal=fin)

        nj = len(jobs)
        for j in range(nj):
            transpose(j)
        scores(0)
        for j in range(nj):
            if j + 1 < nj:
                scores(j + 1)
            pv_(j)
        softmax(0)
        for j in range(nj):
            if j + 1 < nj:
                softmax(j + 1)
            merge(j)
            if jobs[j].last:
                final(jobs[j].t)
        for j in range(min(2, nj)):
            load(j)
        for j in range(nj):
            if j + 2 < nj:
                load(j + 2)
            if jobs[j].last:
                store(jobs[j].t)

    def _emit_pe(self, call: KernelCall, d: _Dims, lay: dict, work: list[_Item], causal: bool, pe,
                 builder) -> None:
        ldq, ldk, ldv, tr, sc, pr, pv, fin, st = (builder.token() for _ in range(9))
        q, k, v = call.inputs[:3]
        out = call.output
        it_, dt = d.item, d.dt
        bf = it_ != 4
        scale = float(call.attrs["scale"])
        n_items = len(work)
        run = _runs(work)
        first = {}                           # run -> its first item
        last = {}                            # run -> its last item
        for t, r in enumerate(run):
            first.setdefault(r, t)
            last[r] = t

        def load(t: int) -> None:
            """Q of item t, and K, V when it starts a run (into the run's slot)."""
            w, r = work[t], run[t]
            if first[r] == t:
                # the slot's K is free once the run two back is transposed, its V once that
                # run's P V are done
                pe.dma(k.space, k.addr + w.kv * d.s * d.e * it_, "local", lay["k"][r % 2],
                       nbytes=w.s * d.e * it_, wait=(tr, r - 1) if r >= 2 else None, signal=ldk)
                pe.dma(v.space, v.addr + w.kv * d.s * d.ev * it_, "local", lay["v"][r % 2],
                       nbytes=w.s * d.ev * it_, wait=(pv, last[r - 2] + 1) if r >= 2 else None, signal=ldv)
            _q_dma(pe, q.space, q.addr + (w.bh * d.l + w.q0) * d.e * it_, lay["q"][t % 2], w, d, d.e, True,
                   wait=(sc, t - 1) if t >= 2 else None, signal=ldq)

        def store(t: int) -> None:
            w, sl = work[t], t % 2
            _q_dma(pe, out.space, out.addr + (w.bh * d.l + w.q0) * d.ev * it_, lay["ob"][sl], w, d, d.ev, False,
                   wait=(fin, t + 1) if bf else (pv, t + 1), signal=st)

        def transpose(r: int) -> None:
            w = work[first[r]]
            if first[r] >= 1:
                pe.nop(Engine.MLU, wait=(sc, first[r]))     # K^T free: earlier scores done
            pe.mlu_transpose(lay["k"][r % 2], lay["kt"], w.s, d.e, dtype=dt, wait=(ldk, r + 1), signal=tr)

        def scores(t: int) -> None:
            w = work[t]
            pe.nop(Engine.DPE, wait=(ldq, t + 1))
            pe.dpe_matmul(lay["q"][t % 2], lay["kt"], lay["sc"][t % 2], w.rows, d.e, w.s, dtype=dt,
                          wait=(tr, run[t] + 1), signal=sc)

        def pv_(t: int) -> None:
            w, sl = work[t], t % 2
            if t >= 2:   # output slot free: its previous block stored (fp32) or rounded (bf16)
                pe.nop(Engine.DPE, wait=(fin, t - 1) if bf else (st, t - 1))
            pe.nop(Engine.DPE, wait=(ldv, run[t] + 1))
            pe.dpe_matmul(lay["p"][sl], lay["v"][run[t] % 2], lay["o"][sl], w.rows, w.s, d.ev, dtype=dt,
                          wait=(pr, t + 1), signal=pv)

        def softmax(t: int) -> None:
            w, sl = work[t], t % 2
            s_, n = w.s, w.rows
            x, mx, sm = lay["sc"][sl], lay["mx"], lay["sm"]
            pe.simd_scalar("MUL", x, x, n * s_, scale, wait=(sc, t + 1))
            if causal:
                for r in range(n):
                    c0 = w.q0 + r % w.n + 1
                    if c0 < s_:
                        pe.simd_scalar("MIN", x + (r * s_ + c0) * 4, x + (r * s_ + c0) * 4, s_ - c0, NEG_BIG)
            pe.simd_row_reduce("MAX", x, mx, n, s_)
            pe.simd_row_bcast("SUB", x, mx, x, n, s_)
            pe.simd_unary("EXP", x, x, n * s_)
            pe.simd_row_reduce("ADD", x, sm, n, s_)
            pe.simd_unary("RECIP", sm, sm, n)
            pe.simd_row_bcast("MUL", x, sm, lay["p"][sl], n, s_, out_dtype=dt, signal=pr)

        def round_out(t: int) -> None:
            w, sl = work[t], t % 2
            if t >= 2:
                pe.nop(Engine.SIMD, wait=(st, t - 1))
            pe.simd_unary("COPY", lay["o"][sl], lay["ob"][sl], w.rows * d.ev, out_dtype=dt,
                          wait=(pv, t + 1), signal=fin)

        # MLU queue: one transpose per run
        for r in range(run[-1] + 1):
            transpose(r)
        # DPE queue: scores 0, then scores t+1 before P V t
        scores(0)
        for t in range(n_items):
            if t + 1 < n_items:
                scores(t + 1)
            pv_(t)
        # SIMD queue: softmax t+1 before rounding t (bf16)
        softmax(0)
        for t in range(n_items):
            if t + 1 < n_items:
                softmax(t + 1)
            if bf:
                round_out(t)
        # DMA queue: loads of items 0, 1, then per item t: loads of t+2, store of t
        for t in range(min(2, n_items)):
            load(t)
        for t in range(n_items):
            if t + 2 < n_items:
                load(t + 2)
            store(t)


register_kernel(AttentionKernel())
