"""codegen: every accelerator op's kernel emitted for its chosen plan, and the steps in graph
order, serialized into a Program (compiler/codegen.py): the artifact the runtime loads."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EmitProgram:
    """The Program: per-PE command streams (repeated kernels relocated), constants, steps."""
    name: str = "codegen"
    relocate: bool = True              # emit a repeated kernel once and relocate its copies
    verify_relocation: bool = False    # ... and also emit each copy afresh, and compare
    required_by = "the program phase is its Program"

    def run(self, state) -> None:
        from compiler.codegen import build_program
        graph = state.ops
        # the constants some op reads (an int8 GEMM reads its int8 copy of a weight, not the weight)
        read = {v for op in graph.ops for v in op.operands if v is not None} | set(graph.outputs)
        constants = {v: a for v, a in state.constants().items() if v in read}
        state.program = build_program(graph, state.placements, state.chip, state.options.dtype, constants,
                                      state.graph.host_calls, relocate=self.relocate,
                                      verify_relocation=self.verify_relocation)
        state.program.meta["input_names"] = list(state.graph.input_names)
