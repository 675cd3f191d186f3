"""A graph-level module as a flat list of ops on numbered values (what the backend passes read)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch_mlir import ir

from compiler.dialect import op_attrs, operand_segments, spec_of
from compiler.importer import HOST_TARGET_ATTR, MUTATED_INPUTS_ATTR, host_call_index, main_function
from ops.registry import OpDef, TensorSpec, op as lookup_op


@dataclass
class GraphOp:
    """One op of `@main`: an `ember` op, or a host call (`opdef` None)."""
    index: int
    name: str                         # "linear", "unary", ... or "host:<aten target>"
    opdef: OpDef | None
    attrs: dict[str, Any]
    operands: list[int | None]        # value ids, one per declared operand (None: absent)
    results: list[int]
    location: str = ""
    host_call: int | None = None      # index into the host-call table
    target: str = "accelerator"       # set by the partition pass: "accelerator" | "host" | "view"
    plan: Any = None                  # set by the tiling pass for accelerator ops
    predicted_cycles: int | None = None   # the plan's cost-model cycles
    quant: Any = None                 # set by the dtype pass for a quantized op (compiler.passes.dtype.QuantParams)
    operation: Any = None             # the MLIR operation, for annotating the IR


@dataclass
class GraphOps:
    ops: list[GraphOp]
    specs: dict[int, TensorSpec]      # value id -> shape and element type
    inputs: list[int]
    outputs: list[int]
    weights: dict[int, str] = field(default_factory=dict)      # value id -> weight table name
    literals: dict[int, Any] = field(default_factory=dict)     # value id -> numpy array
    storage: dict[int, str] = field(default_factory=dict)      # value id -> ISA dtype (set by the dtype pass)
    #: inputs the graph updates in place (device state, e.g. a KV cache): input value id -> the
    #: value id of its new contents, which `outputs` ends with
    mutated: dict[int, int] = field(default_factory=dict)
    #: results that share the buffer of the state they update (compiler.passes.in_place)
    in_place: dict[int, int] = field(default_factory=dict)

    @property
    def user_outputs(self) -> list[int]:
        """The model's own outputs (the new contents of updated inputs follow them in `outputs`)."""
        return self.outputs[:len(self.outputs) - len(self.mutated)]

    def new_value(self, spec: TensorSpec) -> int:
        """A fresh value id (for values a pass creates)."""
        v = max(self.specs, default=-1) + 1
        self.specs[v] = spec
        return v


def view_roots(graph: GraphOps) -> dict[int, int]:
    """Each view's root value: a view shares its input's buffer (through chains of views)."""
    root: dict[int, int] = {}
    for op in graph.ops:
        if op.target == "view":
            root[op.results[0]] = root.get(op.operands[0], op.operands[0])
    return root


def last_reads(graph: GraphOps, root: dict[int, int], outputs: list[int]) -> dict[int, int]:
    """The index of the last op that reads each buffer (by root value); `outputs` are read after
    the last op."""
    last: dict[int, int] = {}
    for op in graph.ops:
        for v in op.operands:
            if v is not None:
                last[root.get(v, v)] = op.index
    for v in outputs:
        last[root.get(v, v)] = len(graph.ops)
    return last


def graph_ops(module: ir.Module) -> GraphOps:
    """Number every value of `@main` and list its ops in order (weights and literals aside)."""
    main = main_function(module)
    block = main.regions[0].blocks[0]
    ids: dict[ir.Value, int] = {}
    specs: dict[int, TensorSpec] = {}

    def vid(v: ir.Value) -> int:
        if v not in ids:
            ids[v] = len(ids)
            specs[ids[v]] = spec_of(v.type)
        return ids[v]

    targets = {op.attributes["sym_name"].value: op.attributes[HOST_TARGET_ATTR].value
               for op in module.body.operations if HOST_TARGET_ATTR in op.attributes}
    out = GraphOps([], specs, [vid(a) for a in block.arguments], [])
    for operation in block.operations:
        name = operation.name
        if name == "func.return":
            out.outputs = [vid(v) for v in operation.operands]
            if MUTATED_INPUTS_ATTR in main.attributes:
                positions = [ir.IntegerAttr(a).value for a in ir.ArrayAttr(main.attributes[MUTATED_INPUTS_ATTR])]
                news = out.outputs[len(out.outputs) - len(positions):]
                out.mutated = {out.inputs[i]: v for i, v in zip(positions, news)}
            continue
        results = [vid(r) for r in operation.results]
        if name == "func.call":
            callee = operation.attributes["callee"].value
            out.ops.append(GraphOp(len(out.ops), "host:" + targets[callee], None, {},
                                   [vid(v) for v in operation.operands], results, str(operation.location),
                                   host_call=host_call_index(callee), target="host", operation=operation))
            continue
        opdef = lookup_op(name[len("ember."):])
        attrs = op_attrs(operation, opdef)
        if opdef.name == "weight":
            out.weights[results[0]] = attrs["symbol"]
            continue
        if opdef.name == "constant":
            out.literals[results[0]] = attrs["value"]
            continue
        flat = [vid(v) for v in operation.operands]
        operands = opdef.group_operands(flat, operand_segments(operation))
        out.ops.append(GraphOp(len(out.ops), opdef.name, opdef, attrs, operands, results, str(operation.location),
                               operation=operation))
    return out
