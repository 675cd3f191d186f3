"""The compile state: everything the passes of `compiler/pipeline.py` read and write.

Every pass has one signature, `run(state)`. The first passes fill `ep` (the captured graph)
and `graph` (the imported MLIR module, its weights and host calls); the module-level passes
rewrite `graph.module`; `ops`, the module as a flat list of numbered ops, is made the first time
a pass asks for it, and later passes attach their decisions to it (targets, storage dtypes,
placements, plans); codegen leaves `program`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ops.registry import to_numpy


@dataclass
class CompileState:
    model: torch.nn.Module
    example_inputs: tuple[torch.Tensor, ...]
    options: Any                                   # compiler.pipeline.CompileOptions
    chip: Any                                      # simulator.spec.ChipSpec
    resident: dict[str, Any] | None = None         # weights' and state's places another Program fixed
    ep: Any = None                                 # torch.export.ExportedProgram
    graph: Any = None                              # compiler.importer.ImportResult
    out_spec: Any = None
    amax: dict[int, float] | None = None           # calibrated GEMM input magnitudes (int8 per-tensor)
    placements: dict[int, Any] | None = None       # value id -> ops.kernel.Placement
    program: Any = None                            # simulator.isa.artifact.Program
    timings: dict[str, float] = field(default_factory=dict)
    _ops: Any = None

    @property
    def ops(self) -> Any:
        """The graph as numbered ops (`compiler.graph_ops.GraphOps`), made on first use: the
        module-level passes run before anything asks for it."""
        if self._ops is None:
            from compiler.graph_ops import graph_ops
            with self.graph.context:
                self._ops = graph_ops(self.graph.module)
        return self._ops

    @property
    def has_ops(self) -> bool:
        return self._ops is not None

    def constants(self) -> dict[int, Any]:
        """Value id -> numpy array of every weight that has values, and every literal."""
        ops = self.ops
        out = {}
        for v, name in ops.weights.items():
            tensor = self.graph.weights.get(name)
            if tensor is not None and not tensor.is_meta:
                out[v] = to_numpy(tensor)
        out.update(ops.literals)
        return out
