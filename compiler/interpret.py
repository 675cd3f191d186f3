"""The reference interpreter: a graph-level `ember` graph run op by op with each op's numpy
reference, every op computing in float64 (or its integer type) and rounding to its declared
result type.

One loop serves two callers: the reference device (`runtime.devices.reference`), which runs
`func.func @main` of a module (`interpret`), and calibration (`compiler.passes.calibrate`),
which runs the numbered values the backend passes read (`interpret_graph`) and asks for
intermediate values by id. It lives in the compiler so that a compile-time pass can use it
(the compiler does not import the runtime).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch_mlir import ir

from compiler.graph_ops import GraphOp, GraphOps, graph_ops
from compiler.importer import HostCall, _HostArg, main_function
from ops.registry import as_dtype, dtype_of_numpy, op as lookup_op, to_numpy, to_torch

#: runs one host call on numpy operands: (the call, its tensor operands) -> its results
HostRunner = Callable[[Any, Sequence[np.ndarray]], list[np.ndarray]]
#: sees one op as it runs: (the op, its operands, one per declared operand, its results)
GraphVisitor = Callable[[GraphOp, list[Any], list[np.ndarray]], None]


def run_host_call(call: HostCall, operands: Sequence[np.ndarray]) -> list[np.ndarray]:
    """A host call (an aten op kept on the host) on numpy operands, with torch."""
    def fill(x: Any) -> Any:
        if isinstance(x, _HostArg):
            return to_torch(operands[x.index], dtype_of_numpy(operands[x.index].dtype))
        if isinstance(x, (list, tuple)):
            return type(x)(fill(a) for a in x)
        return x

    with torch.no_grad():
        out = call.target(*fill(call.args), **{k: fill(v) for k, v in call.kwargs.items()})
    return [to_numpy(o) for o in (out if isinstance(out, (tuple, list)) else [out])]


def interpret_graph(graph: GraphOps, constants: dict[int, np.ndarray], inputs: Sequence[np.ndarray],
                    host_calls: dict[int, Any] | None, visit: GraphVisitor | None = None,
                    run_host: HostRunner = run_host_call) -> list[np.ndarray]:
    """Run every op of `graph` in order on `constants` (value id -> array: weights and literals)
    and `inputs`; the values of `graph.outputs`. `visit`, if given, sees each op once it has run."""
    env: dict[int, np.ndarray] = {**constants, **dict(zip(graph.inputs, inputs))}
    last_use: dict[int, int] = {}
    for op in graph.ops:
        for v in flat_operands(op.operands):
            last_use[v] = op.index
    keep = set(graph.outputs) | set(constants)
    for op in graph.ops:
        args = [_operand(env, v) for v in op.operands]
        specs = [graph.specs[v] for v in op.results]
        if op.opdef is None:
            raw = run_host(host_calls[op.host_call], [a for a in args if a is not None])
        else:
            res = op.opdef.reference(*args, **op.attrs)
            raw = res if isinstance(res, (tuple, list)) else [res]
        outs = [as_dtype(out, spec.dtype) for out, spec in zip(raw, specs)]
        if op.opdef is not None:
            for out, spec in zip(outs, specs):
                if out.shape != spec.shape:
                    raise AssertionError(f"ember.{op.name} reference gave shape {out.shape}, IR says {spec.shape}")
        env.update(zip(op.results, outs))
        if visit is not None:
            visit(op, args, outs)
        for v in flat_operands(op.operands):        # free what no later op reads: activations can be large
            if last_use.get(v) == op.index and v not in keep:
                env.pop(v, None)
    return [env[v] for v in graph.outputs]


def interpret(module: ir.Module, weights: dict[str, Any], inputs: Sequence[np.ndarray],
              host_calls: dict[int, Any] | None = None, visit: Any = None,
              run_host: HostRunner = run_host_call) -> list[np.ndarray]:
    """Run `func.func @main` of a graph-level module on numpy `inputs` (`weights`: by symbol).
    `visit(opdef, operands, attrs, result_specs, results)`, if given, sees every `ember` op
    (weights aside; the literals first, then the computing ops in order)."""
    block = main_function(module).regions[0].blocks[0]
    names = [operation.name for operation in block.operations]
    for name in names:
        if name not in ("func.return", "func.call") and not name.startswith("ember."):
            raise NotImplementedError(f"the reference device cannot run '{name}'")
    if "func.return" not in names:
        raise ValueError("func.func @main has no return")
    graph = graph_ops(module)
    constants = {}
    for v, value in [*((v, weights[s]) for v, s in graph.weights.items()), *graph.literals.items()]:
        spec = graph.specs[v]
        constants[v] = as_dtype(value, spec.dtype)
        if constants[v].shape != spec.shape:
            raise AssertionError(f"ember.{'weight' if v in graph.weights else 'constant'} reference gave shape "
                                 f"{constants[v].shape}, IR says {spec.shape}")

    def visit_ember_op(op: GraphOp, args: list[Any], outs: list[np.ndarray]) -> None:
        if op.opdef is not None:
            visit(op.opdef, args, op.attrs, [graph.specs[v] for v in op.results], outs)

    if visit is not None:
        constant = lookup_op("constant")
        for v, value in graph.literals.items():
            visit(constant, [], {"value": value}, [graph.specs[v]], [constants[v]])
    return interpret_graph(graph, constants, inputs, host_calls, visit_ember_op if visit is not None else None,
                           run_host)


def _operand(env: dict[int, np.ndarray], v: int | list[int] | None) -> Any:
    """An operand's value: None (absent), an array, or a list of arrays (variadic)."""
    if v is None:
        return None
    return [env[i] for i in v] if isinstance(v, list) else env[v]


def flat_operands(operands: Sequence[Any]) -> list[int]:
    """The value ids of an op's operands (absent ones aside, variadic ones spread)."""
    out: list[int] = []
    for v in operands:
        if isinstance(v, list):
            out.extend(v)
        elif v is not None:
            out.append(v)
    return out
