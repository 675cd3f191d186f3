"""Sizes that depend on the data (torch.export's unbacked symbols: the rows `x[mask]` keeps, the
value of `.item()`), fixed at the sizes the example inputs give.

torch.export leaves such a size as a symbol (u0) in the shapes of every tensor that follows it.
The chip runs static shapes, so the importer compiles the graph for the example's value of each
symbol: it runs the captured graph once on the example inputs (`example_sizes`) and reads every
node's shape with the symbols replaced (`concrete_vals`). The ops that make such a size check on
the chip, each time the Program runs, that the data gives the size it was compiled for
(`ops/data_dependent.py`), and timing-only runs list what they assumed.
"""
from __future__ import annotations

from typing import Any

import sympy
import torch
from torch.fx.experimental.symbolic_shapes import free_unbacked_symbols

def has_unbacked(graph: torch.fx.Graph) -> bool:
    return any(free_unbacked_symbols(n.meta.get("val")) for n in graph.nodes)


def shape_depends_on_data(node: torch.fx.Node) -> bool:
    """Whether a tensor result of `node` has a size that depends on the data."""
    val = node.meta.get("val")
    return any(isinstance(v, torch.Tensor) and free_unbacked_symbols(v)
               for v in (val if isinstance(val, (tuple, list)) else [val]))


def example_sizes(ep: torch.export.ExportedProgram, example_inputs: tuple[torch.Tensor, ...]) -> dict[Any, int]:
    """Symbol -> the value it takes on `example_inputs`, read off each node's result as the
    captured graph runs; empty when it cannot run (weights on the meta device)."""
    module = ep.module()
    sizes: dict[Any, int] = {}

    class Recorder(torch.fx.Interpreter):
        def run_node(self, node):
            result = super().run_node(node)
            _bind(node.meta.get("val"), result, sizes)
            return result

    try:
        with torch.no_grad():
            Recorder(module).run(*example_inputs)
    except Exception:     # noqa: BLE001 — nothing to run on (meta weights) or a guard of the model fails
        return {}
    return sizes


def _bind(val: Any, result: Any, sizes: dict[Any, int]) -> None:
    if isinstance(val, (tuple, list)) and isinstance(result, (tuple, list)):
        for v, r in zip(val, result):
            _bind(v, r, sizes)
    elif isinstance(val, torch.Tensor) and isinstance(result, torch.Tensor):
        for d, n in zip(val.shape, result.shape):
            _bind(d, n, sizes)
    elif isinstance(val, (torch.SymInt, torch.SymBool)) and isinstance(result, (int, bool)):
        expr = val.node.expr
        if isinstance(expr, sympy.Symbol) and free_unbacked_symbols(val):
            sizes.setdefault(expr, int(result))


def concrete_vals(graph: torch.fx.Graph, sizes: dict[Any, int]) -> dict[torch.fx.Node, Any]:
    """Node -> its `meta["val"]` with every symbol of `sizes` replaced: tensors as meta tensors of
    the concrete shape, sizes as ints. Nodes whose value holds a symbol `sizes` lacks keep it."""
    out = {}
    for node in graph.nodes:
        val = node.meta.get("val")
        if free_unbacked_symbols(val):
            fixed = _concrete(val, sizes)
            if not free_unbacked_symbols(fixed):
                out[node] = fixed
    return out


def _concrete(val: Any, sizes: dict[Any, int]) -> Any:
    if isinstance(val, (tuple, list)):
        return type(val)(_concrete(v, sizes) for v in val)
    if isinstance(val, torch.Tensor):
        shape = [_concrete(d, sizes) for d in val.shape]
        if not all(isinstance(d, int) for d in shape):
            return val
        return torch.empty(shape, dtype=val.dtype, device="meta")
    if isinstance(val, (torch.SymInt, torch.SymBool, torch.SymFloat)):
        expr = val.node.expr.xreplace({s: sympy.Integer(v) for s, v in sizes.items()})
        if expr.free_symbols:
            return val
        kind = {torch.SymInt: int, torch.SymBool: bool, torch.SymFloat: float}[type(val)]
        return kind(expr)
    return val

