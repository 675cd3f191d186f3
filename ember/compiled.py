"""`ember.compile`, and the CompiledModel it returns: runs on a device, shows its IR and what it lacks."""
from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

import numpy as np
import torch

from compiler.errors import EmberError
from compiler.importer import HOST_TARGET_ATTR, main_function
from compiler.pipeline import PHASES, CompileOptions, CompileResult, compile_model
from ops.registry import TensorSpec, to_numpy
from runtime.devices import get_device
from runtime.session import describe


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
        loaded = cls(result, chip=ChipSpec.model_validate(program.chip))
        from runtime.host import HostCallError
        try:   # refused on load, not half-run: every host call must name a torch op
            loaded.host_ops()
        except HostCallError as e:
            raise HostCallError(f"{path}: {e}") from None
        return loaded

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
    def mutated_inputs(self) -> list[int]:
        """Positions of the inputs the model updates in place (device state, e.g. a KV cache)."""
        if self.program is not None:
            return list(self.program.mutated_inputs)
        return list(self.graph.mutated_inputs)

    @property
    def output_specs(self) -> list[TensorSpec]:
        """Shapes and dtypes of the model's outputs, flattened."""
        if self.graph is not None:
            return list(self.graph.output_specs)
        return [TensorSpec(tuple(self.program.tensors[t]["shape"]), self.program.tensors[t]["dtype"])
                for t in self.program.user_outputs]

    @property
    def out_spec(self) -> Any:
        """The pytree structure of the model's outputs."""
        return self._result.out_spec

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
    def check_specs(self, specs: list[TensorSpec]) -> None:
        """Refuse inputs whose number, shapes or dtypes do not match the compiled signature, naming
        the input at fault and what was expected (in PyTorch's words), before anything runs."""
        want, names = self.input_specs, self.input_names
        if len(specs) != len(want):
            raise TypeError(f"the compiled model takes {len(want)} input(s) ({', '.join(names)}), got {len(specs)}")
        for i, (got, spec, name) in enumerate(zip(specs, want, names)):
            if got != spec:   # meta tensors pass when shape and dtype match (timing-only runs)
                raise ValueError(f"input {i} ('{name}') is {describe(got)}, but the model was compiled for "
                                 f"{describe(spec)}")

    def check_inputs(self, inputs: tuple[Any, ...], device: str = "reference") -> None:
        """Refuse inputs that do not match the compiled signature or the device, naming the input
        at fault and what was expected, before anything runs."""
        specs, names = self.input_specs, self.input_names
        for i, (x, spec, name) in enumerate(zip(inputs, specs, names)):
            if not isinstance(x, torch.Tensor):
                raise TypeError(f"input {i} ('{name}') must be a tensor {describe(spec)}, got {type(x).__name__}")
        self.check_specs([TensorSpec.of(x) for x in inputs])
        where = getattr(get_device(device), "INPUT_DEVICE", "cpu")
        for i, (x, name) in enumerate(zip(inputs, names)):
            if x.device.type != where and not (x.is_meta and device == "sim"):
                raise ValueError(f"input {i} ('{name}') is on device '{x.device}', but device='{device}' takes its "
                                 f"inputs on '{where}'")

    def run(self, *inputs: torch.Tensor, device: str = "reference", **options: Any) -> Any:
        """Run once on `device` ("reference" | "sim" | "cpu" | "cuda"): inputs up, run, outputs
        down; outputs are shaped as the model's. Inputs the model updates in place (a KV cache)
        are updated, as eager PyTorch updates them. On "sim", `last_run.breakdown` says how much
        of the time was the host link; `session()` keeps tensors on the device instead."""
        self.check_inputs(inputs, device)
        outs = list(get_device(device).run(self, inputs, **options))
        n_user = len(outs) - len(self.mutated_inputs)
        for i, new in zip(self.mutated_inputs, outs[n_user:]):
            if not inputs[i].is_meta:
                with torch.no_grad():
                    inputs[i].copy_(new.to(inputs[i].device))
        return torch.utils._pytree.tree_unflatten(outs[:n_user], self._result.out_spec)

    def session(self, device: str = "sim", share: Any = None) -> Any:
        """Device memory that lives across runs (`runtime.session.Session`): the weights are
        loaded once; `put`, `run` on device tensors, `get`. `share`: another session whose
        device memory (weights and state loaded by name) this one uses, e.g. prefill's for decode."""
        from runtime.session import Session
        return Session(self, device, share=share)

    def sim_backend(self) -> Any:
        """The simulator backend `cm.run(device="sim")` runs on: weights loaded once, with the
        compiled model, and not charged to its runs."""
        if getattr(self, "_sim_backend", None) is None:
            from runtime.devices.sim import Backend
            from runtime.session import DeviceMemory
            self._sim_backend = Backend(self, DeviceMemory("sim"))
        return self._sim_backend

    def __repr__(self) -> str:
        return (f"CompiledModel(to={self.options.to!r}, chip={self.options.chip!r}, dtype={self.options.dtype!r}, "
                f"ops={sum(self.op_counts().values())}, unsupported={len(self.unsupported)})")


def compile(model: torch.nn.Module, example_inputs: Any, *, chip: Any = "mtia2i", dtype: str = "bf16",
            to: str = "program", allow_unsupported: bool = False,
            print_ir_after_all: bool = False, print_ir_after: Any = (), disable_passes: Any = (),
            cache: Any = None, fuse: bool | None = None, int8_activations: str = "per-row",
            quantize_head: bool = False, share: CompiledModel | None = None) -> CompiledModel:
    """Compile `model` for `chip`, computing in `dtype`, up to phase `to` ("graph" | "tiled" | "program").

    `print_ir_after`: pass names (`ember passes`) after which the IR is printed to stderr
    (`print_ir_after_all`: after every pass); `disable_passes`: passes to skip (refused, with the
    reason, for one a later pass needs).

    `cache`: True for the compile cache in `$EMBER_CACHE_DIR` (else `~/.cache/ember`), a folder, or
    a `runtime.cache.CompileCache`; a Program compiled before from the same graph, weights, options
    and chip is loaded instead of rebuilt. `fuse=False` keeps elementwise epilogues out of the
    contractions (default: on, unless the environment sets EMBER_FUSE=0). `int8_activations`
    (dtype="int8" or "fp8"): "per-row" scales each row of a GEMM's input at run time; "per-tensor" uses
    one scale per input, calibrated on `example_inputs`. `quantize_head` (the quantized dtypes):
    quantize the GEMMs that produce a model output (an LM head, a classifier) too; by default
    they stay in bf16, as quantization toolkits leave `lm_head` out. `share`: a compiled model this one is
    served with in one session (a prefill for this decode): the weights and device state the two
    have in common (by weight name and input name) take `share`'s places in device memory.
    """
    from compiler.resident import layout_digest, resident_layout
    from runtime.cache import as_cache
    from simulator.spec import load_chip
    spec = load_chip(chip)
    chip_key = chip if isinstance(chip, str) and "/" not in chip and not chip.endswith((".yaml", ".yml")) \
        else spec.fingerprint()
    resident = None
    if share is not None:
        if share.program is None:
            raise EmberError("share= takes a model compiled to a Program (to='program')")
        if share.chip != spec:
            raise EmberError(f"share= takes a model compiled for the same chip ({share.chip.name}, not {spec.name})")
        resident = resident_layout(share.program, share.input_names)
    names = (lambda x: (x,) if isinstance(x, str) else tuple(x))
    options = CompileOptions(chip=chip_key, dtype=dtype, to=to, allow_unsupported=allow_unsupported,
                             print_ir_after_all=print_ir_after_all, print_ir_after=names(print_ir_after),
                             disable_passes=names(disable_passes), int8_activations=int8_activations,
                             quantize_head=quantize_head, share=layout_digest(resident), **({} if fuse is None else {"fuse": fuse}))
    return CompiledModel(compile_model(model, example_inputs, options, spec, cache=as_cache(cache), resident=resident),
                         chip=spec)
