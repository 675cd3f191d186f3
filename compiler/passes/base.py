"""What passes of one kind share: the body they run on, and the option that turns them off.

    ModulePass   rewrites the graph-level MLIR module in place: `rewrite(graph)`, where `graph`
                 is the import result (`module`, `weights`, `host_calls`), inside its context
    OpsPass      rewrites the numbered ops (`compiler.graph_ops.GraphOps`): `rewrite(ops)`
    Fusion       mixed in by a pass that `fuse=False` (or `EMBER_FUSE=0`) turns off

A pass of neither kind defines `run(state)` itself (see compiler/passes/README.md).
"""
from __future__ import annotations

from typing import Any


class ModulePass:
    def run(self, state: Any) -> Any:
        with state.graph.context:
            return self.rewrite(state.graph)


class OpsPass:
    def run(self, state: Any) -> Any:
        return self.rewrite(state.ops)


class Fusion:
    def enabled(self, options: Any) -> bool:
        return options.fuse
