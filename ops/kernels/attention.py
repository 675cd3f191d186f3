"""Scaled dot-product attention (`ember.attention`, causal or not, with grouped-query heads and
an optional mask) on the DPE and SIMD engines: the template, and its whole-row schedule.

The template chooses among three schedules by their predicted cycles:

- whole row (this file; no mask): work items are (batch, query head, block of `lq` query
  rows); each PE takes a contiguous range of them, and the whole key row of an item fits local
  memory. Per item, DMA loads the Q block [lq, E], and K [s, E] and V [s, Ev] of the item's
  key/value head, where s = S, or for causal attention only the keys the block can see
  (s = min(S, q0 + lq)): the keys after the block's last query are never loaded nor computed;
  the MLU transposes K to K^T [E, s]; the DPE computes scores = Q K^T [lq, s] in fp32; the SIMD
  engine scales them, sets each causal row's keys j > i to a large negative (one
  MIN-with-immediate per row over the masked tail: no mask tile is needed), and takes a
  two-pass softmax: row max, subtract, exp, row sum, reciprocal, multiply (rounded to the
  operand dtype, as the DPE's P operand); the DPE computes P V [lq, Ev] in fp32; a bf16 result
  is rounded by one SIMD copy; the DMA engine stores the block. Inputs, scores, probabilities
  and outputs are double-buffered, and the DPE runs one item ahead (scores of item t+1 before
  P V of item t), so that the DMA, MLU, DPE and SIMD engines overlap across items. Causal rows
  always see key 0, so no row is fully masked.
- key blocks (ops/kernels/attention_blocked.py; the only schedule that takes a mask): when the
  key row does not fit, or with a mask, items walk their keys in blocks with an online softmax
  (flash attention). Decode is this schedule: K and V stream once at the DRAM's rate.
- column sweeps (ops/kernels/attention_sweep.py; no mask): when the key row does not fit, the
  PEs of one grid column share every K/V block, which one DMA multicasts down the column, over
  all their query rows at once: K and V cross the memory once per sweep, not once per query
  block (long prefills, whose K/V live in DRAM).

With grouped-query heads, a plan may stack the rows of the query heads that share a key/value
head into one item (`AttentionPlan.group`): Q and the output move as one strided DMA per item,
and each K/V load, transpose and block serves all of them (the DPE sees `group` times the
rows, the causal mask repeats per head).

A mask operand is i1 (held as int32 0/1 on the chip; true = attend) or additive in the query's
dtype, of any shape that broadcasts to the scores (..., Hq, L, S); integer operands other than
an i1 mask stay on the host.
"""
from __future__ import annotations

import math

from ops.kernel import (
    ISA_DTYPE,
    ISA_ITEMSIZE,
    KernelCall,
    KernelTemplate,
    LocalArena,
    local_bytes,
    register_kernel,
)
from ops.kernels import attention_blocked as blocked
from ops.kernels import attention_sweep as sweep
from ops.kernels.attention_replay import dpe_cycles, replay_busiest
from ops.kernels.attention_work import (
    ALIGN,
    DEBUG,
    NEG_BIG,
    AttentionPlan,
    Dims,
    Item,
    MaskView,
    busiest,
    dims_of,
    items,
    mask_view,
    q_dma,
    run_ahead,
    split,
)
from simulator.isa import Engine

LQ_CHOICES = (8, 16, 32, 64, 128, 256)
KS_CHOICES = (16, 32, 64, 128, 256, 512)


class AttentionKernel(KernelTemplate):
    """`ember.attention` as a kernel: see the module docstring for its schedules."""
    ops = ("attention",)
    integer_operands = True       # an i1 mask (int32 0/1); `accepts` refuses any other integer

    def accepts(self, op, operands, result, attrs, chip=None) -> bool:
        q, k, v = operands[:3]
        mask = operands[3] if len(operands) > 3 else None
        if any(t is None for t in (q, k, v)):
            return False
        if q.dtype not in ("f32", "bf16") or len({q.dtype, k.dtype, v.dtype, result.dtype}) != 1:
            return False
        if mask is not None and mask.dtype not in ("i1", q.dtype):
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
        d = Dims(1, hq, hk, q.shape[-2], k.shape[-2], q.shape[-1], v.shape[-1], it, ISA_DTYPE[q.dtype])
        if mask is not None:
            # the largest mask tile a one-row item of KS_CHOICES[0] keys reads
            m = MaskView((), (), 1, 1, 1, 4, mask.dtype == "i1")
            return blocked.layout(d, 1, min(KS_CHOICES[0], d.s), 1, m)["end"] <= local_bytes(chip)
        return (_layout(d, 1)["end"] <= local_bytes(chip)
                or blocked.layout(d, 1, KS_CHOICES[0])["end"] <= local_bytes(chip))

    # ---- plans and cost model -------------------------------------------------------------
    def plans(self, call: KernelCall, chip):
        d = dims_of(call)
        mask = _mask(call)
        for group in sorted({1, d.h // d.hk}):
            rows = d.batch * d.h // group
            seen = set()
            for lq in (*LQ_CHOICES, d.l):
                lq = min(lq, d.l)
                if mask is not None or lq in seen or _layout(d, lq * group)["end"] > chip.local_mem.bytes:
                    continue
                seen.add(lq)
                n = rows * math.ceil(d.l / lq)
                yield AttentionPlan(max(1, min(chip.num_pes, n)), lq, 0, group)
            if seen:
                continue
            # the key row does not fit (or a mask is read per block): walk it in blocks with an
            # online softmax; with a mask, one block may hold the whole row
            for lq in sorted({min(c, d.l) for c in LQ_CHOICES}):
                for ks in sorted({min(c, d.s) for c in KS_CHOICES} if mask is not None else KS_CHOICES):
                    if ((ks < d.s or mask is not None)
                            and blocked.layout(d, lq, ks, group, mask)["end"] <= chip.local_mem.bytes):
                        n = rows * math.ceil(d.l / lq)
                        yield AttentionPlan(max(1, min(chip.num_pes, n)), lq, ks, group)
        if mask is None and not any(_layout(d, min(c, d.l))["end"] <= chip.local_mem.bytes for c in LQ_CHOICES):
            yield from sweep.plans(d, chip, bool(call.attrs.get("causal")))

    def flops(self, call: KernelCall) -> int:
        """2 (E + Ev) per score computed: for causal attention half the scores (a lower bound
        of what row i's i + 1 keys take, also when S > L)."""
        d = dims_of(call)
        f = 2 * d.batch * d.h * d.l * d.s * (d.e + d.ev)
        if not call.attrs.get("causal"):
            return f
        seen = d.l * (d.l + 1) // 2 if d.s >= d.l else d.s * (d.s + 1) // 2 + (d.l - d.s) * d.s
        return min(f // 2, 2 * d.batch * d.h * seen * (d.e + d.ev))

    def bytes_moved(self, call: KernelCall) -> dict[str, int]:
        moved = super().bytes_moved(call)
        if call.attrs.get("causal"):
            # keys past the last query row are never read
            d = dims_of(call)
            unseen = max(0, d.s - d.l) * d.item * d.batch * d.hk
            moved[call.inputs[1].space] -= unseen * d.e
            moved[call.inputs[2].space] -= unseen * d.ev
        return moved

    def predict(self, call: KernelCall, plan, chip) -> int:
        d = dims_of(call)
        causal = bool(call.attrs.get("causal"))
        if isinstance(plan, sweep.SweepPlan):
            return sweep.predict(call, d, plan, causal, chip)
        if plan.ks:
            return blocked.predict(call, d, plan, causal, chip, _mask(call))
        return _predict_rows(call, d, plan, causal, chip)

    def choose(self, call: KernelCall, chip):
        """The plan with the fewest predicted cycles, replaying plans in order of a bound
        their prediction cannot go below, and none whose bound is already beaten."""
        d = dims_of(call)
        causal = bool(call.attrs.get("causal"))

        def bound(plan) -> float:
            if isinstance(plan, sweep.SweepPlan):
                return sweep.bound(call, d, plan, causal, chip)
            return blocked.bound(d, plan, causal, chip) if plan.ks else _bound_rows(d, plan, causal, chip)

        best, best_cycles = None, math.inf
        for lower, _, plan in sorted((bound(p), i, p) for i, p in enumerate(self.plans(call, chip))):
            if lower >= best_cycles:
                break
            cycles = self.predict(call, plan, chip)
            if cycles < best_cycles:
                best, best_cycles = plan, cycles
        if best is None:
            raise ValueError(f"ember.attention: no tiling of {[p.shape if p else None for p in call.inputs]} "
                             f"fits local memory of {chip.local_mem.bytes} bytes")
        return best

    def emit(self, call: KernelCall, plan, chip, builder) -> None:
        d = dims_of(call)
        causal = bool(call.attrs.get("causal"))
        if isinstance(plan, sweep.SweepPlan):
            sweep.emit(call, d, plan, causal, chip, builder)
            return
        if plan.ks:
            blocked.emit(call, d, plan, causal, builder, _mask(call))
            return
        lay = _layout(d, plan.lq * plan.group)
        for p, work in enumerate(split(items(d, plan.lq, causal, plan.group), plan.pes)):
            if work:
                _emit_pe(call, d, lay, work, causal, builder.pe(p), builder)


def _mask(call: KernelCall) -> MaskView | None:
    """The call's mask, if it has one (an int32 placement is an i1 mask)."""
    mask = call.inputs[3] if len(call.inputs) > 3 else None
    if mask is None:
        return None
    if mask.dtype not in ("int32", call.inputs[0].dtype):
        raise ValueError(f"ember.attention: a mask held as {mask.dtype} (an i1 mask is held as int32, an "
                         f"additive one as the query's {call.inputs[0].dtype})")
    return mask_view(call, mask.dtype == "int32")


# ----------------------------------------------------------------------------- whole rows

def _layout(d: Dims, lq: int) -> dict:
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


def _runs(work: list[Item]) -> list[int]:
    """The K/V run of each item: consecutive items with the same key/value head and keys."""
    run, out = -1, []
    for t, w in enumerate(work):
        if t == 0 or (w.kv, w.s) != (work[t - 1].kv, work[t - 1].s):
            run += 1
        out.append(run)
    return out


def _predict_rows(call: KernelCall, d: Dims, plan: AttentionPlan, causal: bool, chip) -> int:
    """The busiest PEs' own commands replayed on the chip's engines (attention_replay), with
    the PEs that stream meanwhile sharing the memories; the slowest of them."""
    lay = _layout(d, plan.lq * plan.group)
    cycles = replay_busiest(chip, split(items(d, plan.lq, causal, plan.group), plan.pes),
                            lambda work, pe, b: _emit_pe(call, d, lay, work, causal, pe, b))
    if DEBUG:
        print(plan, cycles)
    return cycles


def _bound_rows(d: Dims, plan: AttentionPlan, causal: bool, chip) -> float:
    """What `_predict_rows` cannot go below: the DPE work of the PE it replays first."""
    _, heaviest = busiest(split(items(d, plan.lq, causal, plan.group), plan.pes), 1)
    return sum(dpe_cycles(chip, w.rows, d.e, w.s, d.dt) + dpe_cycles(chip, w.rows, w.s, d.ev, d.dt)
               for work in heaviest for w in work)


def _emit_pe(call: KernelCall, d: Dims, lay: dict, work: list[Item], causal: bool, pe,
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
        q_dma(pe, q.space, q.addr + (w.bh * d.l + w.q0) * d.e * it_, lay["q"][t % 2], w, d, d.e, True,
               wait=(sc, t - 1) if t >= 2 else None, signal=ldq)

    def store(t: int) -> None:
        w, sl = work[t], t % 2
        q_dma(pe, out.space, out.addr + (w.bh * d.l + w.q0) * d.ev * it_, lay["ob"][sl], w, d, d.ev, False,
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
    run_ahead(n_items, scores, pv_)
    # SIMD queue: softmax t+1 before rounding t (bf16)
    run_ahead(n_items, softmax, round_out if bf else lambda t: None)
    # DMA queue: loads of items 0, 1, then per item t: loads of t+2, store of t
    run_ahead(n_items, load, store, depth=2)


register_kernel(AttentionKernel())
