"""The simulator device: runs a Program's steps in order on the simulated chip.

Kernel steps run on the simulator (functional and timing, or timing only) with their operands
written to the places the memory plan gave them; host steps run on the host with each op's
numpy reference (or torch, for host calls of aten ops). A value that crosses between host and
chip is charged to the modelled host link (PCIe), once per crossing.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from ops.registry import DTYPE_TO_TORCH, as_dtype, dtype_of_numpy, op as lookup_op, to_numpy, to_torch
from simulator import simulate
from simulator.simulate import TIMING_CACHE
from simulator.trace import DeferredEvents
from simulator.isa import DType
from simulator.spec import ChipSpec

INPUT_DEVICE = "cpu"     # or "meta", for timing-only runs


@dataclass
class StepRecord:
    """One step of a run: what it was, where it ran, how long it took."""
    kind: str                  # "kernel" | "host" | "view" | "transfer"
    op: str
    location: str
    cycles: int = 0
    predicted_cycles: int | None = None
    roofline_cycles: float | None = None
    start_cycle: int = 0


@dataclass
class RunResult:
    """What `cm.last_run` holds after `device="sim"`."""
    chip: ChipSpec
    cycles: int = 0
    steps: list[StepRecord] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    _events: list[dict] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return self.cycles / self.chip.clock_hz

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

    def add(self, stats: dict[str, Any]) -> None:
        for engine, per_pe in stats["busy_cycles"].items():
            self.busy[engine] = self.busy.get(engine, 0) + sum(per_pe)
        for k, v in stats["bytes"].items():
            self.bytes[k] = self.bytes.get(k, 0) + int(v)
        for k, v in stats["energy_j"].items():
            self.energy[k] = self.energy.get(k, 0.0) + float(v)
        for k, v in stats["macs"].items():
            self.macs[k] = self.macs.get(k, 0) + int(v)

    def result(self, cycles: int) -> dict[str, Any]:
        pes = self.chip.num_pes
        seconds = cycles / self.chip.clock_hz
        return {"cycles": cycles, "seconds": seconds,
                "engine_utilization": {e: b / (pes * max(cycles, 1)) for e, b in self.busy.items()},
                "bytes": {**self.bytes, "host_link": self.host_link_bytes},
                "macs": self.macs,
                "achieved_ops_per_s": 2 * sum(self.macs.values()) / seconds if cycles else 0.0,
                "energy_j": self.energy}


def _device_array(value: np.ndarray, isa_dtype: str) -> np.ndarray:
    return np.asarray(value).astype(DType.of(isa_dtype).np)


def run(compiled: Any, inputs: Sequence[torch.Tensor], timing_only: bool = False) -> list[torch.Tensor]:
    """Run `compiled.program` on the simulator; fills `compiled.last_run`."""
    program = compiled.program
    if program is None:
        raise ValueError(f"device 'sim' runs a Program: compile with to='program' (this model was compiled "
                         f"with to='{compiled.options.to}')")
    chip = ChipSpec.model_validate(program.chip)
    tensors = program.tensors
    meta_inputs = any(x.is_meta for x in inputs)
    if meta_inputs and not timing_only:
        raise ValueError("inputs on the meta device carry no numbers: pass timing_only=True")
    produced = {t for s in program.steps for t in s["results"]} | set(program.inputs)
    read = {t for s in program.steps for t in s["operands"] if t is not None}
    if not timing_only and (read - produced - set(program.constants)):
        raise ValueError("the Program has no weight values (compiled from a meta-device model): "
                         "pass timing_only=True")
    store: dict[int, np.ndarray] = dict(program.constants)
    if not timing_only:
        for tid, x in zip(program.inputs, inputs):
            store[tid] = to_numpy(x)
    # weights are loaded with the model, whether they carry values (constants) or not (a
    # meta-device model): those the chip reads live there, all of them on the host as well
    weights = (read - produced) | set(program.constants)
    on_chip = {t for t in weights if "space" in tensors[t]}
    on_host = set(program.inputs) | weights
    acc = _Accumulator(chip)
    result = RunResult(chip)
    clock = 0

    def transfer(tids: Sequence[int], to_chip: bool) -> None:
        nonlocal clock
        nbytes = 0
        for t in tids:
            if t is None or (t in on_chip if to_chip else t in on_host):
                continue
            entry = tensors[t]
            itemsize = DType.of(entry.get("isa_dtype", "fp32")).itemsize
            nbytes += math.prod(entry["shape"]) * itemsize
            (on_chip if to_chip else on_host).add(t)
        if nbytes:
            cycles = math.ceil(nbytes / chip.host_link.bytes_per_s * chip.clock_hz)
            result.steps.append(StepRecord("transfer", "host->chip" if to_chip else "chip->host", "",
                                           cycles, start_cycle=clock))
            acc.host_link_bytes += nbytes
            clock += cycles

    for step in program.steps:
        kind, operands, results = step["kind"], step["operands"], step["results"]
        if kind == "view":
            if not timing_only:
                store[results[0]] = store[operands[0]].reshape(tensors[results[0]]["shape"])
            (on_chip if operands[0] in on_chip else on_host).add(results[0])
            continue
        if kind == "kernel":
            out = results[0]
            if step.get("elided"):
                # a link of a fused concat chain: the chain's last step writes the whole result
                on_chip.add(out)
                on_host.discard(out)
                result.steps.append(StepRecord("kernel", step["op"], step["location"], 0, 0, 0.0, clock))
                continue
            reads = step.get("reads", operands)        # a fused chain reads its inputs directly
            transfer(reads, to_chip=True)
            memory_init = None
            if not timing_only:
                memory_init = {(tensors[t]["space"], tensors[t]["addr"]): _device_array(store[t], tensors[t]["isa_dtype"])
                               for t in reads if t is not None}
            res = simulate(program.kernels[step["kernel"]], chip, memory_init=memory_init, timing_only=timing_only,
                           cache=TIMING_CACHE if timing_only else None)
            if not timing_only:
                entry = tensors[out]
                raw = res.read(entry["space"], entry["addr"], tuple(entry["shape"]), DType.of(entry["isa_dtype"]).np)
                store[out] = as_dtype(raw, entry["dtype"])
            on_chip.add(out)
            on_host.discard(out)
            # events are made when a trace is written, not for every kernel of every run
            kernel_program = res.program
            result._events.append(DeferredEvents(lambda p=kernel_program: p.commands, res.timing.start,
                                                 res.timing.end, chip, clock, max_events=20000))
            acc.add(res.stats)
            result.steps.append(StepRecord("kernel", step["op"], step["location"], res.cycles,
                                           step.get("predicted_cycles"), step.get("roofline_cycles"), clock))
            clock += res.cycles
            continue
        transfer(operands, to_chip=False)
        if not timing_only:
            outs = _host_step(compiled, step, [None if t is None else store[t] for t in operands])
            for t, value in zip(results, outs):
                store[t] = as_dtype(value, tensors[t]["dtype"])
        on_host.update(results)
        for t in results:
            on_chip.discard(t)
        result.steps.append(StepRecord("host", step["op"], step["location"], 0, start_cycle=clock))
    transfer(program.outputs, to_chip=False)
    result.cycles = clock
    result.stats = acc.result(clock)
    result.stats["steps"] = {"kernel": sum(s.kind == "kernel" for s in result.steps),
                             "host": sum(s.kind == "host" for s in result.steps)}
    compiled.last_run = result
    if timing_only:
        return [torch.empty(tensors[t]["shape"], dtype=_torch_dtype(tensors[t]["dtype"]), device="meta")
                for t in program.outputs]
    return [to_torch(store[t], tensors[t]["dtype"]) for t in program.outputs]


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
