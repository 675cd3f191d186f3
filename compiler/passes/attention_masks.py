"""fold-attention-masks: a constant attention mask that says "causal" or "everything" goes.

Models build their attention masks from positions (`arange`, comparisons, `expand`): input-
independent subgraphs the importer folds into a boolean weight. Most such masks are exactly
the causal pattern, or all true (no padding). As data the mask costs a read per score and a
few SIMD passes per key block (ops/kernels/attention_blocked.py), and it rules out the
schedules that take no mask. This
pass compares each constant boolean mask of `ember.attention` with the patterns the op states
with its `causal` attribute or with no mask at all, and rewrites the op when one matches. Any
other mask (padding, sliding windows, ...) stays as it is.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch_mlir import ir

from compiler.dialect import build_op, op_attrs, operand_segments, spec_of
from compiler.importer import main_function
from compiler.passes.base import ModulePass
from ops.registry import op as lookup_op


def _constant_mask(value: ir.Value, weights: dict[str, torch.Tensor]) -> torch.Tensor | None:
    owner = value.owner
    if not isinstance(owner, (ir.Operation, ir.OpView)) or owner.name != "ember.weight":
        return None
    tensor = weights.get(ir.StringAttr(owner.attributes["symbol"]).value)
    if tensor is None or tensor.is_meta or tensor.dtype != torch.bool:
        return None
    return tensor


def mask_pattern(mask: torch.Tensor, length: int, source: int) -> str | None:
    """"all" when every score is kept, "causal" when exactly torch's tril(ones(L, S)) is, else None."""
    if mask.shape[-2:] != (length, source) and mask.shape[-2:] not in ((1, source), (length, 1), (1, 1)):
        return None
    full = mask.expand(*mask.shape[:-2], length, source)
    if bool(full.all()):
        return "all"
    causal = torch.ones(length, source, dtype=torch.bool).tril()
    return "causal" if bool((full == causal).all()) else None


@dataclass(frozen=True)
class FoldAttentionMasks(ModulePass):
    """Replace constant causal / all-true boolean masks of `ember.attention` with its attributes."""
    name: str = "fold-attention-masks"

    def rewrite(self, graph: Any) -> int:
        """Rewrite `graph.module` in place; returns how many masks were folded."""
        module, weights = graph.module, graph.weights
        attention = lookup_op("attention")
        block = main_function(module).regions[0].blocks[0]
        folded = 0
        for operation in list(block.operations):
            if operation.name != "ember.attention":
                continue
            q, k, v, mask = attention.group_operands(list(operation.operands), operand_segments(operation))
            if mask is None:
                continue
            value = _constant_mask(mask, weights)
            if value is None:
                continue
            length, source = spec_of(q.type).shape[-2], spec_of(k.type).shape[-2]
            pattern = mask_pattern(value, length, source)
            if pattern is None:
                continue
            attrs = op_attrs(operation, attention)
            attrs["causal"] = attrs["causal"] or pattern == "causal"
            with ir.InsertionPoint(operation), operation.location:
                new = build_op(attention, [q, k, v, None], attrs, [spec_of(operation.results[0].type)],
                               loc=operation.location)
            operation.results[0].replace_all_uses_with(new.results[0])
            owner = mask.owner
            operation.erase()
            if not list(owner.results[0].uses):
                owner.erase()
            folded += 1
        return folded
