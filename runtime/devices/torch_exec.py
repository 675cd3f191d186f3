"""Run a compiled graph's `ember` ops through PyTorch kernels: the `cpu` and `cuda` devices.

The executor reads the same step list the simulator runs (a Program's steps, or, for a model
compiled only to the graph phase, the graph's ops in order) and turns it once into a list of
closures over a value table, so a run costs one Python call per op, as eager does. Each `ember`
op runs through its family's `torch_impl`; host calls run as the aten ops they are.

Where the Program placed a value on the chip in a narrower type than the graph's (bf16 for a
bf16 compile), a kernel step rounds its floating operands and its result to that type and
computes in the graph's type between (the chip multiplies bf16 and accumulates in fp32), so
`cpu`, `cuda` and `sim` agree within the compile dtype's tolerance.

A kernel step with an `epilogue` attribute (elementwise ops the compiler fused into a
contraction, `compiler.passes.fusion`) runs its op, then each step on the result through the
`unary` / `binary` ops' `torch_impl`, a binary step's other operand being the step's operand at
the position it names.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from compiler.interpret import flat_operands
from ops.registry import DTYPE_TO_TORCH, op as lookup_op, to_torch
from ops.kernels.quantize import quantize_rows
from ops.kernels.rotary import rotary
from runtime.host import HostOp, decode_host_call, host_op_of
from simulator.isa.mx import FORMATS as MX_FORMATS, MxFormat

#: ISA element types of the Program's tensor table, as torch dtypes (floating ones only: the
#: rounding a kernel step applies).
_ISA_FLOAT = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class StepList:
    """What an executor runs: steps over numbered values (the Program's schema)."""
    steps: list[dict[str, Any]]
    tensors: dict[int, dict[str, Any]]          # id -> {"shape", "dtype", "isa_dtype"?}
    inputs: list[int]
    outputs: list[int]
    constants: dict[int, Any]                   # id -> numpy array or torch tensor
    host_ops: list[HostOp] = field(default_factory=list)


def step_list(compiled: Any) -> StepList:
    """The steps of `compiled`: its Program if it has one, else its graph-level ops."""
    program = compiled.program
    if program is not None:
        return StepList(program.steps, program.tensors, list(program.inputs), list(program.outputs),
                        dict(program.constants), compiled.host_ops())
    from compiler.graph_ops import graph_ops
    graph = compiled.graph
    with graph.context:
        ops = graph_ops(graph.module)
    tensors = {v: {"shape": list(s.shape), "dtype": s.dtype} for v, s in ops.specs.items()}
    constants: dict[int, Any] = {v: graph.weights[name] for v, name in ops.weights.items()}
    constants.update(ops.literals)
    steps = [{"kind": "host" if op.opdef is None else "op", "op": op.name, "operands": op.operands,
              "results": op.results, "attrs": op.attrs, "host_call": op.host_call, "location": op.location}
             for op in ops.ops]
    return StepList(steps, tensors, ops.inputs, ops.outputs, constants, compiled.host_ops())


def _attrs(raw: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}


class TorchExecutor:
    """A step list prepared for one torch device: call it with the model's inputs."""

    def __init__(self, steps: StepList, device: torch.device | str):
        self.device = torch.device(device)
        self.inputs = steps.inputs
        self.outputs = steps.outputs
        self.tensors = steps.tensors
        self.constants = {v: self._constant(v, value) for v, value in steps.constants.items()}
        last_use: dict[int, int] = {}
        for i, step in enumerate(steps.steps):
            for v in flat_operands(step["operands"]):
                last_use[v] = i
        keep = set(steps.outputs) | set(self.constants)
        self._program: list[tuple[Callable[..., Any], Any, list[int], list[int]]] = []
        for i, step in enumerate(steps.steps):
            free = [v for v in set(flat_operands(step["operands"])) if last_use.get(v) == i and v not in keep]
            fn, operands = self._closure(step, steps.host_ops)
            self._program.append((fn, operands, step["results"], free))

    def _constant(self, v: int, value: Any) -> torch.Tensor:
        dtype = self.tensors[v]["dtype"]
        if isinstance(value, torch.Tensor):
            if value.is_meta:
                raise ValueError("the model's weights are on the meta device: there are no numbers to compute; "
                                 "use device='sim' with timing_only=True")
            return value.detach().to(self.device, DTYPE_TO_TORCH[dtype])
        return to_torch(np.asarray(value), dtype).to(self.device)

    def _closure(self, step: dict[str, Any], host_ops: list[HostOp]) -> tuple[Callable[..., Any], list[Any]]:
        """The step as a function of its operands, and the operands it reads (a weight the chip
        holds narrower is read as a copy rounded once, here, not at every run)."""
        fn = self._function(step, host_ops)
        rounding = self._rounding(step) if step["kind"] == "kernel" else None
        if rounding is None:
            return fn, step["operands"]
        operand_types, result_types = rounding
        operands = list(step["operands"])
        for i, (v, t) in enumerate(zip(operands, operand_types)):
            if t is not None and isinstance(v, int) and v in self.constants:
                key = ("rounded", v)
                if key not in self.constants:
                    self.constants[key] = _round(self.constants[v], t)
                operands[i], operand_types[i] = key, None

        def rounded(*xs):   # values are rounded to the chip's type, computed in the graph's
            xs = [_round(x, t) for x, t in zip(xs, operand_types)]
            return tuple(_round(o, t) for o, t in zip(fn(*xs), result_types))
        return rounded, operands

    def _function(self, step: dict[str, Any], host_ops: list[HostOp]) -> Callable[..., Any]:
        kind = step["kind"]
        results = step["results"]
        if kind == "view":
            shape = tuple(self.tensors[results[0]]["shape"])
            return lambda x: (x.reshape(shape),)
        if step.get("host_call") is not None:
            host_op = host_ops[step["host_call"]]
            device = self.device
            return lambda *xs: host_op([x for x in xs if x is not None], device)
        if step["op"] in ("quantize", "quantize_rows"):   # to int8 or fp8 (quantize_rows: and the row scales)
            out_type = DTYPE_TO_TORCH[self.tensors[results[0]]["dtype"]]
            if step["op"] == "quantize_rows":
                return lambda x: quantize_rows(x, out_type)
            return _quantize(float(step["attrs"]["scale"]), out_type)
        if step["op"] == "quantize_mx":
            return _mx_quantize(MX_FORMATS[self.tensors[results[0]]["isa_dtype"]])
        if step["op"] == "rotary":
            out_type = DTYPE_TO_TORCH[self.tensors[results[0]]["dtype"]]
            return lambda x, cos, sin, _sign: (rotary(x, cos, sin).to(out_type),)
        opdef = lookup_op(step["op"])
        if opdef.torch_impl is None:
            raise NotImplementedError(f"ember.{opdef.name} has no torch implementation")
        impl, attrs = opdef.torch_impl, _attrs(step["attrs"])
        if self._int8_gemm(step):
            impl = _int8_gemm(step["op"])
        elif step["op"] in ("linear", "matmul") and (mx := self._mx_format(step["operands"][0])) is not None:
            impl = _mx_gemm(mx)
        epilogue = _epilogue(attrs.pop("epilogue", None))
        out_types = [DTYPE_TO_TORCH[self.tensors[r]["dtype"]] for r in results]
        if epilogue:
            impl = _with_epilogue(impl, epilogue, len(opdef.operands))

        def call(*xs):
            out = impl(*xs, **attrs)
            outs = out if isinstance(out, (tuple, list)) else (out,)
            return tuple(o if o.dtype == t else o.to(t) for o, t in zip(outs, out_types))
        return call

    def _int8_gemm(self, step: dict[str, Any]) -> bool:
        """A linear/matmul/conv the dtype pass quantized: int8 (or fp8) operands, then a dequantization vector."""
        ops = step["operands"]
        return (step["op"] in ("linear", "matmul", "conv") and len(ops) >= 4 and ops[3] is not None
                and self.tensors[ops[0]]["dtype"] in ("i8", "f8E4M3FN"))

    def _mx_format(self, v: Any) -> MxFormat | None:
        """The MX block format value `v` is held in, or None."""
        return MX_FORMATS.get(self.tensors[v].get("isa_dtype", "")) if isinstance(v, int) else None

    def _rounding(self, step: dict[str, Any]) -> tuple[list[Any], list[Any]] | None:
        """Per operand and result, the narrower float type the chip holds it in (None: as is)."""
        def narrow(v: Any) -> Any:
            if v is None or isinstance(v, list):
                return None
            entry = self.tensors[v]
            isa = _ISA_FLOAT.get(entry.get("isa_dtype", ""))
            graph = DTYPE_TO_TORCH[entry["dtype"]]
            return isa if isa is not None and graph.is_floating_point and isa != graph else None

        operands = [narrow(v) for v in step["operands"]]
        results = [narrow(v) for v in step["results"]]
        if not any(operands) and not any(results):
            return None
        return operands, results

    @torch.inference_mode()
    def __call__(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        env: dict[int, torch.Tensor] = dict(self.constants)
        env.update(zip(self.inputs, inputs))
        for fn, operands, results, free in self._program:
            args = [None if v is None else [env[u] for u in v] if isinstance(v, list) else env[v]
                    for v in operands]
            for v, out in zip(results, fn(*args)):
                env[v] = out
            for v in free:
                del env[v]
        return [env[v] for v in self.outputs]


def _quantize(scale: float, out_type: torch.dtype) -> Callable[..., Any]:
    """The dtype pass's `quantize` step: x * scale, rounded half to even and saturated to int8,
    or rounded to nearest even and saturated to fp8 e4m3."""
    if out_type == torch.float8_e4m3fn:
        top = torch.finfo(out_type).max
        return lambda x: (torch.clamp(x.float() * scale, -top, top).to(out_type),)
    return lambda x: (torch.clamp(torch.round(x.float() * scale), -128, 127).to(torch.int8),)


def _int8_gemm(op: str) -> Callable[..., Any]:
    """An int8 x int8 (or fp8 x fp8) GEMM as the chip runs it: an exact accumulator (float64
    holds any int8 dot product exactly; fp8 ones to float64's precision), converted to fp32, times the per-row activation scales (if the
    activation was quantized per row), times the per-output-column dequantization vector, plus
    the bias in fp32. A conv's output channels are its dimension 1."""
    def run(xq, wq, bias=None, dequant=None, row_scale=None, **attrs):
        x, w = xq.to(torch.float64), wq.to(torch.float64)
        if op == "conv":
            acc = lookup_op("conv").torch_impl(x, w, None, **attrs)
            per_channel = (-1,) + (1,) * (acc.dim() - 2)
            dequant = dequant.reshape(per_channel)
            bias = None if bias is None else bias.reshape(per_channel)
        else:
            acc = torch.nn.functional.linear(x, w) if op == "linear" else torch.matmul(x, w)
        y = acc.to(torch.float32)
        if row_scale is not None:
            y = y * row_scale
        y = y * dequant
        return y if bias is None else y + bias.to(torch.float32)
    return run


def _mx_quantize(fmt: MxFormat) -> Callable[..., Any]:
    """The dtype pass's `quantize_mx` step: x's rows in the MX format, bytes as the chip writes them."""
    return lambda x: (torch.from_numpy(fmt.encode(x.float().cpu().numpy())).to(x.device),)


def _mx_gemm(fmt: MxFormat) -> Callable[..., Any]:
    """An MX GEMM (A[..., K] and W[N, K] rows in the format) as the chip runs it: the blocks'
    values are exact in fp32, their products summed in float64 and rounded to fp32, plus the bias."""
    def values(q: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(fmt.decode(q.cpu().numpy())).to(device=q.device, dtype=torch.float64)

    def run(xq, wq, bias=None, **attrs):
        y = torch.nn.functional.linear(values(xq), values(wq)).to(torch.float32)
        return y if bias is None else y + bias.to(torch.float32)
    return run


def _epilogue(raw: Any) -> list[tuple]:
    """A step's `epilogue` attribute as a list of tuples (a loaded Program holds lists)."""
    return [tuple(s) for s in raw or ()]


def _with_epilogue(impl: Callable[..., Any], epilogue: list[tuple], declared: int) -> Callable[..., Any]:
    """`impl` on the op's own operands, then the fused elementwise steps on its result."""
    unary, binary = lookup_op("unary").torch_impl, lookup_op("binary").torch_impl
    added = {int(s[2]) for s in epilogue if s[0] == "binary"}

    def run(*xs, **attrs):
        own = [x for i, x in enumerate(xs) if i not in added]
        while len(own) > declared and own[-1] is None:     # positions padded up to the added ones
            own.pop()
        y = impl(*own, **attrs)
        for s in epilogue:
            if s[0] == "unary":
                y = unary(y, s[1], s[2], s[3])
            else:
                other = xs[int(s[2])].to(y.dtype)
                y = binary(y, other, s[1]) if int(s[3]) == 0 else binary(other, y, s[1])
        return y
    return run


def _round(x: Any, dtype: Any) -> Any:
    """`x` rounded to `dtype` and back (None: as is)."""
    return x if dtype is None or x is None else x.to(dtype).to(x.dtype)


def executor(compiled: Any, device: str) -> TorchExecutor:
    """The executor of `compiled` on torch `device`, prepared (weights moved there) on first use."""
    executors = compiled.__dict__.setdefault("_torch_executors", {})
    if device not in executors:
        executors[device] = TorchExecutor(step_list(compiled), device)
    return executors[device]


def run_on(compiled: Any, inputs: Sequence[torch.Tensor], device: str) -> list[torch.Tensor]:
    """Run `compiled` on torch `device`, preparing (and keeping) its executor on first use."""
    return executor(compiled, device)(inputs)


@dataclass
class TorchRun:
    """`sess.last_run` on a torch device: the run's wall-clock seconds, all on the device."""
    seconds: float

    @property
    def breakdown(self) -> dict[str, float]:
        return {"device": self.seconds, "host_link": 0.0, "host": 0.0}


class TorchBackend:
    """A session's side on a torch device: device tensors are torch tensors there; the weights
    are moved there once (the executor keeps them). Transfers and runs take wall-clock time."""
    device = "cpu"

    def __init__(self, compiled: Any, memory: Any):
        self.compiled = compiled
        self.executor = executor(compiled, self.device)
        self.mutated = len(compiled.mutated_inputs)

    def _sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    def _timed(self, fn: Callable[[], Any]) -> tuple[Any, float]:
        import time
        self._sync()
        t0 = time.perf_counter()
        out = fn()
        self._sync()
        return out, time.perf_counter() - t0

    def load(self) -> float:
        return 0.0

    def put(self, x: torch.Tensor, spec: Any) -> tuple[torch.Tensor, float]:
        if x.is_meta:
            raise ValueError(f"device '{self.device}' computes numbers: a meta tensor cannot be put there")
        return self._timed(lambda: x.detach().to(self.device, copy=True))

    def zeros(self, spec: Any) -> tuple[torch.Tensor, float]:
        return self._timed(lambda: torch.zeros(spec.shape, dtype=DTYPE_TO_TORCH[spec.dtype], device=self.device))

    def get(self, x: torch.Tensor, spec: Any) -> tuple[torch.Tensor, float]:
        return self._timed(lambda: x.cpu())

    def run(self, inputs: Sequence[torch.Tensor], timing_only: bool = False,
            routing: Any = None) -> tuple[list, list, TorchRun]:
        if timing_only:
            raise ValueError(f"device '{self.device}' has no timing-only runs: use device='sim'")
        outs, seconds = self._timed(lambda: self.executor(inputs))
        n_user = len(outs) - self.mutated
        return outs[:n_user], outs[n_user:], TorchRun(seconds)


__all__ = ["StepList", "TorchExecutor", "TorchBackend", "step_list", "run_on", "decode_host_call", "host_op_of"]
