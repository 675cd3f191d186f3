"""fuse-rotary: the rotary position embedding as one kernel.

Llama-style models (and the Hugging Face ones) write it

    x * cos + cat(-x[..., h:], x[..., :h], dim=-1) * sin        (the last dim of x is 2h)

which imports as two slices, a neg, a concat, two multiplies and an add: seven kernels, each
a round trip through memory, for every query and key of every layer. Where all of them run on
the accelerator and nothing else reads their intermediate values, this pass puts one `rotary`
op in their place (ops/kernels/rotary.py), with a constant sign row as its fourth operand.
Either operand order of the add and the multiplies matches. Runs on the backend's op list after
partition and int8 calibration (which interprets the graph's own ops), before dtype lowering
(which holds the op's operands in their own dtypes).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from compiler.graph_ops import GraphOp, GraphOps
from compiler.passes.base import Fusion, OpsPass
from ops.kernel import kernel_for
from ops.kernels.rotary import sign_row
from ops.registry import TensorSpec


@dataclass(frozen=True)
class FuseRotary(Fusion, OpsPass):
    """Replace `x * cos + rotate_half(x) * sin` by one `rotary` op where its kernel accepts it."""
    name: str = "fuse-rotary"

    def rewrite(self, graph: GraphOps) -> int:
        """Rewrite `graph` in place; returns how many rotary ops it made."""
        template = kernel_for("rotary")
        producer = {v: op for op in graph.ops for v in op.results}
        readers: dict[int, int] = {}
        for op in graph.ops:
            for v in op.operands:
                if v is not None:
                    readers[v] = readers.get(v, 0) + 1
        for v in graph.outputs:
            readers[v] = readers.get(v, 0) + 1
        gone: set[int] = set()
        made: dict[int, GraphOp] = {}
        signs: dict[int, int] = {}
        for add in graph.ops:
            match = self._match(graph, add, producer, readers)
            if match is None:
                continue
            x, cos, sin, absorbed = match
            d = graph.specs[x].shape[-1]
            specs = [graph.specs[v] for v in (x, cos, sin)] + [TensorSpec((d,), "f32")]
            if not template.accepts("rotary", specs, graph.specs[add.results[0]], {}):
                continue
            if d not in signs:
                signs[d] = graph.new_value(specs[3])
                graph.literals[signs[d]] = np.asarray(sign_row(d), dtype=np.float32)
            operands = [x, cos, sin, signs[d]]
            gone.update(id(op) for op in absorbed)
            made[id(add)] = GraphOp(add.index, "rotary", None, {}, operands, list(add.results), add.location,
                                    target="accelerator", operation=add.operation)
        if made:
            graph.ops = [made.get(id(op), op) for op in graph.ops if id(op) not in gone]
            for i, op in enumerate(graph.ops):
                op.index = i
        return len(made)

    def _match(self, graph: GraphOps, add: GraphOp, producer, readers):
        """(x, cos, sin, the ops it replaces besides the add) if `add` ends a rotary, else None."""
        if not self._is(add, "binary", "add"):
            return None
        for direct, rotated in (add.operands, add.operands[::-1]):
            found = self._rotated(graph, rotated, producer, readers)
            if found is None:
                continue
            x, sin, ops = found
            mul = self._only(direct, "binary", "mul", producer, readers)
            if mul is None or x not in mul.operands:
                continue
            cos = mul.operands[1 - mul.operands.index(x)]
            if cos is not None and cos != x:
                return x, cos, sin, [mul, *ops]
        return None

    def _rotated(self, graph: GraphOps, v: int, producer, readers):
        """(x, sin, ops) if `v` is rotate_half(x) * sin (either order), else None."""
        mul = self._only(v, "binary", "mul", producer, readers)
        if mul is None:
            return None
        for r, sin in (mul.operands, mul.operands[::-1]):
            cat = self._only(r, "concat", None, producer, readers)
            if cat is None or len(cat.operands) != 2:
                continue
            spec = graph.specs[r]
            if cat.attrs.get("dim") not in (spec.rank - 1, -1) or spec.shape[-1] % 2:
                continue
            neg = self._only(cat.operands[0], "unary", "neg", producer, readers)
            if neg is None:
                continue
            hi = self._only(neg.operands[0], "slice", None, producer, readers)
            lo = self._only(cat.operands[1], "slice", None, producer, readers)
            if hi is None or lo is None or hi.operands[0] != lo.operands[0]:
                continue
            x = hi.operands[0]
            d = graph.specs[x].shape[-1] if graph.specs[x].rank else 0
            if graph.specs[x].shape != spec.shape or not (self._half(hi, graph, d // 2, d) and
                                                          self._half(lo, graph, 0, d // 2)):
                continue
            return x, sin, [mul, cat, neg, hi, lo]
        return None

    @staticmethod
    def _half(op: GraphOp, graph: GraphOps, start: int, end: int) -> bool:
        """Whether the slice takes [start, end) of the last dim and all of the others."""
        shape = graph.specs[op.operands[0]].shape
        starts, ends, steps = (list(op.attrs.get(k) or ()) for k in ("starts", "ends", "steps"))
        if len(starts) != len(shape) or len(ends) != len(shape) or any(s != 1 for s in steps):
            return False
        lead = all(s == 0 and e >= n for s, e, n in zip(starts[:-1], ends[:-1], shape[:-1]))
        return lead and starts[-1] == start and min(ends[-1], shape[-1]) == end

    @staticmethod
    def _is(op: GraphOp | None, name: str, kind: str | None) -> bool:
        return (op is not None and op.name == name and op.target == "accelerator"
                and (kind is None or op.attrs.get("kind") == kind))

    def _only(self, v: int | None, name: str, kind: str | None, producer, readers) -> GraphOp | None:
        """The op making `v`, if it is `name` (of `kind`) on the accelerator and `v` has no
        other reader."""
        op = producer.get(v) if v is not None else None
        if not self._is(op, name, kind) or readers.get(v, 0) != 1 or len(op.results) != 1:
            return None
        return op
