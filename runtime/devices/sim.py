"""The simulator device: runs a Program's steps in order on the simulated chip.

Kernel steps run on the simulator (functional and timing, or timing only) with their operands
written to the places the memory plan gave them; host steps run on the host with each op's
numpy reference (or torch, for host calls of aten ops), in the host time the chip file's `host`
section models. A value that crosses between host and chip is charged to the modelled host link
(PCIe), once per crossing.

`Backend` holds a session's device tensors (`SimData`: the values, and whether they are on the
chip or still on the host) and runs the Program on them; `run` is the one-shot path of
`cm.run`: inputs go up as kernels first read them, every output (and every input the model
updated in place) comes back down, and `last_run.breakdown` says how much of that was the host
link.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from compiler.errors import EmberError, source_of
from ops.data_dependent import check_size
from ops.registry import DTYPE_TO_TORCH, TensorSpec, as_dtype, dtype_of_numpy, op as lookup_op, to_numpy, to_torch
from runtime.host_cost import host_step_seconds
from runtime.routing import check_routing
from runtime.session import describe
from runtime.sized_kernels import SizedKernels
from simulator import simulate
from simulator.errors import AddressOutOfRange
from simulator.simulate import TIMING_CACHE
from simulator.trace import DeferredEvents
from simulator.isa import DType
from simulator.spec import ChipSpec

INPUT_DEVICE = "cpu"     # or "meta", for timing-only runs
#: commands of each kernel a run's trace shows (`RunResult.write_trace`)
TRACE_EVENTS_PER_KERNEL = 20000

#: where each kind of step's time goes in `RunResult.breakdown`
_BREAKDOWN = {"kernel": "device", "copy": "device", "transfer": "host_link", "host": "host"}


@dataclass
class StepRecord:
    """One step of a run: what it was, where it ran, how long it took."""
    kind: str                  # "kernel" | "host" | "view" | "transfer" | "copy"
    op: str
    location: str
    cycles: int = 0
    predicted_cycles: int | None = None
    roofline_cycles: float | None = None
    start_cycle: int = 0


@dataclass
class RunResult:
    """What `cm.last_run` (and `sess.last_run`) holds after a run on `device="sim"`."""
    chip: ChipSpec
    cycles: int = 0
    steps: list[StepRecord] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    #: what a timing-only run assumed for sizes it could not read (a routing, per sized step)
    assumed: list[str] = field(default_factory=list)
    _events: list[dict] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return self.cycles / self.chip.clock_hz

    @property
    def breakdown(self) -> dict[str, float]:
        """Seconds by where they went: "device" (kernels on the chip), "host_link" (transfers
        over PCIe), "host" (steps run on the host)."""
        out = {"device": 0.0, "host_link": 0.0, "host": 0.0}
        for s in self.steps:
            if s.kind in _BREAKDOWN:
                out[_BREAKDOWN[s.kind]] += s.cycles / self.chip.clock_hz
        return out

    def write_trace(self, path: str) -> None:
        """Chrome/Perfetto JSON: one process per PE, one track per engine, kernels back to back."""
        from simulator.trace import write_trace
        write_trace(path, self._events)

    def __repr__(self) -> str:
        return f"RunResult(cycles={self.cycles}, seconds={self.seconds:.3e}, steps={len(self.steps)})"


class _Accumulator:
    """Sums per-kernel stats into whole-run stats."""

    def __init__(self, chip: ChipSpec):
        self.chip = chip
        self.busy = {}
        self.bytes: dict[str, int] = {}
        self.energy: dict[str, float] = {}
        self.macs: dict[str, int] = {}
        self.host_link_bytes = 0
        self.commands = 0

    def add(self, stats: dict[str, Any]) -> None:
        for engine, per_pe in stats["busy_cycles"].items():
            self.busy[engine] = self.busy.get(engine, 0) + sum(per_pe)
        for k, v in stats["bytes"].items():
            self.bytes[k] = self.bytes.get(k, 0) + int(v)
        for k, v in stats["energy_j"].items():
            self.energy[k] = self.energy.get(k, 0.0) + float(v)
        for k, v in stats["macs"].items():
            self.macs[k] = self.macs.get(k, 0) + int(v)
        self.commands += int(stats["commands"])

    def result(self, cycles: int) -> dict[str, Any]:
        pes = self.chip.num_pes
        seconds = cycles / self.chip.clock_hz
        return {"cycles": cycles, "seconds": seconds,
                "engine_utilization": {e: b / (pes * max(cycles, 1)) for e, b in self.busy.items()},
                "bytes": {**self.bytes, "host_link": self.host_link_bytes},
                "macs": self.macs,
                "achieved_ops_per_s": 2 * sum(self.macs.values()) / seconds if cycles else 0.0,
                "energy_j": self.energy, "commands": self.commands}


@dataclass
class SimData:
    """A tensor as the simulator device holds it: its values (None in timing-only runs) and
    whether it is in the chip's memory or still on the host."""
    array: np.ndarray | None
    on_chip: bool


class DeviceValueError(EmberError, ValueError):
    """A value that the chip cannot hold as the Program says (an integer out of int32's range)."""


def _device_array(value: np.ndarray, isa_dtype: str, what: str = "a value") -> np.ndarray:
    value = np.asarray(value)
    dt = DType.of(isa_dtype).np
    if value.dtype.kind in "iub" and dt.kind == "i" and value.size:
        info = np.iinfo(dt)
        lo, hi = int(value.min()), int(value.max())
        if lo < info.min or hi > info.max:
            raise DeviceValueError(f"{what} holds integers in [{lo}, {hi}], outside the {isa_dtype} range the "
                                   "chip holds integers in")
    return value.astype(dt)


def _nbytes(entry: dict[str, Any]) -> int:
    return math.prod(entry["shape"]) * DType.of(entry.get("isa_dtype", "fp32")).itemsize


def _cycles(seconds: float, chip: ChipSpec) -> int:
    return math.ceil(seconds * chip.clock_hz)


class Backend:
    """A session's side on the simulator: device tensors as `SimData`, runs of the Program."""

    def __init__(self, compiled: Any, memory: Any):
        program = compiled.program
        if program is None:
            raise ValueError(f"device 'sim' runs a Program: compile with to='program' (this model was compiled "
                             f"with to='{compiled.options.to}')")
        self.compiled = compiled
        self.program = program
        self.chip = ChipSpec.model_validate(program.chip)
        self.memory = memory
        if memory.chip is None:
            memory.chip = self.chip
        elif memory.chip != self.chip:
            raise EmberError(f"sessions that share device memory must run on one chip: {memory.chip.name} "
                             f"and {self.chip.name}")
        tensors = program.tensors
        produced = {t for s in program.steps for t in s["results"]} | set(program.inputs)
        read = {t for s in program.steps for t in s["operands"] if t is not None}
        self.weights = (read - produced) | set(program.constants)
        self.sized = SizedKernels(program, self.chip)
        self.has_values = not (read - produced - set(program.constants))
        for t, entry in tensors.items():
            if "space" in entry:
                memory.need(entry["space"], entry["addr"] + _nbytes(entry))

    def load(self) -> float:
        """Upload the weights the chip holds (once per name across the sessions that share this
        memory); returns the host-link seconds it took."""
        nbytes = 0
        for t in self.weights:
            entry = self.program.tensors[t]
            if "space" not in entry:
                continue
            # one weight at one place is loaded once (Programs compiled with share= agree on both)
            key = (entry.get("weight", f"{id(self.program)}#{t}"), entry["space"], entry["addr"])
            if key not in self.memory.loaded:
                self.memory.loaded.add(key)
                nbytes += _nbytes(entry)
        return nbytes / self.chip.host_link.bytes_per_s

    def put(self, x: torch.Tensor, spec: TensorSpec) -> tuple[SimData, float]:
        from runtime.session import device_bytes
        array = None if x.is_meta else to_numpy(x)
        if array is not None and not spec.is_float:
            _device_array(array, "int32", f"the tensor {describe(spec)} given to sess.put")
        return SimData(array, True), device_bytes(spec) / self.chip.host_link.bytes_per_s

    def zeros(self, spec: TensorSpec) -> tuple[SimData, float]:
        from ops.registry import numpy_dtype
        from runtime.session import device_bytes
        seconds = device_bytes(spec) / self.chip.dram_bytes_per_s      # a memset in DRAM
        return SimData(np.zeros(spec.shape, numpy_dtype(spec.dtype)), True), seconds

    def get(self, data: SimData, spec: TensorSpec) -> tuple[torch.Tensor, float]:
        from runtime.session import device_bytes
        seconds = device_bytes(spec) / self.chip.host_link.bytes_per_s if data.on_chip else 0.0
        if data.array is None:
            return torch.empty(spec.shape, dtype=DTYPE_TO_TORCH[spec.dtype], device="meta"), seconds
        return to_torch(data.array, spec.dtype), seconds

    def run(self, inputs: Sequence[SimData], timing_only: bool = False, download: bool = False,
            routing: Any = None) -> tuple[list[SimData], list[SimData], RunResult]:
        """Run the Program on `inputs`; returns the model's outputs, the new contents of the inputs
        it updates in place, and the run's record. `download`: bring every output and updated input
        back to the host at the end (the one-shot path), charged to the host link. `routing`: what
        a timing-only run assumes for a mixture-of-experts layer (runtime/routing.py)."""
        check_routing(routing)
        run = _Run(self, inputs, timing_only, routing)
        run.steps()
        program = self.program
        if download:
            run.transfer(program.outputs, to_chip=False)
        outs = [run.data(t) for t in program.outputs]
        result = run.finish()
        n_user = len(program.user_outputs)
        return outs[:n_user], outs[n_user:], result


class _Run:
    """One run of a Program on the simulator (see `Backend.run`)."""

    def __init__(self, backend: Backend, inputs: Sequence[SimData], timing_only: bool, routing: Any = None):
        program = backend.program
        self.backend, self.program, self.chip = backend, program, backend.chip
        self.tensors = program.tensors
        self.timing_only = timing_only
        self.routing = routing
        if not timing_only and any(d.array is None for d in inputs):
            raise ValueError("inputs on the meta device carry no numbers: pass timing_only=True")
        if not timing_only and not backend.has_values:
            raise ValueError("the Program has no weight values (compiled from a meta-device model): "
                             "pass timing_only=True")
        self.store: dict[int, np.ndarray] = dict(program.constants)
        if not timing_only:
            for tid, d in zip(program.inputs, inputs):
                self.store[tid] = d.array
        # weights are loaded with the model, whether they carry values (constants) or not (a
        # meta-device model): those the chip reads live there, all of them on the host as well
        weights = backend.weights
        self.on_chip = {t for t in weights if "space" in self.tensors[t]}
        self.on_host = set(weights)
        for tid, d in zip(program.inputs, inputs):
            (self.on_chip if d.on_chip else self.on_host).add(tid)
        self.acc = _Accumulator(self.chip)
        self.result = RunResult(self.chip)
        self.clock = 0

    def record(self, record: StepRecord) -> None:
        record.start_cycle = self.clock
        self.result.steps.append(record)
        self.clock += record.cycles

    def transfer(self, tids: Sequence[int], to_chip: bool) -> None:
        nbytes = 0
        for t in tids:
            if t is None or (t in self.on_chip if to_chip else t in self.on_host):
                continue
            nbytes += _nbytes(self.tensors[t])
            (self.on_chip if to_chip else self.on_host).add(t)
        if nbytes:
            cycles = math.ceil(nbytes / self.chip.host_link.bytes_per_s * self.chip.clock_hz)
            self.record(StepRecord("transfer", "host->chip" if to_chip else "chip->host", "", cycles))
            self.acc.host_link_bytes += nbytes

    def data(self, t: int) -> SimData:
        return SimData(None if self.timing_only else self.store[t], t in self.on_chip)

    def steps(self) -> None:
        for step in self.program.steps:
            kind = step["kind"]
            if kind == "view":
                self.view(step)
            elif kind == "kernel":
                self.kernel(step)
            else:
                self.host(step)
        self.update_state()

    def view(self, step: dict[str, Any]) -> None:
        src, out = step["operands"][0], step["results"][0]
        if not self.timing_only:
            self.store[out] = self.store[src].reshape(self.tensors[out]["shape"])
        (self.on_chip if src in self.on_chip else self.on_host).add(out)

    def kernel(self, step: dict[str, Any]) -> None:
        tensors, results = self.tensors, step["results"]
        if step.get("elided"):
            # a link of a fused concat chain: the chain's last step writes the whole result
            self.on_chip.update(results)
            self.on_host.difference_update(results)
            self.record(StepRecord("kernel", step["op"], step["location"], 0, 0, 0.0))
            return
        reads = step.get("reads", step["operands"])        # a fused chain reads its inputs directly
        self.transfer(reads, to_chip=True)
        memory_init = None
        if not self.timing_only:
            memory_init = {(tensors[t]["space"], tensors[t]["addr"]):
                           _device_array(self.store[t], tensors[t]["isa_dtype"], f"value {t} of {step['op']}")
                           for t in reads if t is not None}
        kernel, roofline = self.program.kernels[step["kernel"]], step.get("roofline_cycles")
        if step.get("sized_by") is not None:      # its work is data: made for this run's sizes
            sizes, assumed = self.backend.sized.sizes(step, None if self.timing_only else self.store, self.routing)
            kernel, roofline = self.backend.sized.kernel(step, sizes)
            if assumed:
                self.result.assumed.append(assumed)
        if step["op"] == "expect" and self.timing_only:   # a size the data gives: no data to check it on
            self.result.assumed.append(step["attrs"]["what"])
        try:
            res = simulate(kernel, self.chip, memory_init=memory_init,
                           timing_only=self.timing_only, cache=TIMING_CACHE if self.timing_only else None)
        except AddressOutOfRange as e:   # a fault of the data (an index out of range): name the op
            if step["op"] == "expect":   # the data gives another size than the Program's
                check_size(self.store[reads[0]], **step["attrs"])
            raise type(e)(f"ember.{step['op']} at {source_of(step['location']) or 'an unknown source line'}: {e}") from e
        if not self.timing_only:
            for out in results:            # a kernel may write several results (int8 rows and their scales)
                entry = tensors[out]
                raw = res.read(entry["space"], entry["addr"], tuple(entry["shape"]), DType.of(entry["isa_dtype"]).np)
                self.store[out] = as_dtype(raw, entry["dtype"])
        self.on_chip.update(results)
        self.on_host.difference_update(results)
        # events are made when a trace is written, not for every kernel of every run: a run keeps
        # the compact kernel and the timing of the commands a trace shows, not the expanded program
        shown = TRACE_EVENTS_PER_KERNEL
        self.result._events.append(DeferredEvents(lambda p=kernel: p.expand().commands[:shown],
                                                  res.timing.start[:shown].copy(), res.timing.end[:shown].copy(),
                                                  self.chip, self.clock, max_events=shown))
        self.acc.add(res.stats)
        self.record(StepRecord("kernel", step["op"], step["location"], res.cycles,
                               step.get("predicted_cycles"), roofline))

    def host(self, step: dict[str, Any]) -> None:
        operands, results = step["operands"], step["results"]
        self.transfer(operands, to_chip=False)
        if not self.timing_only:
            outs = _host_step(self.backend.compiled, step, [None if t is None else self.store[t] for t in operands])
            for t, value in zip(results, outs):
                self.store[t] = as_dtype(value, self.tensors[t]["dtype"])
        self.on_host.update(results)
        for t in results:
            self.on_chip.discard(t)
        seconds = host_step_seconds(self.program, step, self.chip)
        self.record(StepRecord("host", step["op"], step["location"], _cycles(seconds, self.chip)))

    def update_state(self) -> None:
        """The new contents of each input updated in place must be in that input's place for the
        next run: free where the update was made in place, otherwise a copy on the chip."""
        program = self.program
        news = program.outputs[len(program.outputs) - len(program.mutated_inputs):]
        for i, new in zip(program.mutated_inputs, news):
            old = self.tensors[program.inputs[i]]
            entry = self.tensors[new]
            if new not in self.on_chip or "space" not in old:
                continue                         # the state lives on the host: nothing to move
            if (entry.get("space"), entry.get("addr")) != (old["space"], old["addr"]):
                rate = self.chip.dram_bytes_per_s if "dram" in (old["space"], entry["space"]) else self.chip.sram.bytes_per_s
                cycles = math.ceil(2 * _nbytes(entry) / rate * self.chip.clock_hz)   # read + write
                self.record(StepRecord("copy", f"state '{self.backend.compiled.input_names[i]}'", "", cycles))

    def finish(self) -> RunResult:
        result = self.result
        result.cycles = self.clock
        result.stats = self.acc.result(self.clock)
        result.stats["steps"] = {"kernel": sum(s.kind == "kernel" for s in result.steps),
                                 "host": sum(s.kind == "host" for s in result.steps)}
        return result


def run(compiled: Any, inputs: Sequence[torch.Tensor], timing_only: bool = False,
        routing: Any = None) -> list[torch.Tensor]:
    """One shot (`cm.run`): inputs up as kernels read them, run, every output down; fills
    `compiled.last_run`. Returns the Program's outputs: the model's, then the new contents of
    the inputs it updates in place."""
    backend = compiled.sim_backend()
    program = backend.program
    held = [SimData(None if x.is_meta else to_numpy(x), False) for x in inputs]
    outs, states, result = backend.run(held, timing_only=timing_only, download=True, routing=routing)
    compiled.last_run = result
    tensors = program.tensors
    if timing_only:
        return [torch.empty(tensors[t]["shape"], dtype=_torch_dtype(tensors[t]["dtype"]), device="meta")
                for t in program.outputs]
    return [to_torch(d.array, tensors[t]["dtype"]) for d, t in zip([*outs, *states], program.outputs)]


def _torch_dtype(dtype: str) -> torch.dtype:
    return DTYPE_TO_TORCH[dtype]


def _host_step(compiled: Any, step: dict[str, Any], operands: list[np.ndarray | None]) -> list[np.ndarray]:
    if step.get("host_call") is not None:
        host_op = compiled.host_ops()[step["host_call"]]
        tensors = [to_torch(o, dtype_of_numpy(o.dtype)) for o in operands if o is not None]
        with torch.no_grad():
            return [to_numpy(out) for out in host_op(tensors)]
    opdef = lookup_op(step["op"])
    attrs = {k: tuple(v) if isinstance(v, list) else v for k, v in step["attrs"].items()}
    res = opdef.reference(*operands, **attrs)
    return list(res) if isinstance(res, (tuple, list)) else [res]
