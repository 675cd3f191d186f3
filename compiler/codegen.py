"""Codegen: a partitioned, tiled graph to a Program (simulator.isa.artifact)."""
from __future__ import annotations

from typing import Any

import numpy as np

from compiler.graph_ops import GraphOps
from compiler.hostcalls import encode_host_calls
from compiler.passes.tile import kernel_call
from ops.kernel import Placement, kernel_for, roofline_cycles
from simulator.isa import ProgramBuilder
from simulator.isa.artifact import Program


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def build_program(graph: GraphOps, placements: dict[int, Placement], chip, dtype: str,
                  constants: dict[int, np.ndarray], host_calls: dict[int, Any]) -> Program:
    """Emit every accelerator op's kernel and list the steps in graph order."""
    tensors: dict[int, dict[str, Any]] = {}
    for v, spec in graph.specs.items():
        entry: dict[str, Any] = {"shape": list(spec.shape), "dtype": spec.dtype}
        if v in placements:
            p = placements[v]
            entry.update(space=p.space, addr=p.addr, isa_dtype=p.dtype)
        tensors[v] = entry
    steps: list[dict[str, Any]] = []
    kernels = []
    for op in graph.ops:
        record = {"op": op.name, "operands": op.operands, "results": op.results, "location": op.location,
                  "attrs": {k: _jsonable(v) for k, v in op.attrs.items()}}
        if op.target == "view":
            steps.append({"kind": "view", **record})
        elif op.target == "accelerator":
            template = kernel_for(op.name)
            call = kernel_call(op, placements)
            builder = ProgramBuilder(chip, name=f"{op.name}#{op.index}")
            template.emit(call, op.plan, chip, builder)
            kernels.append(builder.build())
            steps.append({"kind": "kernel", "kernel": len(kernels) - 1, **record,
                          "plan": repr(op.plan), "predicted_cycles": op.predicted_cycles,
                          "roofline_cycles": float(roofline_cycles(call, template, chip)),
                          "flops": int(template.flops(call))})
        else:
            steps.append({"kind": "host", **record, "host_call": op.host_call})
    return Program(chip=chip.model_dump(mode="json"), dtype=dtype, tensors=tensors, inputs=graph.inputs,
                   outputs=graph.outputs, steps=steps, kernels=kernels, constants=constants,
                   meta={"host_calls": encode_host_calls(host_calls)})
