"""Concat chains: `torch.cat` of N tensors imports as N-1 two-input `ember.concat`s, each
copying everything before it again. Where the links' results are read by nothing but the next
link, the chain's last concat can copy every input once and the other links need not run.

This module finds such chains (structure only); the memory plan keeps a fused chain's inputs
alive until its last concat, and codegen emits the last concat as one copy of all the inputs
(and checks the placements before it does).
"""
from __future__ import annotations

from compiler.graph_ops import GraphOps


def concat_chains(graph: GraphOps) -> dict[int, tuple[list[int], list[int]]]:
    """For the last concat of each chain (op index): the values it copies, in order, and the
    indices of the chain's other links."""
    readers: dict[int, int] = {}
    for op in graph.ops:
        for v in op.operands:
            if v is not None:
                readers[v] = readers.get(v, 0) + 1
    outputs = set(graph.outputs)
    producer = {op.results[0]: op for op in graph.ops if op.target == "accelerator" and op.name == "concat"}
    storage = getattr(graph, "storage", None) or {}

    def gather(op, links: list) -> list[int]:
        out = []
        for v in op.operands[:2]:
            inner = producer.get(v)
            if (inner is not None and inner.attrs["dim"] == op.attrs["dim"] and readers.get(v) == 1
                    and v not in outputs and storage.get(v) == storage.get(op.results[0])):
                links.append(inner.index)
                out += gather(inner, links)
            else:
                out.append(v)
        return out

    chains: dict[int, tuple[list[int], list[int]]] = {}
    taken: set[int] = set()
    for op in reversed(graph.ops):
        if op.index in taken or op.results[0] not in producer:
            continue
        links: list[int] = []
        leaves = gather(op, links)
        if links:
            chains[op.index] = (leaves, links)
            taken.update(links)
    return chains
