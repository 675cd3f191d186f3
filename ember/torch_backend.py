"""`torch.compile(model, backend="ember")`: the dynamo backend (entry point group
`torch_dynamo_backends`, see pyproject.toml).

Dynamo hands over each captured FX subgraph; graph breaks between them run in Python as usual.
Each subgraph is compiled with `allow_unsupported=True`: what the chip can run goes to the chosen
device, the ops it lacks run on the host. Options come through `options=`:

    torch.compile(model, backend="ember",
                  options={"chip": "mtia2i", "dtype": "bf16", "device": "sim", "cache": True})

`device` is "sim" (the simulated chip; the default), "cpu", "cuda" or "reference". `cache`
(default True) keeps finished Programs in the compile cache (`runtime/cache.py`), so a new
process compiles a seen subgraph in the time of capture and import; False turns it off, a path
picks the folder. `timing_only` runs the simulator without computing numbers. Parameters and
buffers are frozen into the compiled subgraph as weights (this is an inference backend).
`ember.torch_compile_report()` says, after a run, what ran where and the simulated cycles.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from ember.compiled import compile as ember_compile

_OPTIONS = {"chip": "mtia2i", "dtype": "bf16", "device": "sim", "cache": True, "timing_only": False}


@dataclass
class Subgraph:
    """One FX subgraph dynamo gave the backend, and what became of it."""
    index: int
    device: str
    ops: int = 0                        # graph-level ops (weights and literals aside)
    on_device: int = 0                  # of them, run on `device` (on the chip, for "sim")
    on_host: dict[str, int] = field(default_factory=dict)   # op -> count, run on the host
    runs: int = 0
    last_cycles: int | None = None      # simulated cycles of the last run (device "sim")
    last_seconds: float | None = None
    fallback: str | None = None         # why the subgraph runs eagerly instead, if it does
    compiled: Any = None                # the ember.CompiledModel

    def row(self) -> list[str]:
        host = ", ".join(f"{k} x{n}" for k, n in sorted(self.on_host.items())) or "-"
        cycles = "-" if self.last_cycles is None else f"{self.last_cycles:,} cycles ({_duration(self.last_seconds)})"
        where = f"eager ({self.fallback})" if self.fallback else self.device
        return [str(self.index), where, str(self.ops), str(self.on_device), host, str(self.runs), cycles]


def _duration(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms" if seconds >= 1e-3 else f"{seconds * 1e6:.2f} us"


class TorchCompileReport:
    """The subgraphs compiled by the `ember` backend in this process, in order."""

    HEADER = ["subgraph", "device", "ops", "on device", "on host", "runs", "last run (simulated)"]

    def __init__(self, subgraphs: Sequence[Subgraph]):
        self.subgraphs = list(subgraphs)

    @property
    def cycles(self) -> int:
        """Simulated cycles of the last run of every subgraph, summed."""
        return sum(s.last_cycles or 0 for s in self.subgraphs)

    def __str__(self) -> str:
        rows = [self.HEADER] + [s.row() for s in self.subgraphs]
        widths = [max(len(r[i]) for r in rows) for i in range(len(self.HEADER))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"TorchCompileReport({len(self.subgraphs)} subgraphs, {self.cycles} cycles)"


_SUBGRAPHS: list[Subgraph] = []


def report(reset: bool = False) -> TorchCompileReport:
    """What the backend compiled in this process; `reset=True` forgets it afterwards."""
    out = TorchCompileReport(_SUBGRAPHS)
    if reset:
        _SUBGRAPHS.clear()
    return out


class _Frozen(torch.nn.Module):
    """A dynamo subgraph with its static inputs (parameters, buffers) held as buffers, so that
    export sees them as weights and the compiled graph takes only the dynamic inputs."""

    def __init__(self, gm: torch.fx.GraphModule, example_inputs: Sequence[Any], static: Sequence[int]):
        super().__init__()
        self.gm = gm
        self.arity = len(example_inputs)
        self.static = list(static)
        for j, i in enumerate(self.static):
            self.register_buffer(f"w{j}", example_inputs[i].detach(), persistent=False)

    def forward(self, *dynamic: torch.Tensor) -> Any:
        args: list[Any] = [None] * self.arity
        fixed = {i: getattr(self, f"w{j}") for j, i in enumerate(self.static)}
        it = iter(dynamic)
        for i in range(self.arity):
            args[i] = fixed[i] if i in fixed else next(it)
        return self.gm(*args)


def _is_static(x: Any) -> bool:
    return isinstance(x, torch.nn.Parameter) or getattr(x, "_dynamo_static_input_type", None) is not None


def ember_backend(gm: torch.fx.GraphModule, example_inputs: Sequence[Any], options: dict[str, Any] | None = None):
    """The dynamo backend: compile `gm` with Ember and return a callable with `gm`'s signature."""
    from runtime.devices import phase_for

    opts = dict(_OPTIONS)
    unknown = set(options or {}) - set(_OPTIONS)
    if unknown:
        raise ValueError(f"unknown ember backend option(s) {sorted(unknown)}; the options are {sorted(_OPTIONS)}")
    opts.update(options or {})
    device = opts["device"]
    record = Subgraph(len(_SUBGRAPHS), device)
    _SUBGRAPHS.append(record)
    if not all(isinstance(x, torch.Tensor) for x in example_inputs):
        record.fallback = "non-tensor inputs"
        return gm.forward
    static = [i for i, x in enumerate(example_inputs) if _is_static(x)]
    dynamic = [i for i in range(len(example_inputs)) if i not in static]
    frozen = _Frozen(gm, example_inputs, static).eval()
    try:
        cm = ember_compile(frozen, tuple(example_inputs[i].detach() for i in dynamic), chip=opts["chip"],
                           dtype=opts["dtype"], to=phase_for(device, opts["dtype"]),
                           allow_unsupported=True, cache=opts["cache"])
    except Exception as e:   # an uncompilable subgraph still runs: eagerly, reported and warned
        record.fallback = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        warnings.warn(f"ember backend: subgraph {record.index} runs eagerly: {e}", stacklevel=2)
        return gm.forward
    record.compiled = cm
    _count_placement(record, cm)
    run_options = {"timing_only": True} if opts["timing_only"] and device == "sim" else {}

    def run(*args: torch.Tensor) -> Any:
        outs = cm.run(*(args[i] for i in dynamic), device=device, **run_options)
        record.runs += 1
        if device == "sim":
            record.last_cycles, record.last_seconds = cm.last_run.cycles, cm.last_run.seconds
        return outs

    return run


def _count_placement(record: Subgraph, cm: Any) -> None:
    """How many ops run on the device and which on the host."""
    if cm.program is not None:
        steps = [s for s in cm.program.steps if s["kind"] != "view"]
        record.ops = len(steps)
        record.on_device = sum(s["kind"] == "kernel" for s in steps)
        for s in steps:
            if s["kind"] == "host":
                record.on_host[s["op"]] = record.on_host.get(s["op"], 0) + 1
        return
    for name, n in cm.op_counts().items():
        record.ops += n
        if name.startswith("host:"):
            record.on_host[name] = record.on_host.get(name, 0) + n
        else:
            record.on_device += n
