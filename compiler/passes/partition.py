"""partition: decide, op by op, what runs on the accelerator and what stays on the host."""
from __future__ import annotations

from dataclasses import dataclass

from compiler.graph_ops import GraphOps
from ops.kernel import kernel_for

#: Ops that only re-label a buffer: they run wherever their input is, at no cost.
VIEW_OPS = frozenset({"reshape"})


@dataclass(frozen=True)
class Partition:
    """Ops with a kernel template run on the accelerator; host calls, and ops whose kernels
    are not written yet, run on the host (their tensors cross the host link)."""
    name: str = "partition"
    required_by = "dtype-lowering, memory-plan, tile-and-map and codegen act on the target it gives every op"

    def run(self, state) -> GraphOps:
        return self.assign(state.ops, state.chip)

    def assign(self, graph: GraphOps, chip) -> GraphOps:
        for op in graph.ops:
            if op.opdef is None:
                op.target = "host"
            elif op.name in VIEW_OPS:
                op.target = "view"
            else:
                # integer tensors (indices, masks) stay on the host unless the op's kernel
                # template says that it takes them (`KernelTemplate.integer_operands`)
                template = kernel_for(op.name)
                floats = all(graph.specs[v].is_float for v in (*op.operands, *op.results) if v is not None)
                runs = template is not None and (floats or template.integer_operands) and template.accepts(
                    op.name, [None if v is None else graph.specs[v] for v in op.operands],
                    graph.specs[op.results[0]], op.attrs, chip=chip)
                op.target = "accelerator" if runs else "host"
        return graph
