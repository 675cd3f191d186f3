"""What the attention kernel's schedules share: the problem's dimensions, work items (batch,
query heads, block of query rows), their Q/output DMAs, and where an attention mask's
elements lie (`MaskView`).

See ops/kernels/attention.py for the template and its schedules.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

from ops.kernel import ISA_ITEMSIZE, KernelCall

ALIGN = 64
#: What causally masked scores become without a mask operand (exp(NEG_BIG - max) == 0 in fp32;
#: such rows always keep key 0, so no row is all NEG_BIG).
NEG_BIG = -3.0e38
#: The running row max never goes below this, so that a row whose every score is -inf so far
#: subtracts a finite number (exp(-inf - FLT_LOWEST) == 0, not NaN).
FLT_LOWEST = -3.4028234663852886e38
#: The row sum is raised to at least this before its reciprocal: a row with no key to attend
#: sums to 0, and 0 * (1 / L_MIN) == 0 gives its zeros (torch's _safe_softmax); any row with a
#: key sums to >= 1 (its max contributes exp(0)).
L_MIN = 1.0e-30
#: Fraction of the other PEs' transfers that one DMA waits behind (as the row-wise kernels),
#: and of the last item's compute that follows the busiest engine's work.
FILL_SHARE = 0.5
DEBUG = bool(os.environ.get("EMBER_ATTENTION_DEBUG"))


@dataclass(frozen=True)
class AttentionPlan:
    """A plan of the whole-row (ks == 0) or key-block schedule."""
    pes: int    # PEs that share the work items
    lq: int     # query rows per item (per query head)
    ks: int = 0  # keys per block (online softmax over blocks), 0: the whole key row at once
    group: int = 1  # query heads of one key/value head in one item (their rows stacked): they
                    # share each K/V load, transpose and block, and the DPE sees `group` times the rows


@dataclass(frozen=True)
class Dims:
    batch: int      # product of the leading batch dims
    h: int          # query heads
    hk: int         # key/value heads
    l: int          # query length
    s: int          # key length
    e: int          # head size of query/key
    ev: int         # head size of value
    item: int       # operand bytes per element
    dt: str         # operand ISA dtype


def dims_of(call: KernelCall) -> Dims:
    q, k, v = call.inputs[:3]
    h = q.shape[-3] if len(q.shape) >= 3 else 1
    hk = k.shape[-3] if len(k.shape) >= 3 else 1
    batch = math.prod(q.shape[:-3]) if len(q.shape) >= 3 else 1
    return Dims(batch, h, hk, q.shape[-2], k.shape[-2], q.shape[-1], v.shape[-1], ISA_ITEMSIZE[q.dtype], q.dtype)


@dataclass(frozen=True)
class Item:
    bh: int     # batch * H + head (the first of `heads` consecutive query heads)
    kv: int     # batch * Hk + key/value head
    q0: int     # first query row
    n: int      # query rows per head
    s: int      # keys it sees
    heads: int = 1  # query heads whose rows are stacked (n rows each, query positions q0 ...)

    @property
    def rows(self) -> int:
        return self.heads * self.n


def items(d: Dims, lq: int, causal: bool, group: int = 1) -> list[Item]:
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
                    out.append(Item(b * d.h + j * rep + g, b * d.hk + j, q0, n, s, group))
    return out


def q_dma(pe, space: str, addr: int, local: int, w: Item, d: Dims, width: int, to_local: bool, **sync) -> None:
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


def split(work: list, pes: int) -> list[list]:
    """Contiguous ranges of `work`, one per PE."""
    per = math.ceil(len(work) / pes)
    return [work[p * per:(p + 1) * per] for p in range(pes)]


def run_ahead(n: int, lead, follow, depth: int = 1) -> None:
    """One engine queue of a software pipeline over n steps: lead(0 .. depth-1), then per step
    t, lead(t + depth) before follow(t) (the DPE's scores of t+1 before P V of t, the DMA's loads
    of t+2 before the store of t)."""
    for t in range(min(depth, n)):
        lead(t)
    for t in range(n):
        if t + depth < n:
            lead(t + depth)
        follow(t)


def busiest(shares: list[list[Item]], count: int = 2) -> tuple[int, list[list[Item]]]:
    """The `count` PEs' shares with the most scores to compute and keys to load, and how many
    PEs stream while they do (the PEs that finish sooner stop: on average, the busiest shares
    the memories with this many)."""
    shares = [w for w in shares if w]
    weight = [sum((w.rows + 8) * w.s for w in work) for work in shares]
    streamers = max(1, round(sum(weight) / max(weight)))
    order = sorted(range(len(shares)), key=lambda i: -weight[i])
    return streamers, [shares[i] for i in order[:count]]


@dataclass(frozen=True)
class MaskView:
    """Where the mask element of score (flat batch b, query head h, query row l, key s) lies:
    the mask right-aligned to the scores (..., Hq, L, S), a stride of 0 along each dim it
    broadcasts over (torch's rules)."""
    batch_shape: tuple[int, ...]    # the scores' leading batch dims
    batch_strides: tuple[int, ...]  # the mask's element stride along each (0: broadcast)
    sh: int                         # element stride along query heads
    sl: int                         # ... along query rows
    ss: int                         # ... along keys
    item: int                       # bytes per element as the chip holds it
    boolean: bool                   # an i1 mask (held as int32 0/1: true = attend), else additive

    def offset(self, b: int, h: int, l: int, s: int) -> int:
        """Element offset of the mask value of score (b, h, l, s)."""
        off = 0
        for size, stride in zip(reversed(self.batch_shape), reversed(self.batch_strides)):
            b, i = divmod(b, size)
            off += i * stride
        return off + h * self.sh + l * self.sl + s * self.ss

    def tile(self, heads: int, rows: int, keys: int) -> tuple[int, int, int]:
        """The distinct (heads, rows, keys) of a (heads, rows, keys) block of scores: 1 along
        each dim the mask broadcasts over."""
        return (heads if self.sh else 1, rows if self.sl else 1, keys if self.ss else 1)


def mask_view(call: KernelCall, boolean: bool) -> MaskView:
    """The MaskView of the call's mask operand (a contiguous row-major buffer)."""
    q, k = call.inputs[0], call.inputs[1]
    mask = call.inputs[3]
    scores = (*call.output.shape[:-1], k.shape[-2])
    shape = (1,) * (len(scores) - len(mask.shape)) + tuple(mask.shape)
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step if size != 1 else 0)
        step *= size
    strides.reverse()
    heads = len(q.shape) >= 3
    lead = len(scores) - (3 if heads else 2)
    return MaskView(tuple(scores[:lead]), tuple(strides[:lead]), strides[lead] if heads else 0,
                    strides[-2], strides[-1], ISA_ITEMSIZE[mask.dtype], boolean)
