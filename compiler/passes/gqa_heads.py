"""fold-kv-head-expansion: attention reads grouped key/value heads directly.

Grouped-query attention written for `scaled_dot_product_attention` without `enable_gqa`
repeats each key/value head for its query heads first (`expand_kv_heads`: unsqueeze, expand,
reshape), which imports as reshape -> broadcast -> reshape and costs a copy of the keys and
values n_rep times over, every layer. `ember.attention` takes Hk < Hq heads itself (key/value
head j serves query heads j * Hq/Hk ... (j + 1) * Hq/Hk - 1, exactly what that repeat builds),
so this pass hands it the unrepeated keys and values and drops the repeat when nothing else
reads it. It runs on the graph-level module, before the backend's passes read it.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch_mlir import ir

from compiler.dialect import build_op, spec_of
from compiler.importer import main_function
from compiler.passes.base import ModulePass
from ops.registry import op as lookup_op


def _producer(value: ir.Value, name: str):
    owner = value.owner
    return owner if isinstance(owner, (ir.Operation, ir.OpView)) and owner.name == name else None


def _grouped(value: ir.Value, hq: int):
    """(the value before the repeat, its shape (..., Hk, S, D)) when `value` is (..., Hq, S, D)
    built as reshape(broadcast((..., Hk, 1, S, D) -> (..., Hk, r, S, D))), else None."""
    outer = _producer(value, "ember.reshape")
    if outer is None:
        return None
    bcast = _producer(outer.operands[0], "ember.broadcast")
    if bcast is None:
        return None
    src, mid, out = (spec_of(v.type).shape for v in (bcast.operands[0], bcast.results[0], outer.results[0]))
    if len(src) != len(mid) or len(src) < 4 or len(out) != len(src) - 1:
        return None
    lead, hk, one, s, d = src[:-4], *src[-4:]
    r = mid[-3]
    if one != 1 or mid != (*lead, hk, r, s, d) or out != (*lead, hk * r, s, d) or hk * r != hq:
        return None
    return bcast.operands[0], (*lead, hk, s, d)


@dataclass(frozen=True)
class FoldKVHeadExpansion(ModulePass):
    """Replace repeated key/value heads feeding `ember.attention` with the grouped ones."""
    name: str = "fold-kv-head-expansion"

    def rewrite(self, graph) -> int:
        """Rewrite `graph.module` in place; returns how many attention ops now read grouped heads."""
        module = graph.module
        reshape = lookup_op("reshape")
        block = main_function(module).regions[0].blocks[0]
        folded = 0
        for operation in list(block.operations):
            if operation.name != "ember.attention" or len(operation.operands) < 3:
                continue
            q = spec_of(operation.operands[0].type)
            if q.rank < 3:
                continue
            found = [_grouped(operation.operands[i], q.shape[-3]) for i in (1, 2)]
            if any(f is None for f in found) or found[0][1][:-1] != found[1][1][:-1]:
                continue
            dead = []
            for i in (1, 2):
                owner = operation.operands[i].owner
                if all(owner != d for d in dead):
                    dead.append(owner)
            for i, (src, shape) in zip((1, 2), found):
                with ir.InsertionPoint(operation), operation.location:
                    grouped = build_op(reshape, [src], {"shape": shape},
                                       [spec_of(src.type).with_(shape=shape)], loc=operation.location)
                operation.operands[i] = grouped.results[0]
            # the repeat (reshape <- broadcast) goes when nothing else reads it
            for outer in dead:
                bcast = outer.operands[0].owner
                if not list(outer.results[0].uses):
                    outer.erase()
                    if not list(bcast.results[0].uses):
                        bcast.erase()
            folded += 1
        return folded
