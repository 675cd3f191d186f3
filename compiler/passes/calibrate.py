"""calibrate: run the graph on example inputs with the ops' numpy references and record, per
value, the statistics that quantization needs (the largest magnitude seen).

The graph runs on the reference interpreter (`compiler.interpret`, the one the reference device
uses), over the numbered values the backend passes read (`GraphOps`), so that a pass can ask
for any intermediate value by id.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from compiler.graph_ops import GraphOp, GraphOps
from compiler.importer import HostCall
from compiler.interpret import interpret_graph


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

        def observe_results(op: GraphOp, operands: list[Any], results: list[np.ndarray]) -> None:
            for v, x in zip(op.results, results):
                observe(v, x)

        for v, x in (*constants.items(), *zip(graph.inputs, inputs)):
            observe(v, x)
        interpret_graph(graph, constants, inputs, host_calls, visit=observe_results)
        return Calibration(amax)
