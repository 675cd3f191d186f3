"""Codegen: a partitioned, tiled graph to a Program (simulator.isa.artifact).

Identical ops (the same op, attributes, plan, and operand shapes, dtypes and memory spaces:
every layer of a transformer) differ only in where their operands live. Such an op's kernel is
emitted once; the others are that kernel relocated (`simulator.isa.RelocatedProgram`): each
DMA address that points into operand k of the first call moves by how far operand k moved.
Relocation is used only where it is provably what a fresh emission would give: every DRAM/SRAM
address of the first kernel lies, over all loop iterations, inside exactly one operand's range,
operands that share a buffer share it in both calls, and no two distinct operands overlap.
Otherwise the op's kernel is emitted afresh.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from compiler.graph_ops import GraphOps
from compiler.hostcalls import encode_host_calls
from compiler.passes.concat_chains import concat_chains
from compiler.passes.tile import kernel_call
from ops.kernel import ISA_ITEMSIZE, KernelCall, Placement, kernel_for, roofline_cycles
from simulator.isa import ChipProgram, Op, ProgramBuilder, RelocatedProgram, Space
from simulator.isa.artifact import Program
from simulator.isa.encoding import INDEX_ADDR_BITS, INDEXED_SHIFT

_SPACE = {"dram": int(Space.DRAM), "sram": int(Space.SRAM)}


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def _attr_key(value: Any) -> Any:
    """An attribute as a hashable key (an array by its bytes: its repr elides elements)."""
    if isinstance(value, np.ndarray):
        return ("array", value.shape, str(value.dtype), hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest())
    if isinstance(value, (list, tuple)):
        return tuple(_attr_key(v) for v in value)
    return repr(value)


def _operands(call: KernelCall) -> list[Placement | None]:
    return [*call.inputs, *call.outputs]


def _aliases(places: list[Placement | None]) -> tuple[int, ...] | None:
    """For each operand, the first operand with the same buffer (-1 for an absent one); None
    when two distinct buffers of one space overlap (an address could belong to either)."""
    out = []
    for i, p in enumerate(places):
        if p is None:
            out.append(-1)
            continue
        first = i
        for j in range(i):
            q = places[j]
            if q is None or q.space != p.space:
                continue
            if (q.addr, q.nbytes) == (p.addr, p.nbytes):
                first = j
                break
            if q.addr < p.addr + p.nbytes and p.addr < q.addr + q.nbytes:
                return None
        out.append(first)
    return tuple(out)


def address_slots(program: ChipProgram, places: list[Placement | None]) -> np.ndarray | None:
    """int16 [records, 2]: the operand whose buffer holds each record's a[0] / a[1] DRAM/SRAM
    range over every loop iteration (-1: a local address, or not a DMA); None when some
    address is not inside exactly one operand (then the kernel cannot be relocated)."""
    aliases = _aliases(places)
    if aliases is None:
        return None
    cmds = program.commands
    n = len(cmds)
    slots = np.full((n, 2), -1, np.int16)
    dma = np.flatnonzero(cmds["op"] == int(Op.DMA))
    if len(dma) == 0:
        return slots
    count = np.ones(n, np.int64)
    for first, length, c in program.loops.tolist():
        count[first:first + length] = c
    a = cmds["a"][dma]
    st = program.strides[dma]
    cnt = count[dma]
    looped = cnt > 1
    # (a[6], an indexed DMA's local index address, may step: it is no memory extent)
    if (st[looped][:, 2:6] != 0).any():
        return None      # sizes that change per iteration: extents are not affine in the iteration
    moved = (cmds["flags"][dma].astype(np.int64) >> INDEXED_SHIFT) & 3     # 1: the index moves a[0], 2: a[1]
    reach = np.where(moved > 0, ((a[:, 6] >> INDEX_ADDR_BITS) - 1) * a[:, 7], 0)  # the farthest valid position
    for j, space_field, stride_slot in ((0, "src_space", 4), (1, "dst_space", 5)):
        space = cmds[space_field][dma].astype(np.int64)
        if (space == int(Space.HOST)).any():
            return None
        mem = space != int(Space.LOCAL)
        span = np.where(a[:, 2] > 0, (a[:, 2] - 1) * a[:, stride_slot] + a[:, 3], 0)
        last = a[:, j] + (cnt - 1) * st[:, j]
        lo = np.minimum(a[:, j], last)
        hi = np.maximum(a[:, j], last) + span + np.where(moved == j + 1, reach, 0)
        found = np.full(len(dma), -1, np.int64)
        for k, p in enumerate(places):
            if p is None or aliases[k] != k:
                continue
            inside = mem & (space == _SPACE[p.space]) & (lo >= p.addr) & (hi <= p.addr + p.nbytes)
            found[inside] = k
        if (found[mem] < 0).any():
            return None
        slots[dma, j] = found
    return slots


@dataclass
class _Emitted:
    """The first kernel of a group of identical ops, and what relocating it needs."""
    program: ChipProgram
    places: list[Placement | None]
    relocatable: bool
    flops: int
    roofline: float


class KernelEmitter:
    """Emits kernels, relocating the first kernel of identical ops where that is provably
    right. With `verify`, every relocated kernel is also emitted afresh and compared (tests)."""

    def __init__(self, chip, relocate: bool = True, verify: bool = False):
        self.chip = chip
        self.relocate = relocate
        self.verify = verify
        self.first: dict[tuple, _Emitted] = {}
        self.relocated = 0

    @staticmethod
    def key(op, call: KernelCall) -> tuple:
        places = _operands(call)
        return (op.name, tuple(sorted((k, _attr_key(v)) for k, v in op.attrs.items())), repr(op.plan),
                tuple(None if p is None else (p.space, p.shape, p.dtype) for p in places), _aliases(places))

    def _fresh(self, op, call: KernelCall) -> ChipProgram:
        builder = ProgramBuilder(self.chip, name=f"{op.name}#{op.index}")
        kernel_for(op.name).emit(call, op.plan, self.chip, builder)
        return builder.build()

    def emit(self, op, call: KernelCall) -> tuple[ChipProgram, int, float]:
        """The op's kernel, its FLOPs and roofline cycles."""
        key = self.key(op, call)
        places = _operands(call)
        first = self.first.get(key)
        if first is None:
            template = kernel_for(op.name)
            program = self._fresh(op, call)
            slots = address_slots(program, places) if key[-1] is not None else None
            program.addr_slots = slots
            self.first[key] = _Emitted(program, places, slots is not None, int(template.flops(call)),
                                       float(roofline_cycles(call, template, self.chip)))
            return program, self.first[key].flops, self.first[key].roofline
        if not (first.relocatable and self.relocate):
            return self._fresh(op, call), first.flops, first.roofline
        deltas = [0 if p is None else p.addr - q.addr for p, q in zip(places, first.places)]
        program = RelocatedProgram(first.program, deltas, name=f"{op.name}#{op.index}")
        if self.verify:
            fresh = self._fresh(op, call)
            got = program.commands
            if not (np.array_equal(got, fresh.commands) and np.array_equal(program.loops, fresh.loops)
                    and np.array_equal(program.strides, fresh.strides)):
                raise RuntimeError(f"relocated kernel of {op.name}#{op.index} differs from a fresh emission")
        self.relocated += 1
        return program, first.flops, first.roofline


def _overlaps(p: Placement, q: Placement) -> bool:
    return p.space == q.space and p.addr < q.addr + q.nbytes and q.addr < p.addr + p.nbytes


def concat_slots(leaves: list[int], out: Placement, dim: int, placements: dict[int, Placement]) -> list[Placement]:
    """The leaves' placements that already are their slots in `out` (the memory plan put them
    there: a contiguous slot needs no copy)."""
    if any(n != 1 for n in out.shape[:dim]):
        return []
    row = math.prod(out.shape[dim + 1:]) * ISA_ITEMSIZE[out.dtype]
    found, at = [], 0
    for v in leaves:
        p = placements[v]
        if p.space == out.space and p.addr == out.addr + at and p.dtype == out.dtype:
            found.append(p)
        at += p.shape[dim] * row
    return found


def fused_concats(graph: GraphOps, placements: dict[int, Placement]) -> tuple[set[int], dict[int, list[int]]]:
    """The concat chains (compiler.passes.concat_chains) that are safe to run as one copy:
    the copied values live in distinct buffers, none of which the result overlaps or a kernel
    run between the chain's first and last link writes. Returns the links that need not run,
    and for each last link the values it copies."""
    produced_on_host = {r for op in graph.ops if op.target == "host" for r in op.results}
    skipped: set[int] = set()
    fused: dict[int, list[int]] = {}
    for last, (leaves, links) in concat_chains(graph).items():
        bufs = list({placements[v] for v in leaves})
        out = placements[graph.ops[last].results[0]]
        slots = set(concat_slots(leaves, out, graph.ops[last].attrs["dim"], placements))
        safe = not any(_overlaps(out, b) for b in bufs if b not in slots) and \
            not any(_overlaps(a, b) for i, a in enumerate(bufs) for b in bufs[i + 1:])
        members = set(links)
        for other in graph.ops[min(links):last]:
            if not safe:
                break
            if other.index in members or other.target != "accelerator":
                continue
            written = [placements[r] for r in other.results if r in placements]
            written += [placements[v] for v in other.operands if v in produced_on_host and v in placements]
            safe = not any(_overlaps(w, b) for w in written for b in bufs)
        if safe:
            skipped |= members
            fused[last] = leaves
    return skipped, fused


def build_program(graph: GraphOps, placements: dict[int, Placement], chip, dtype: str,
                  constants: dict[int, np.ndarray], host_calls: dict[int, Any],
                  relocate: bool = True, verify_relocation: bool = False) -> Program:
    """Emit every accelerator op's kernel (relocating repeated ones unless `relocate` is False;
    `verify_relocation` also emits each relocated one afresh and compares) and list the steps
    in graph order."""
    tensors: dict[int, dict[str, Any]] = {}
    for v, spec in graph.specs.items():
        entry: dict[str, Any] = {"shape": list(spec.shape), "dtype": spec.dtype}
        if v in placements:
            p = placements[v]
            entry.update(space=p.space, addr=p.addr, isa_dtype=p.dtype)
        if v in graph.weights:      # a session loads each weight once, by name
            entry["weight"] = graph.weights[v]
        tensors[v] = entry
    steps: list[dict[str, Any]] = []
    kernels: list[ChipProgram] = []
    emitter = KernelEmitter(chip, relocate=relocate, verify=verify_relocation)
    skipped, fused = fused_concats(graph, placements)
    for op in graph.ops:
        record = {"op": op.name, "operands": op.operands, "results": op.results, "location": op.location,
                  "attrs": {k: _jsonable(v) for k, v in op.attrs.items()}}
        if op.target == "view":
            steps.append({"kind": "view", **record})
        elif op.index in skipped:
            # its result is never read: the chain's last concat copies its inputs directly
            kernels.append(ProgramBuilder(chip, name=f"{op.name}#{op.index}").build())    # no commands
            steps.append({"kind": "kernel", "kernel": len(kernels) - 1, "elided": True, **record, "plan": repr(op.plan),
                          "predicted_cycles": 0, "roofline_cycles": 0.0, "flops": 0})
        elif op.index in fused:
            template = kernel_for("concat")
            leaves = [placements[v] for v in fused[op.index]]
            out = placements[op.results[0]]
            builder = ProgramBuilder(chip, name=f"{op.name}#{op.index}")
            in_place = set(concat_slots(fused[op.index], out, op.attrs["dim"], placements))
            template.emit_concat(leaves, out, op.attrs["dim"], op.plan.pes, builder, skip=in_place)
            kernels.append(builder.build())
            steps.append({"kind": "kernel", "kernel": len(kernels) - 1, **record, "reads": fused[op.index],
                          "plan": repr(op.plan), "predicted_cycles": op.predicted_cycles,
                          "roofline_cycles": float(roofline_cycles(template.concat_call(leaves, out, op.attrs["dim"]),
                                                                   template, chip)), "flops": 0})
        elif op.target == "accelerator":
            call = kernel_call(op, placements)
            program, flops, roofline = emitter.emit(op, call)
            kernels.append(program)
            steps.append({"kind": "kernel", "kernel": len(kernels) - 1, **record,
                          "plan": repr(op.plan), "predicted_cycles": op.predicted_cycles,
                          "roofline_cycles": roofline, "flops": flops})
            sized_by = getattr(kernel_for(op.name), "sized_by", None)
            if sized_by is not None:     # its work is data: the runtime makes it for the sizes it reads
                steps[-1]["sized_by"] = sized_by
        else:
            steps.append({"kind": "host", **record, "host_call": op.host_call})
    position = {v: i for i, v in enumerate(graph.inputs)}
    return Program(chip=chip.model_dump(mode="json"), dtype=dtype, tensors=tensors, inputs=graph.inputs,
                   outputs=graph.outputs, steps=steps, kernels=kernels, constants=constants,
                   meta={"host_calls": encode_host_calls(host_calls), "relocated_kernels": emitter.relocated},
                   mutated_inputs=[position[v] for v in graph.mutated])
