"""CompiledModel: what `ember.compile` returns. Runs on a device, shows its IR and what it lacks."""
from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import torch

from compiler.errors import EmberError
from compiler.importer import HOST_TARGET_ATTR, main_function
from compiler.pipeline import PHASES, CompileResult
from ops.registry import TensorSpec
from runtime.devices import get_device


class CompiledModel:
    """A model compiled by Ember, up to the phase `options.to`."""

    def __init__(self, result: CompileResult, chip: Any = None):
        self._result = result
        self.options = result.options
        self.chip = chip
        self.graph = result.graph
        self.last_run = None
        self._numpy_weights: dict[str, np.ndarray] | None = None

    # ------------------------------------------------------------------ inspection
    @property
    def unsupported(self):
        """Ops that cannot run on the accelerator, each with its count and source line."""
        return list(self.graph.unsupported)

    @property
    def input_specs(self) -> list[TensorSpec]:
        return list(self.graph.input_specs)

    @property
    def timings(self) -> dict[str, float]:
        """Seconds spent in each compile step (capture, import, ...)."""
        return dict(self._result.timings)

    def ir(self, phase: str = "graph") -> str:
        """The MLIR text after `phase`."""
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}; phases are {', '.join(PHASES)}")
        if phase not in self._result.ir:
            raise EmberError(f"phase '{phase}' was not reached: this model was compiled with to='{self.options.to}'")
        return self._result.ir[phase]

    def op_counts(self) -> Counter:
        """How many of each graph-level op (`ember.unary:gelu` for kinded ops, `host:<aten op>` for
        host calls), weights and literals aside."""
        counts: Counter = Counter()
        with self.graph.context:
            module = self.graph.module
            targets = {op.attributes["sym_name"].value: op.attributes[HOST_TARGET_ATTR].value
                       for op in module.body.operations if HOST_TARGET_ATTR in op.attributes}
            for operation in main_function(module).regions[0].blocks[0].operations:
                name = operation.name
                if name in ("func.return", "ember.weight", "ember.constant"):
                    continue
                if "kind" in operation.attributes:
                    name += ":" + operation.attributes["kind"].value
                elif name == "func.call":
                    name = "host:" + targets[operation.attributes["callee"].value]
                counts[name] += 1
        return counts

    def numpy_weights(self) -> dict[str, np.ndarray]:
        if self._numpy_weights is None:
            from runtime.devices.reference import to_numpy
            self._numpy_weights = {k: to_numpy(v) for k, v in self.graph.weights.items()}
        return self._numpy_weights

    # ------------------------------------------------------------------ running
    def check_inputs(self, inputs: tuple[Any, ...]) -> None:
        """Refuse inputs that do not match the compiled signature, naming the input at fault."""
        specs = self.graph.input_specs
        if len(inputs) != len(specs):
            raise TypeError(f"the compiled model takes {len(specs)} input(s), got {len(inputs)}")
        for i, (x, spec) in enumerate(zip(inputs, specs)):
            if not isinstance(x, torch.Tensor):
                raise TypeError(f"input {i} must be a tensor {spec}, got {type(x).__name__}")
            got = TensorSpec.of(x)
            if got != spec:
                raise ValueError(f"input {i} is {got}, but the model was compiled for {spec}")

    def run(self, *inputs: torch.Tensor, device: str = "reference", **options: Any) -> Any:
        """Run on `device` ("reference" | "sim" | "cpu" | "cuda"); outputs are shaped as the model's."""
        self.check_inputs(inputs)
        outs = get_device(device).run(self, inputs, **options)
        return torch.utils._pytree.tree_unflatten(list(outs), self._result.out_spec)

    def __repr__(self) -> str:
        return (f"CompiledModel(to={self.options.to!r}, chip={self.options.chip!r}, dtype={self.options.dtype!r}, "
                f"ops={sum(self.op_counts().values())}, unsupported={len(self.unsupported)})")
