"""What lives in device memory between runs, and how two Programs share it.

A session serves a prefill and a decode Program from one copy of their weights and device state
(a KV cache). The first Program's `resident_layout` says where it keeps them; a compile given
that layout (`ember.compile(share=...)`) pins the same values at the same places
(`pinned_values`, read by the memory plan), and `layout_digest` keys the compile cache on it.
"""
from __future__ import annotations

import hashlib
from typing import Any

from compiler.errors import EmberError
from compiler.state import CompileState


#: Prefixes of the weight-table names the compiler gives the constants it makes.
INTERNAL_WEIGHTS = ("_folded.", "_int8._folded.")


def resident_layout(program: Any, input_names: list[str]) -> dict[str, dict[str, Any]]:
    """Where a Program keeps what lives in device memory between runs: its weights (by weight
    name) and its device state (by input name), as `{"weight:<name>" | "state:<input>":
    {"space", "addr", "shape", "isa_dtype"}}`. A compile given this layout (`share`) places the
    same weights and state at the same places, so that both Programs serve from one copy."""
    fields = ("space", "addr", "shape", "isa_dtype")
    layout = {}
    for entry in program.tensors.values():
        if "space" in entry and "weight" in entry and not entry["weight"].startswith(INTERNAL_WEIGHTS):
            layout[f"weight:{entry['weight']}"] = {k: entry[k] for k in fields}
    for i in program.mutated_inputs:
        entry = program.tensors[program.inputs[i]]
        if "space" in entry:
            layout[f"state:{input_names[i]}"] = {k: entry[k] for k in fields}
    return layout


def layout_digest(layout: dict[str, Any] | None) -> str:
    if not layout:
        return ""
    return hashlib.sha256(repr(sorted((k, sorted(v.items())) for k, v in layout.items())).encode()).hexdigest()[:16]


def pinned_values(state: CompileState) -> dict[int, Any]:
    """This graph's values that `state.resident` places (weights by name, state by input name);
    a value of another shape or storage type than the layout's is refused, naming it."""
    from ops.kernel import Placement
    layout, graph, graph_result = state.resident, state.ops, state.graph
    if not layout:
        return {}
    # the model's own weights, by name: not constants the compiler made (folded subgraphs and
    # int8 copies of them are named after graph nodes, which differ between graphs)
    names = {v: f"weight:{n}" for v, n in graph.weights.items() if not n.startswith(INTERNAL_WEIGHTS)}
    names.update({graph.inputs[i]: f"state:{n}" for i, n in enumerate(graph_result.input_names)
                  if graph.inputs[i] in graph.mutated})
    pinned = {}
    for v, key in names.items():
        where = layout.get(key)
        if where is None or v not in graph.storage:
            continue
        here = (tuple(graph.specs[v].shape), graph.storage[v])
        there = (tuple(where["shape"]), where["isa_dtype"])
        if here != there:
            raise EmberError(f"cannot share device memory with the other Program: {key.replace(':', ' ')} is "
                             f"{there[1]} {there[0]} there and {here[1]} {here[0]} here")
        pinned[v] = Placement(where["space"], int(where["addr"]), here[0], here[1])
    return pinned
