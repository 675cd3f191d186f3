"""calibrate: run the graph on example inputs with the ops' numpy references and record, per
value, the statistics that quantization needs (the largest magnitude seen).

This is the graph-level interpreter the reference device uses, over the numbered values the
backend passes read (`GraphOps`), so that a pass can ask for any intermediate value by id.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from compiler.graph_ops import GraphOps
from compiler.importer import HostCall, _HostArg
from ops.registry import as_dtype, dtype_of_numpy, to_numpy, to_torch


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


def interpret_values(graph: GraphOps, constants: dict[int, np.ndarray], inputs: Sequence[np.ndarray],
                     host_calls: dict[int, HostCall], observe: Callable[[int, np.ndarray], None]) -> None:
    """Run every op of `graph` in order with its numpy reference; `observe(value id, array)` sees
    each input, constant and result once."""
    env: dict[int, np.ndarray] = {}
    for v, x in (*constants.items(), *zip(graph.inputs, inputs)):
        env[v] = x
        observe(v, x)
    last_use: dict[int, int] = {}
    for op in graph.ops:
        for v in op.operands:
            if v is not None:
                last_use[v] = op.index
    keep = set(graph.outputs) | set(constants)
    for op in graph.ops:
        args = [None if v is None else env[v] for v in op.operands]
        if op.opdef is None:
            outs = run_host_call(host_calls[op.host_call], [a for a in args if a is not None])
        else:
            res = op.opdef.reference(*args, **op.attrs)
            outs = list(res) if isinstance(res, (tuple, list)) else [res]
        for v, out in zip(op.results, outs):
            env[v] = as_dtype(out, graph.specs[v].dtype)
            observe(v, env[v])
        for v in op.operands:          # free what no later op reads: activations can be large
            if v is not None and last_use.get(v) == op.index and v not in keep:
                env.pop(v, None)


@dataclass(frozen=True)
class Calibration:
    """The largest magnitude each float value reached over the calibration inputs."""
    amax: dict[int, float]


@dataclass(frozen=True)
class Calibrate:
    """Record each float value's max-abs on example inputs (`values`: only these, if given)."""
    name: str = "calibrate"

    def run(self, graph: GraphOps, constants: dict[int, np.ndarray], inputs: Sequence[np.ndarray],
            host_calls: dict[int, HostCall], values: set[int] | None = None) -> Calibration:
        amax: dict[int, float] = {}

        def observe(v: int, x: np.ndarray) -> None:
            if (values is None or v in values) and graph.specs[v].is_float and x.size:
                amax[v] = max(amax.get(v, 0.0), float(np.max(np.abs(x.astype(np.float64)))))

        interpret_values(graph, constants, inputs, host_calls, observe)
        return Calibration(amax)
