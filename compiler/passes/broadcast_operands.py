"""materialize-broadcasts: give a broadcasting elementwise op operands of its result's shape.

The elementwise kernel streams operands of the result's shape. A binary op with a smaller
operand (a rotary `x * cos` with cos shared by every head, a bias row, a scale) would
otherwise run on the host, its operands and result crossing the host link. This pass puts an
`ember.broadcast` in front of such an operand (a DMA program with stride-0 reads, on chip)
whenever the result has a kernel with full-shape operands and the broadcast has a kernel too.
It runs on the graph-level module, before the backend's passes read it.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch_mlir import ir

from compiler.dialect import build_op, op_attrs, spec_of
from compiler.importer import main_function
from compiler.passes.base import ModulePass
from ops.kernel import kernel_for
from ops.registry import op as lookup_op

#: ops whose operands broadcast (numpy rules) and whose kernel wants result-shaped operands
BROADCASTING_OPS = ("binary", "ternary")


@dataclass(frozen=True)
class MaterializeBroadcasts(ModulePass):
    """Insert `ember.broadcast` before each smaller operand of a broadcasting op whose kernel
    accepts the op once its operands have the result's shape (integer and boolean operands
    where that kernel and the broadcast's take them)."""
    name: str = "materialize-broadcasts"

    def rewrite(self, graph) -> int:
        """Rewrite `graph.module` in place; returns how many broadcasts were inserted."""
        module = graph.module
        bcast = lookup_op("broadcast")
        bcast_kernel = kernel_for("broadcast")
        block = main_function(module).regions[0].blocks[0]
        inserted = 0
        for operation in list(block.operations):
            name = operation.name
            if not name.startswith("ember.") or name[len("ember."):] not in BROADCASTING_OPS:
                continue
            opdef = lookup_op(name[len("ember."):])
            template = kernel_for(opdef.name)
            if template is None or len(operation.results) != 1:
                continue
            result = spec_of(operation.results[0].type)
            operands = [spec_of(v.type) for v in operation.operands]
            if all(o.shape == result.shape for o in operands):
                continue
            integers = not all(o.is_float for o in (*operands, result))
            if integers and not (template.integer_operands and bcast_kernel.integer_operands):
                continue
            attrs = op_attrs(operation, opdef)
            full = [o.with_(shape=result.shape) for o in operands]
            if not template.accepts(opdef.name, full, result, attrs):
                continue
            if template.accepts(opdef.name, operands, result, attrs):
                continue      # the kernel takes the broadcast itself
            if not all(o.shape == result.shape or bcast_kernel.accepts("broadcast", [o], o.with_(shape=result.shape),
                                                                       {"shape": result.shape})
                       for o in operands):
                continue
            for i, (value, spec) in enumerate(zip(list(operation.operands), operands)):
                if spec.shape == result.shape:
                    continue
                with ir.InsertionPoint(operation), operation.location:
                    new = build_op(bcast, [value], {"shape": tuple(result.shape)},
                                   [spec.with_(shape=result.shape)], loc=operation.location)
                operation.operands[i] = new.results[0]
                inserted += 1
        return inserted
