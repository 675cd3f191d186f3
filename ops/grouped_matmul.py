"""Grouped matmul: the experts of a mixture-of-experts layer as one op whose groups' sizes are
data (transformers' `grouped_mm` experts, `torch._grouped_mm`).

`input[S, K]` holds rows sorted by group; `offsets[E]` (int32, non-decreasing) ends each group:
group e is rows `offsets[e-1] .. offsets[e]-1` (from row 0 for e = 0) and multiplies
`weight[e]`, which is `[K, N]`, or `[N, K]` when `transposed` (a layer's weight in PyTorch's
layout: the lowering reads through a transpose of the weight rather than copying every expert).
Rows at or past `offsets[-1]` are zero, as transformers' fallback leaves them.

`max_group_rows` bounds the rows one group can get (0: the input's): the tokens of a layer whose
rows are each token's k choices, since one token picks k distinct experts. A timing-only run's
routing (runtime/routing.py) keeps to it.
"""
from __future__ import annotations

import numpy as np
import torch

from ops.registry import Attr, Sample, Unsupported, define_op, lowers, samples, wide

aten = torch.ops.aten


def _infer(x, weight, offsets, transposed, max_group_rows):
    if x.rank != 2 or weight.rank != 3 or offsets.rank != 1:
        raise ValueError(f"grouped_matmul takes input [S, K], weight [E, K, N] and offsets [E]; got "
                         f"{x.shape}, {weight.shape} and {offsets.shape}")
    E, k = weight.shape[0], weight.shape[2 if transposed else 1]
    if offsets.shape[0] != E:
        raise ValueError(f"{offsets.shape[0]} offsets for {E} groups of weights")
    if x.shape[1] != k:
        raise ValueError(f"input rows of {x.shape[1]} do not match the weights' {k}")
    if x.dtype != weight.dtype:
        raise ValueError(f"element types differ: {x.dtype} and {weight.dtype}")
    if offsets.dtype not in ("i32", "i64"):
        raise ValueError(f"offsets must be integers, got {offsets.dtype}")
    return x.with_(shape=(x.shape[0], weight.shape[1 if transposed else 2]))


def group_bounds(offsets: np.ndarray, rows: int) -> list[tuple[int, int, int]]:
    """(group, first row, end row) of every non-empty group; raises ValueError for offsets that
    decrease or pass `rows`."""
    ends = np.asarray(offsets, np.int64).reshape(-1)
    if (np.diff(ends) < 0).any() or (ends < 0).any() or (len(ends) and ends[-1] > rows):
        raise ValueError(f"offsets {ends.tolist()} are not non-decreasing within [0, {rows}]")
    starts = np.concatenate([[0], ends[:-1]])
    return [(e, int(s), int(t)) for e, (s, t) in enumerate(zip(starts, ends)) if t > s]


def _reference(x, weight, offsets, transposed, max_group_rows):
    out = np.zeros((x.shape[0], weight.shape[1 if transposed else 2]), np.float64)
    for e, s, t in group_bounds(offsets, x.shape[0]):
        w = wide(weight[e])
        out[s:t] = wide(x[s:t]) @ (w.T if transposed else w)
    return out


def _torch(x, weight, offsets, transposed, max_group_rows):
    out = x.new_zeros(x.shape[0], weight.shape[1 if transposed else 2])
    for e, s, t in group_bounds(offsets.cpu().numpy(), x.shape[0]):
        w = weight[e]
        out[s:t] = x[s:t] @ (w.T if transposed else w)
    return out


grouped_matmul = define_op(
    "grouped_matmul", operands=("input", "weight", "offsets"), attrs={"transposed": Attr.BOOL, "max_group_rows": Attr.INT},
    infer=_infer, reference=_reference, torch_impl=_torch,
    doc="Rows of input[S, K] sorted by group, group e (rows offsets[e-1]..offsets[e]-1) times "
        "weight[e] ([K, N], or [N, K] when transposed); rows past offsets[-1] are zero.")


def _weight_layout(b, w):
    """(weight, transposed): a weight read through a transpose of its last two dims is used as
    it is stored, not copied."""
    made = b.producer(w)
    if made is not None and made[0] == "transpose" and tuple(made[1]["perm"]) == (0, 2, 1):
        return made[2][0], True
    return w, False


def _lower(b, x, weight, offs, *rest):
    if offs is None:
        raise Unsupported("a grouped matmul without offsets (a batch of equal groups)")
    if x.rank != 2 or weight.rank != 3:
        raise Unsupported(f"grouped matmul of input {x.shape} and weight {weight.shape} (only [S, K] by [E, K, N])")
    dtype = b.result_spec().dtype
    w, transposed = _weight_layout(b, b.cast(weight, dtype))
    return b.emit(grouped_matmul, b.cast(x, dtype), w, b.cast(offs, "i32"), transposed=transposed,
                  max_group_rows=_tokens(b, x))


def _tokens(b, x) -> int:
    """The tokens whose choices the rows are, when the rows were gathered from them (transformers
    gathers `hidden_states[perm // k]`); 0 when that cannot be seen."""
    made = b.producer(x)
    while made is not None and made[0] == "cast":        # rows cast to the weights' dtype
        made = b.producer(made[2][0])
    if made is not None and made[0] == "index_select" and made[1]["dim"] == 0 and made[2][0].rank == 2:
        return made[2][0].shape[0]
    return 0


@lowers(aten._grouped_mm.default)
def _grouped_mm(b, x, weight, offs=None, bias=None, out_dtype=None):
    if bias is not None:
        raise Unsupported("a grouped matmul with a bias")
    return _lower(b, x, weight, offs)


def _register_transformers_op() -> None:
    """transformers' `grouped_mm_fallback` custom op, when transformers defines it."""
    try:
        import transformers.integrations.moe  # noqa: F401  (registers torch.ops.transformers.*)
        op = torch.ops.transformers.grouped_mm_fallback
    except (ImportError, AttributeError, RuntimeError):
        return
    lowers(op)(lambda b, x, weight, offs: _lower(b, x, weight, offs))


_register_transformers_op()


class _Experts(torch.nn.Module):
    """A layer's experts the way transformers runs them: rows sorted by expert, each expert's
    row count from a histogram, their running sum as group ends, one grouped matmul (torch's,
    in bf16 as its CPU kernel needs, or transformers' fallback), the rows put back in order."""

    def __init__(self, transposed: bool, dtype: torch.dtype, experts: int = 3):
        super().__init__()
        self.transposed, self.experts = transposed, experts
        shape = (experts, 8, 16) if transposed else (experts, 16, 8)
        self.w = torch.nn.Parameter((torch.randn(shape) / 4).to(dtype))

    def forward(self, x, ids):
        sorted_ids, order = torch.sort(ids)
        counts = torch.histc(sorted_ids.float(), bins=self.experts, min=0, max=self.experts - 1)
        offs = torch.cumsum(counts, 0, dtype=torch.int32)
        w = self.w.transpose(1, 2) if self.transposed else self.w
        rows = x[order].to(w.dtype)
        if w.dtype == torch.bfloat16:
            out = torch._grouped_mm(rows, w, offs=offs)
        else:
            out = torch.ops.transformers.grouped_mm_fallback(rows, w, offs)
        back = torch.empty_like(order)       # the rows in their order again (ties sort either way)
        back[order] = torch.arange(order.shape[0])
        return out[back]


def _routed_rows():
    return torch.randn(10, 16), torch.randint(0, 3, (10,))


samples(Sample("grouped-mm-bf16", _Experts(False, torch.bfloat16), _routed_rows, rtol=2e-2))
if hasattr(torch.ops.transformers, "grouped_mm_fallback"):
    samples(Sample("grouped-mm-fallback-layer-layout", _Experts(True, torch.float32), _routed_rows))
