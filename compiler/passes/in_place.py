"""in-place-state: update device state (inputs the model mutates, such as a KV cache) in place.

A model that writes new positions into a preallocated cache (`cache.index_copy_(2, pos, k)`)
reaches the compiler as a functional graph: `new = index_put(cache, pos, k)`, and `new` is the
cache's contents after the run. Copying the whole cache to write one position would make every
decode step pay for the cache twice. So where the op that makes the new contents can update its
operand in place (its kernel template says which operand, `KernelTemplate.updates_operand`),
and nothing reads the old contents after it, the result shares the operand's buffer and the
kernel writes only the new rows. A chain of such updates (two writes into one cache) shares one
buffer. State that cannot be updated in place keeps a buffer of its own; the runtime then
copies it into the state's place after the run (and says so in the run's steps).
"""
from __future__ import annotations

from dataclasses import dataclass

from compiler.graph_ops import GraphOps, last_reads, view_roots
from ops.kernel import kernel_for


@dataclass(frozen=True)
class InPlaceState:
    """Give each in-place update of device state (a KV-cache write) the state's own buffer:
    `graph.in_place`, result value -> the state value whose buffer it takes."""
    name: str = "in-place-state"

    def run(self, state) -> dict[int, int]:
        return self.decide(state.ops)

    def decide(self, graph: GraphOps) -> dict[int, int]:
        producer = {r: op for op in graph.ops for r in op.results}
        root = view_roots(graph)          # a view reads its input's buffer
        last_read = last_reads(graph, root, graph.user_outputs)
        decided: dict[int, int] = {}
        for state, new in graph.mutated.items():
            chain, v = [], new
            while v != state:
                op = producer.get(v)
                template = None if op is None or op.target != "accelerator" else kernel_for(op.name)
                k = None if template is None else template.updates_operand
                if k is None or op.operands[k] is None:
                    break
                src = op.operands[k]
                if last_read.get(src, -1) > op.index or graph.specs[src] != graph.specs[v] \
                        or graph.storage.get(src) != graph.storage.get(v):
                    break        # the old contents are read after the update, or the types differ
                chain.append(v)
                v = src
            if v == state:
                decided.update({r: state for r in chain})
        graph.in_place = decided
        return decided
