"""calibrate: for int8 (and fp8), the largest magnitude each input whose scale is calibrated takes
on the example inputs (the graph run by the reference interpreter, `Calibrate`), from which
dtype-lowering picks the input's one scale: every GEMM input with per-tensor activation scales,
and every convolution input with either. Nothing to do in any other compile.

With per-row scales only the convolutions need it: there the pass may be disabled, and they stay
bf16 (see compiler/passes/dtype.py)."""
from __future__ import annotations

from dataclasses import dataclass

from ops.registry import to_numpy


@dataclass(frozen=True)
class CalibrateActivations:
    """Largest |x| over the example inputs of every quantized GEMM input (per-tensor scales) and
    of every quantized convolution input."""
    name: str = "calibrate"
    required_by = "dtype-lowering takes its per-tensor int8 scales from these magnitudes"

    def enabled(self, options) -> bool:
        """Quantized compiles; a per-row one may do without (its convolutions then stay bf16),
        so disabling it there is no refusal but the pass not running."""
        from compiler.passes.dtype import QUANTIZED
        return options.dtype in QUANTIZED and (options.int8_activations == "per-tensor"
                                               or self.name not in options.disable_passes)

    def run(self, state) -> dict[int, float]:
        from compiler.passes.calibrate import Calibrate
        from compiler.passes.dtype import DtypeLowering
        graph, inputs = state.ops, state.example_inputs
        wanted = DtypeLowering.calibrated_inputs(graph, state.options.int8_activations == "per-tensor")
        constants = state.constants()
        state.amax = {}
        if wanted and not any(x.is_meta for x in inputs) and all(v in constants for v in graph.weights):
            state.amax = Calibrate().run(graph, constants, [to_numpy(x) for x in inputs], state.graph.host_calls,
                                         values=wanted).amax
        return state.amax
