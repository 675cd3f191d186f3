"""The reference device: interprets a graph-level `ember` module with each op's numpy reference.

It is the numeric ground truth the simulator and the compiled paths are checked against: every
op computes in float64 (or its integer type) and rounds to its declared result type.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch_mlir import ir

from compiler.dialect import op_attrs, operand_segments, spec_of
from compiler.importer import host_call_index, main_function
from ops.registry import as_dtype, dtype_of_numpy, op as lookup_op, to_numpy, to_torch
from runtime.host import HostOp, host_op_of

INPUT_DEVICE = "cpu"


def interpret(module: ir.Module, weights: dict[str, Any], inputs: Sequence[np.ndarray],
              host_calls: dict[int, Any] | None = None, visit: Any = None) -> list[np.ndarray]:
    """Run `func.func @main` of a graph-level module on numpy `inputs`. `visit(opdef, operands,
    attrs, result_specs, results)`, if given, sees every computing `ember` op (weights aside)."""
    block = main_function(module).regions[0].blocks[0]
    env: dict[ir.Value, np.ndarray] = dict(zip(block.arguments, inputs))
    for operation in block.operations:
        name = operation.name
        if name == "func.return":
            return [env[v] for v in operation.operands]
        if name == "func.call":
            callee = operation.attributes["callee"].value
            outs = _host_call(host_calls[host_call_index(callee)], [env[v] for v in operation.operands])
            for value, out in zip(operation.results, outs):
                env[value] = as_dtype(out, spec_of(value.type).dtype)
            continue
        if not name.startswith("ember."):
            raise NotImplementedError(f"the reference device cannot run '{name}'")
        opdef = lookup_op(name[len("ember."):])
        attrs = op_attrs(operation, opdef)
        result_specs = [spec_of(r.type) for r in operation.results]
        if opdef.name == "weight":
            outs = [weights[attrs["symbol"]]]
        else:
            args = opdef.group_operands([env[v] for v in operation.operands], operand_segments(operation))
            res = opdef.reference(*args, **attrs)
            outs = list(res) if isinstance(res, (tuple, list)) else [res]
        outs = [as_dtype(out, spec.dtype) for out, spec in zip(outs, result_specs)]
        for value, out, spec in zip(operation.results, outs, result_specs):
            if out.shape != spec.shape:
                raise AssertionError(f"{name} reference gave shape {out.shape}, IR says {spec.shape}")
            env[value] = out
        if visit is not None and opdef.name != "weight":
            visit(opdef, args, attrs, result_specs, outs)
    raise ValueError("func.func @main has no return")


def _host_call(call: Any, operands: list[np.ndarray]) -> list[np.ndarray]:
    """Run a host call (a `runtime.host.HostOp`, or the compile's `HostCall`) on numpy operands."""
    host_op = call if isinstance(call, HostOp) else host_op_of(call)
    with torch.no_grad():
        outs = host_op([to_torch(o, dtype_of_numpy(o.dtype)) for o in operands])
    return [to_numpy(o) for o in outs]


def run(compiled: Any, inputs: Sequence[torch.Tensor], **options: Any) -> list[torch.Tensor]:
    """Run a compiled model's graph-level module on the reference interpreter."""
    if options:
        raise TypeError(f"the reference device takes no options, got {sorted(options)}")
    graph = compiled.graph
    if any(t.is_meta for t in graph.weights.values()):
        raise ValueError("the model's weights are on the meta device: there are no numbers to compute; "
                         "use device='sim' with timing_only=True")
    weights = compiled.numpy_weights()
    with graph.context:
        outs = interpret(graph.module, weights, [to_numpy(x) for x in inputs], graph.host_calls)
    return [to_torch(o, dtype_of_numpy(o.dtype)) for o in outs]     # the outputs, then updated inputs
