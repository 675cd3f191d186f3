"""import: the captured FX graph to a graph-level `ember` MLIR module (compiler/importer.py).

Each node is looked up in the `ops/` registry; subgraphs that depend on no input and no weight
(masks from `arange`, iotas) are folded on the host as they are imported; ops Ember lacks are
collected with their source lines (or kept as host calls with `allow_unsupported`).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ImportGraph:
    """Graph-level `ember` ops from the captured graph, constant subgraphs folded."""
    name: str = "import"
    required_by = "every later pass reads the module it makes"

    def run(self, state) -> None:
        from compiler.importer import import_program
        state.graph = import_program(state.ep, allow_unsupported=state.options.allow_unsupported,
                                     example_inputs=state.example_inputs)
