"""calibrate: for int8 with per-tensor activation scales, the largest magnitude each GEMM input
takes on the example inputs (the graph run by the reference interpreter, `Calibrate`), from
which dtype-lowering picks the input's one scale. Nothing to do in any other compile."""
from __future__ import annotations

from dataclasses import dataclass

from ops.registry import to_numpy


@dataclass(frozen=True)
class CalibrateActivations:
    """Largest |x| of every int8 GEMM input over the example inputs (int8, per-tensor only)."""
    name: str = "calibrate"
    required_by = "dtype-lowering takes its per-tensor int8 scales from these magnitudes"

    def enabled(self, options) -> bool:
        from compiler.passes.dtype import QUANTIZED
        return options.dtype in QUANTIZED and options.int8_activations == "per-tensor"

    def run(self, state) -> dict[int, float]:
        from compiler.passes.calibrate import Calibrate
        from compiler.passes.dtype import DtypeLowering
        graph, inputs = state.ops, state.example_inputs
        wanted = {op.operands[0] for op in graph.ops
                  if op.target == "accelerator" and DtypeLowering._weight_axis(graph, op) is not None}
        constants = state.constants()
        state.amax = {}
        if wanted and not any(x.is_meta for x in inputs) and all(v in constants for v in graph.weights):
            state.amax = Calibrate().run(graph, constants, [to_numpy(x) for x in inputs], state.graph.host_calls,
                                         values=wanted).amax
        return state.amax
