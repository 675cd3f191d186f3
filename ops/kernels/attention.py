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

Inputs, scores, probabilities and outputs are double-buffered, and the DPE runs one item ahead
(scores of item t+1 before P V of item t), so that the DMA, MLU, DPE and SIMD engines overlap
across items. Causal rows always see key 0, so no row is fully masked.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ops.kernel import (
    ISA_DTYPE,
    ISA_ITEMSIZE,
    KernelCall,
    KernelTemplate,
    register_kernel,
)
from simulator.isa import Engine

#: `accepts` is not told the chip: instances whose smallest plan exceeds the local memory of
#: the smallest chip we ship ("tiny") stay on the host.
MIN_LOCAL_BYTES = 64 * 1024
ALIGN = 64
#: what masked scores become (exp(NEG_BIG - max) == 0 in fp32)
NEG_BIG = -3.0e38
#: Fraction of the other PEs' transfers that one DMA waits behind (as the row-wise kernels),
#: and of the last item's compute that follows the busiest engine's work.
QUEUE_SHARE = 0.8
FILL_SHARE = 0.5
_DEBUG = bool(__import__("os").environ.get("EMBER_ATTENTION_DEBUG"))
LQ_CHOICES = (8, 16, 32, 64, 128, 256)


def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


@dataclass(frozen=True)
class AttentionPlan:
    pes: int    # PEs that share the work items
    lq: int     # query rows per item


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
    pos = 0

    def take(nbytes: int) -> int:
        nonlocal pos
        addr = pos
        pos += _align(nbytes)
        return addr

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
    lay["end"] = pos
    return lay


@dataclass(frozen=True)
class _Item:
    bh: int     # batch * H + head
    kv: int     # batch * Hk + key/value head
    q0: int     # first query row
    n: int      # query rows
    s: int      # keys it sees


def _items(d: _Dims, lq: int, causal: bool) -> list[_Item]:
    """Work items ordered so that the query heads of one key/value head, on the same query
    block, follow each other: they share the loaded K, V and K^T."""
    rep = d.h // d.hk
    out = []
    for b in range(d.batch):
        for j in range(d.hk):
            for q0 in range(0, d.l, lq):
                n = min(lq, d.l - q0)
                s = min(d.s, q0 + n) if causal else d.s
                for g in range(rep):
                    out.append(_Item(b * d.h + j * rep + g, b * d.hk + j, q0, n, s))
    return out


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

    def accepts(self, op, operands, result, attrs) -> bool:
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
        return _layout(d, 1)["end"] <= MIN_LOCAL_BYTES

    # ---- plans and cost model -------------------------------------------------------------
    def plans(self, call: KernelCall, chip):
        d = _dims(call)
        rows = d.batch * d.h
        seen = set()
        for lq in (*LQ_CHOICES, d.l):
            lq = min(lq, d.l)
            if lq in seen or _layout(d, lq)["end"] > chip.local_mem.bytes:
                continue
            seen.add(lq)
            n = rows * math.ceil(d.l / lq)
            yield AttentionPlan(max(1, min(chip.num_pes, n)), lq)

    def flops(self, call: KernelCall) -> int:
        d = _dims(call)
        f = 2 * d.batch * d.h * d.l * d.s * (d.e + d.ev)
        return f // 2 if call.attrs.get("causal") else f

    def bytes_moved(self, call: KernelCall) -> dict[str, int]:
        moved = super().bytes_moved(call)
        if call.attrs.get("causal"):
            # keys past the last query row are never read
            d = _dims(call)
            unseen = max(0, d.s - d.l) * (d.e + d.ev) * d.item * d.batch * d.hk
            moved[call.inputs[1].space] -= unseen
        return moved

    def _engine_cycles(self, d: _Dims, it: _Item, causal: bool, chip) -> dict[str, float]:
        w, lut, lat = chip.simd.elems_per_cycle, chip.simd.lut_cycles, chip.simd.latency_cycles
        n, s = it.n, it.s
        rows_v = n * math.ceil(s / w)
        simd = (math.ceil(n * s / w) + lat)                      # scale
        simd += 2 * (rows_v + lat)                               # max, sum
        simd += rows_v + lat                                     # subtract max
        simd += math.ceil(n * s / w) * lut + lat                 # exp
        simd += math.ceil(n / w) * lut + lat                     # reciprocal
        simd += rows_v + lat                                     # normalize
        if causal:
            for r in range(n):
                tail = s - (it.q0 + r + 1)
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
        clk = chip.clock_hz
        mem = {"dram": chip.dram_bytes_per_s, "sram": chip.sram.bytes_per_s}[space] / clk
        link = chip.noc.link_bytes_per_s / clk
        alone = min(mem, link, chip.local_mem.bytes_per_s / clk)
        per_col = math.ceil(pes / chip.pe_grid.cols)
        lat = chip.dma.latency_cycles + chip.noc.hop_latency_cycles * chip.pe_grid.rows
        mine = nbytes / alone
        return lat + mine + QUEUE_SHARE * max(0.0, nbytes * max(pes / mem, per_col / link) - mine)

    def _pe_cycles(self, call: KernelCall, d: _Dims, work: list[_Item], causal: bool, pes: int,
                   chip) -> dict[str, float]:
        q, k, v = call.inputs[:3]
        out = call.output
        run = _runs(work)
        eng = {"simd": 0.0, "dpe": 0.0, "mlu": 0.0, "dma": 0.0, "chain": 0.0}
        for t, w in enumerate(work):
            c = self._engine_cycles(d, w, causal, chip)
            dma = (self._dma(w.n * d.e * d.item, q.space, pes, chip)
                   + self._dma(w.n * d.ev * d.item, out.space, pes, chip))
            if t == 0 or run[t] != run[t - 1]:
                eng["mlu"] += c["mlu"]
                dma += (self._dma(w.s * d.e * d.item, k.space, pes, chip)
                        + self._dma(w.s * d.ev * d.item, v.space, pes, chip))
                if run.count(run[t]) == 1:
                    # runs of one item: loads of item t+2 wait for P V of item t, so two items
                    # take one item's loads, transpose, scores, softmax and P V in a row
                    eng["chain"] += (dma + c["mlu"] + c["dpe"] + c["simd"]) / 2
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
        worst = 0.0
        for work in _split(_items(d, plan.lq, causal), plan.pes):
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

    # ---- emission -------------------------------------------------------------------------
    def emit(self, call: KernelCall, plan: AttentionPlan, chip, builder) -> None:
        d = _dims(call)
        causal = bool(call.attrs.get("causal"))
        lay = _layout(d, plan.lq)
        for p, work in enumerate(_split(_items(d, plan.lq, causal), plan.pes)):
            if work:
                self._emit_pe(call, d, lay, work, causal, builder.pe(p), builder)

    def _emit_pe(self, call: KernelCall, d: _Dims, lay: dict, work: list[_Item], causal: bool, pe,
                 builder) -> None:
        ldq, ldkv, tr, sc, pr, pv, fin, st = (builder.token() for _ in range(8))
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
                wait = (pv, last[r - 2] + 1) if r >= 2 else None     # slot's previous run done
                pe.dma(k.space, k.addr + w.kv * d.s * d.e * it_, "local", lay["k"][r % 2],
                       nbytes=w.s * d.e * it_, wait=wait, signal=ldkv)
                pe.dma(v.space, v.addr + w.kv * d.s * d.ev * it_, "local", lay["v"][r % 2],
                       nbytes=w.s * d.ev * it_, signal=ldkv)
            pe.dma(q.space, q.addr + (w.bh * d.l + w.q0) * d.e * it_, "local", lay["q"][t % 2],
                   nbytes=w.n * d.e * it_, wait=(sc, t - 1) if t >= 2 else None, signal=ldq)

        def store(t: int) -> None:
            w, sl = work[t], t % 2
            pe.dma("local", lay["ob"][sl], out.space, out.addr + (w.bh * d.l + w.q0) * d.ev * it_,
                   nbytes=w.n * d.ev * it_, wait=(fin, t + 1) if bf else (pv, t + 1), signal=st)

        def transpose(r: int) -> None:
            w = work[first[r]]
            if first[r] >= 1:
                pe.nop(Engine.MLU, wait=(sc, first[r]))     # K^T free: earlier scores done
            pe.mlu_transpose(lay["k"][r % 2], lay["kt"], w.s, d.e, dtype=dt, wait=(ldkv, 2 * r + 2), signal=tr)

        def scores(t: int) -> None:
            w = work[t]
            pe.nop(Engine.DPE, wait=(ldq, t + 1))
            pe.dpe_matmul(lay["q"][t % 2], lay["kt"], lay["sc"][t % 2], w.n, d.e, w.s, dtype=dt,
                          wait=(tr, run[t] + 1), signal=sc)

        def pv_(t: int) -> None:
            w, sl = work[t], t % 2
            if t >= 2:   # output slot free: its previous block stored (fp32) or rounded (bf16)
                pe.nop(Engine.DPE, wait=(fin, t - 1) if bf else (st, t - 1))
            pe.dpe_matmul(lay["p"][sl], lay["v"][run[t] % 2], lay["o"][sl], w.n, w.s, d.ev, dtype=dt,
                          wait=(pr, t + 1), signal=pv)

        def softmax(t: int) -> None:
            w, sl = work[t], t % 2
            s_, n = w.s, w.n
            x, mx, sm = lay["sc"][sl], lay["mx"], lay["sm"]
            pe.simd_scalar("MUL", x, x, n * s_, scale, wait=(sc, t + 1))
            if causal:
                for r in range(n):
                    c0 = w.q0 + r + 1
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
            pe.simd_unary("COPY", lay["o"][sl], lay["ob"][sl], w.n * d.ev, out_dtype=dt,
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
