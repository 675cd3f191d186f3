"""CompiledModel: what `ember.compile` returns. Runs on a device, shows its IR and what it lacks."""
from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

import numpy as np
import torch

from compiler.errors import EmberError
from compiler.importer import HOST_TARGET_ATTR, main_function
from compiler.pipeline import PHASES, CompileOptions, CompileResult
from ops.registry import TensorSpec, to_numpy
from runtime.devices import get_device


class CompiledModel:
    """A model compiled by Ember, up to the phase `options.to`."""

    def __init__(self, result: CompileResult, chip: Any = None):
        self._result = result
        self.options = result.options
        self.chip = chip
        self.graph = result.graph
        self.program = result.program
        self.last_run = None
        self._numpy_weights: dict[str, np.ndarray] | None = None
        self._host_ops: list | None = None

    @property
    def host_calls(self):
        """The aten ops kept on the host, by call index (None for a model loaded from a file)."""
        return None if self.graph is None else self.graph.host_calls

    def host_ops(self) -> list:
        """The host calls ready to run (`runtime.host.HostOp`), by call index: from this process's
        compile, or read back from the Program file."""
        if self._host_ops is None:
            from runtime.host import decode_host_call, host_op_of
            if self.graph is not None:
                calls = self.graph.host_calls
                self._host_ops = [host_op_of(calls[i]) for i in range(len(calls))]
            else:
                self._host_ops = [decode_host_call(c) for c in self.program.meta.get("host_calls", [])]
        return self._host_ops

    # ------------------------------------------------------------------ Program files
    def save(self, path: str) -> None:
        """Write the Program (compile with to='program') to `path`, atomically."""
        if self.program is None:
            raise EmberError(f"only a Program can be saved: compile with to='program' (this model was "
                             f"compiled with to='{self.options.to}')")
        unwritable = [c for c in self.program.meta.get("host_calls", []) if isinstance(c, str)]
        if unwritable:
            raise EmberError(f"cannot save this Program: {unwritable[0]}; run it in this process instead")
        self.program.meta["input_names"] = self.input_names
        self.program.meta["out_spec"] = torch.utils._pytree.treespec_dumps(self._result.out_spec)
        self.program.meta["options"] = dataclasses.asdict(self.options)
        self.program.save(path)

    @classmethod
    def load(cls, path: str) -> "CompiledModel":
        from simulator.isa.artifact import Program
        from simulator.spec import ChipSpec
        program = Program.load(path)
        options = CompileOptions(**program.meta["options"])
        out_spec = torch.utils._pytree.treespec_loads(program.meta["out_spec"])
        result = CompileResult(options, None, out_spec, {}, {}, program)
        return cls(result, chip=ChipSpec.model_validate(program.chip))

    # ------------------------------------------------------------------ inspection
    @property
    def unsupported(self):
        """Ops that cannot run on the accelerator, each with its count and source line."""
        return list(self.graph.unsupported)

    @property
    def input_specs(self) -> list[TensorSpec]:
        if self.graph is None:
            return [TensorSpec(tuple(self.program.tensors[t]["shape"]), self.program.tensors[t]["dtype"])
                    for t in self.program.inputs]
        return list(self.graph.input_specs)

    @property
    def input_names(self) -> list[str]:
        """The model's names for its inputs (`input 0`, ... where it has none)."""
        names = self.graph.input_names if self.graph is not None else self.program.meta.get("input_names", [])
        return list(names) if len(names) == len(self.input_specs) else [f"input {i}" for i in range(len(self.input_specs))]

    @property
    def timings(self) -> dict[str, float]:
        """Seconds spent in each compile step (capture, import, ...)."""
        return dict(self._result.timings)

    def ir(self, phase: str = "graph") -> str:
        """The MLIR text after `phase`. For "program", the lowered IR: every kernel's per-PE
        command schedule as lowered `ember` ops, built from the Program on first request."""
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}; phases are {', '.join(PHASES)}")
        if phase == "program" and self.program is not None:
            if getattr(self, "_lowered_ir", None) is None:
                from compiler.lowered import lowered_text
                self._lowered_ir = lowered_text(self.program)
            return self._lowered_ir
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
            self._numpy_weights = {k: to_numpy(v) for k, v in self.graph.weights.items()}
        return self._numpy_weights

    # ------------------------------------------------------------------ running
    def check_inputs(self, inputs: tuple[Any, ...], device: str = "reference") -> None:
        """Refuse inputs that do not match the compiled signature or the device, naming the input
        at fault and what was expected, before anything runs."""
        specs, names = self.input_specs, self.input_names
        if len(inputs) != len(specs):
            raise TypeError(f"the compiled model takes {len(specs)} input(s) ({', '.join(names)}), got {len(inputs)}")
        where = getattr(get_device(device), "INPUT_DEVICE", "cpu")
        for i, (x, spec, name) in enumerate(zip(inputs, specs, names)):
            label = f"input {i} ('{name}')"
            if not isinstance(x, torch.Tensor):
                raise TypeError(f"{label} must be a tensor {spec}, got {type(x).__name__}")
            got = TensorSpec.of(x)
            if got != spec:   # meta tensors pass when shape and dtype match (timing-only runs)
                raise ValueError(f"{label} is {got}, but the model was compiled for {spec}")
            if x.device.type != where and not (x.is_meta and device == "sim"):
                raise ValueError(f"{label} is on device '{x.device}', but device='{device}' takes its "
                                 f"inputs on '{where}'")

    def run(self, *inputs: torch.Tensor, device: str = "reference", **options: Any) -> Any:
        """Run on `device` ("reference" | "sim" | "cpu" | "cuda"); outputs are shaped as the model's."""
        self.check_inputs(inputs, device)
        outs = get_device(device).run(self, inputs, **options)
        return torch.utils._pytree.tree_unflatten(list(outs), self._result.out_spec)

    def __repr__(self) -> str:
        return (f"CompiledModel(to={self.options.to!r}, chip={self.options.chip!r}, dtype={self.options.dtype!r}, "
                f"ops={sum(self.op_counts().values())}, unsupported={len(self.unsupported)})")
