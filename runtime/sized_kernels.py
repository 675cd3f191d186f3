"""Kernels whose work is data: made when the step runs, for the sizes its operand holds.

A step whose template has `sized_by` (a grouped matmul: its group ends) records that operand;
the Program's kernel for it was made for the compile-time assumption. When the step runs, the
sizes are read from the run's value of that operand, or, in a timing-only run (no values), taken
from the run's routing (runtime/routing.py), and the template emits the kernel for them. Kernels
are emitted once per (op, shapes, sizes) and relocated for the other steps, as codegen does: the
layers of a model that route alike share one emission.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np

from compiler.errors import EmberError, source_of
from ops.grouped_matmul import group_bounds
from ops.kernel import KernelCall, Placement, kernel_for, roofline_cycles
from runtime.routing import describe, group_sizes
from simulator.isa import ChipProgram

#: first emissions kept per Backend (a decode loop routes differently at every step)
KEEP = 256


class SizeError(EmberError, ValueError):
    """A data-dependent size outside what the op allows (group ends that decrease), named by op."""


def group_caps(program: Any) -> dict[int, int]:
    """The most rows a group can get (0: not known), per sizes operand of the Program's sized
    steps: the steps that share one (an expert layer's projections share its group ends) share
    what any of them knows."""
    caps: dict[int, int] = {}
    for st in program.steps:
        if st.get("sized_by") is not None:
            t = st["operands"][st["sized_by"]]
            caps[t] = max(caps.get(t, 0), int(st["attrs"].get("max_group_rows") or 0))
    return caps


def _placement(entry: dict[str, Any]) -> Placement:
    return Placement(entry["space"], entry["addr"], tuple(entry["shape"]), entry["isa_dtype"])


def step_call(step: dict[str, Any], tensors: dict[int, dict[str, Any]]) -> KernelCall:
    """The KernelCall of a kernel step, from the placements its operands have in the Program."""
    attrs = {k: tuple(v) if isinstance(v, list) else v for k, v in step["attrs"].items()}
    inputs = tuple(None if t is None else _placement(tensors[t]) for t in step["operands"])
    outs = [_placement(tensors[t]) for t in step["results"]]
    return KernelCall(step["op"], inputs, outs[0], attrs, extra_outputs=tuple(outs[1:]))


class SizedKernels:
    """The kernels of one Program's sized steps, made per sizes as the steps run."""

    def __init__(self, program: Any, chip: Any):
        from compiler.codegen import KernelEmitter
        self.program, self.chip = program, chip
        self.emitter = KernelEmitter(chip)
        self.caps = group_caps(program)

    def sizes(self, step: dict[str, Any], values: dict[int, np.ndarray] | None, routing: Any) -> tuple[tuple[int, ...], str | None]:
        """The group sizes of a sized step, and what was assumed for them (None: read)."""
        tensors = self.program.tensors
        x, w = (tensors[t] for t in step["operands"][:2])
        rows, groups = x["shape"][0], w["shape"][0]
        where = f"ember.{step['op']} at {source_of(step['location']) or 'an unknown source line'}"
        if values is None:
            cap = self.caps.get(step["operands"][step["sized_by"]]) or None
            return tuple(group_sizes(routing, rows, groups, cap)), f"{where}: {describe(routing)} routing"
        ends = np.asarray(values[step["operands"][step["sized_by"]]], np.int64).reshape(-1)
        try:
            group_bounds(ends, rows)
        except ValueError as e:
            raise SizeError(f"{where}: group {e}") from e
        if len(ends) and ends[-1] < rows:
            raise SizeError(f"{where}: the groups end at row {int(ends[-1])} of {rows}; rows past the last "
                            "group (expert-parallel sentinels) are not run on the chip")
        return tuple(int(s) for s in np.diff(np.concatenate([[0], ends]))), None

    def kernel(self, step: dict[str, Any], sizes: tuple[int, ...]) -> tuple[ChipProgram, float]:
        """The step's kernel for these sizes, and its roofline cycles."""
        template = kernel_for(step["op"])
        if not hasattr(template, "plan_for"):
            raise EmberError(f"step {step['kernel']} (ember.{step['op']}) of the Program is sized by its operand "
                             f"{step['sized_by']}, but ember.{step['op']}'s kernel is not made per size")
        plan = template.plan_for(sizes)
        if repr(plan) == step.get("plan"):          # the sizes the Program's kernel was made for
            return self.program.kernels[step["kernel"]], step["roofline_cycles"]
        call = step_call(step, self.program.tensors)
        if len(self.emitter.first) > KEEP:
            self.emitter.first.clear()
        op = SimpleNamespace(name=step["op"], attrs=call.attrs, plan=plan, index=step["kernel"])
        program, _, _ = self.emitter.emit(op, call)
        return program, float(roofline_cycles(call, template, self.chip, template.bytes_moved_for(call, sizes)))
