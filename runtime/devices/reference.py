"""The reference device: interprets a graph-level `ember` module with each op's numpy reference.

It is the numeric ground truth the simulator and the compiled paths are checked against: every
op computes in float64 (or its integer type) and rounds to its declared result type. The
interpreter itself is `compiler.interpret`, which calibration runs too.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch_mlir import ir

from compiler.interpret import interpret as _interpret
from ops.registry import dtype_of_numpy, to_numpy, to_torch
from runtime.host import HostOp, host_op_of

INPUT_DEVICE = "cpu"


def interpret(module: ir.Module, weights: dict[str, Any], inputs: Sequence[np.ndarray],
              host_calls: dict[int, Any] | None = None, visit: Any = None) -> list[np.ndarray]:
    """`compiler.interpret.interpret`, with host calls run as the runtime runs them (`runtime.host`)."""
    return _interpret(module, weights, inputs, host_calls, visit, run_host=_host_call)


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
