"""tile-and-map: choose, per accelerator op, the tiling and PE mapping its cost model ranks best."""
from __future__ import annotations

from dataclasses import dataclass

from compiler.graph_ops import GraphOp, GraphOps
from ops.kernel import KernelCall, Placement, kernel_for


def kernel_call(op: GraphOp, placements: dict[int, Placement]) -> KernelCall:
    return KernelCall(op.name, tuple(None if v is None else placements[v] for v in op.operands),
                      placements[op.results[0]], dict(op.attrs),
                      extra_outputs=tuple(placements[r] for r in op.results[1:]))


@dataclass(frozen=True)
class TileAndMap:
    """Search each op's candidate plans (tile shapes, grid partitions, buffering) with its
    template's cost model; plans that overflow local memory are never proposed."""
    name: str = "tile-and-map"

    required_by = "codegen emits the plan this pass chooses for every kernel"

    def run(self, state) -> GraphOps:
        return self.map(state.ops, state.placements, state.chip)

    def map(self, graph: GraphOps, placements: dict[int, Placement], chip) -> GraphOps:
        # Identical ops (every layer of a transformer) share one search: the key is the op,
        # its attributes, its operands' shapes, dtypes and memory spaces (not addresses), and
        # which operands the result shares a buffer with (an update in place costs less).
        chosen: dict[tuple, tuple] = {}
        for op in graph.ops:
            if op.target != "accelerator":
                continue
            template = kernel_for(op.name)
            call = kernel_call(op, placements)
            key = (op.name, repr(sorted(op.attrs.items())),
                   tuple(None if p is None else (p.space, p.shape, p.dtype) for p in (*call.inputs, *call.outputs)),
                   tuple(p is not None and (p.space, p.addr) == (call.output.space, call.output.addr)
                         for p in call.inputs))
            if key not in chosen:
                plan = template.choose(call, chip)
                chosen[key] = (plan, int(template.predict(call, plan, chip)))
            op.plan, op.predicted_cycles = chosen[key]
        return graph
