"""capture: torch.export of the model on its example inputs, then decompositions down to the
ops `ops/` registers (compiler/capture.py)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Capture:
    """The model as an FX graph in ATen IR (torch.export), decomposed to what `ops/` lowers."""
    name: str = "capture"
    required_by = "every later pass reads the captured graph"

    def run(self, state) -> None:
        from compiler.capture import capture
        state.ep = capture(state.model, state.example_inputs)
        state.out_spec = state.ep.call_spec.out_spec
