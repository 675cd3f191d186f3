"""memory-plan: give every tensor an accelerator op touches a place in SRAM or DRAM.

Weights go to SRAM while they fit (the chip keeps weights on die when it can), else DRAM.
Activations are allocated in SRAM by a first-fit allocator that reuses a buffer once its last
reader has run (liveness), and spill to DRAM when SRAM is full. A reshape aliases its input.
When that pushes activations out to DRAM (a model whose weights and activations do not fit
on die together), buffers are instead placed one by one in order of accesses per byte and per
op of lifetime (a weight read once per run and a value kept to the end of the graph come
last): each takes the lowest SRAM address free for its whole live range, or else DRAM.
Each value is held in the ISA dtype the dtype pass chose for it (`GraphOps.storage`).

Device state (inputs the model updates in place, such as a KV cache) lives for the whole run,
as weights do, and stays where it is between runs; a result that updates it in place
(`GraphOps.in_place`) shares its buffer. Values given a placement beforehand (`pinned`: the
weights and state of another Program served in the same session, so that prefill and decode
read one copy) keep it, and nothing else is placed over them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from compiler.errors import DeviceMemoryError
from compiler.graph_ops import GraphOp, GraphOps, last_reads
from compiler.passes.concat_chains import concat_chains
from compiler.resident import pinned_values
from ops.kernel import ISA_ITEMSIZE, Placement

ALIGN = 256   # bytes: one DRAM/SRAM interleave unit, so tiles start on a channel boundary
#: A weight at least this many channel periods long starts on a period boundary (the DRAM and
#: SRAM interleave pattern repeats every period: `TimingCache.period`), so the same kernel on
#: another layer's weights starts on the same channels: its timing is the first layer's, which
#: a timing-only run then simulates once. It costs under 1/PERIOD_ALIGNED_MIN of the weight.
PERIOD_ALIGNED_MIN = 64


def weight_align(nbytes: int, chip) -> int:
    """The alignment of a weight of `nbytes` on `chip` (see PERIOD_ALIGNED_MIN)."""
    from simulator.simulate import TimingCache
    period = TimingCache.period(chip)
    return period if nbytes >= PERIOD_ALIGNED_MIN * period else ALIGN


class _Arena:
    """First-fit allocator over one memory space."""

    def __init__(self, size: int, base: int = 0):
        self.size, self.base = size, base
        self.free = [(base, size)]

    def alloc(self, nbytes: int, align: int = ALIGN) -> int | None:
        nbytes = -(-nbytes // ALIGN) * ALIGN
        for i, (start, length) in enumerate(self.free):
            at = -(-start // align) * align
            if start + length >= at + nbytes:
                self.free[i:i + 1] = [r for r in ((start, at - start), (at + nbytes, start + length - at - nbytes))
                                      if r[1] > 0]
                return at
        return None

    def reserve(self, addr: int, nbytes: int) -> None:
        """Take [addr, addr + nbytes) out of the free ranges (a pinned buffer)."""
        end = addr + -(-nbytes // ALIGN) * ALIGN
        free = []
        for start, length in self.free:
            stop = start + length
            if stop <= addr or start >= end:
                free.append((start, length))
                continue
            if start < addr:
                free.append((start, addr - start))
            if stop > end:
                free.append((end, stop - end))
        self.free = free

    def release(self, addr: int, nbytes: int) -> None:
        nbytes = -(-nbytes // ALIGN) * ALIGN
        self.free.append((addr, nbytes))
        self.free.sort()
        merged = []
        for start, length in self.free:
            if merged and merged[-1][0] + merged[-1][1] == start:
                merged[-1] = (merged[-1][0], merged[-1][1] + length)
            else:
                merged.append((start, length))
        self.free = merged


def _buffers(graph: GraphOps) -> tuple[list[GraphOp], set[int], dict[int, int]]:
    """The ops on the chip (kernels and views), the values they touch, and each view's root: a
    view shares its input's buffer, so liveness is tracked per buffer (its root value)."""
    on_chip = [op for op in graph.ops if op.target in ("accelerator", "view")]
    touched = {v for op in on_chip for v in (*op.operands, *op.results) if v is not None}
    root: dict[int, int] = {}
    for op in graph.ops:              # in op order, so that a view of an in-place result has its state as root
        if op.target == "view":
            root[op.results[0]] = root.get(op.operands[0], op.operands[0])
        for r in op.results:
            if r in graph.in_place:       # an in-place update of device state
                root[r] = root.get(graph.in_place[r], graph.in_place[r])
    return on_chip, touched, root


def _resident(graph: GraphOps) -> set[int]:
    """Values that live for the whole run: weights, literals, and device state."""
    return set(graph.weights) | set(graph.literals) | set(graph.mutated)


def _size_report(graph: GraphOps, chip, what: str) -> str:
    """The sizes a refused plan needed against the chip's memories."""
    def total(values) -> int:
        return sum(max(1, graph.specs[v].numel) * ISA_ITEMSIZE[graph.storage.get(v, "fp32")] for v in values
                   if v in graph.storage)
    weights = total(set(graph.weights) | set(graph.literals))
    state = total(graph.mutated)
    return (f"{what} does not fit the chip's memories: weights {weights / 2**20:,.1f} MiB, device state "
            f"(e.g. a KV cache) {state / 2**20:,.1f} MiB, plus the activations; {chip.name} has SRAM "
            f"{chip.sram_bytes / 2**20:,.0f} MiB and DRAM {chip.dram.bytes / 2**20:,.0f} MiB")


@dataclass(frozen=True)
class MemoryPlan:
    """Placements for every value an accelerator op reads or writes."""
    name: str = "memory-plan"

    #: tile-and-map and codegen place every kernel's operands where this pass put them
    required_by = "tile-and-map and codegen read the places it gives every value"

    def run(self, state) -> dict[int, Placement]:
        state.placements = self.plan(state.ops, state.chip, pinned_values(state))
        return state.placements

    def plan(self, graph: GraphOps, chip, pinned: dict[int, Placement] | None = None) -> dict[int, Placement]:
        pinned = dict(pinned or {})
        placements = self._plan(graph, chip, pinned)
        constants = _resident(graph)
        spilled = any(p.space == "dram" for v, p in placements.items() if v not in constants)
        if spilled:
            placements = self._plan_by_density(graph, chip, pinned)
        return placements

    def _plan_by_density(self, graph: GraphOps, chip, pinned: dict[int, Placement]) -> dict[int, Placement]:
        """Every buffer's live range [first op that needs it, last reader] (weights: the whole
        run), then buffers by accesses / (bytes * ops live), each at the lowest address of SRAM
        (else DRAM) that no buffer placed before it holds at any op of its range."""
        on_chip, touched, root = _buffers(graph)
        end_all = len(graph.ops)
        constants = _resident(graph)
        start: dict[int, int] = {}
        end: dict[int, int] = {}
        reads: dict[int, int] = {}
        for op in on_chip:
            for v in op.operands:
                if v is not None:
                    start.setdefault(root.get(v, v), op.index)     # host values: uploaded here
            if op.target == "accelerator":
                for r in op.results:
                    if r not in root:           # (an in-place result is its state's buffer)
                        start[r] = min(start.get(r, op.index), op.index)
        for op in graph.ops:                                      # host steps read them too
            for v in op.operands:
                b = root.get(v, v) if v is not None else None
                if b in start:
                    end[b] = max(end.get(b, op.index), op.index)
                    reads[b] = reads.get(b, 0) + 1
        for b in start:
            end.setdefault(b, start[b])
        for v in graph.outputs:
            if root.get(v, v) in start:
                end[root.get(v, v)] = end_all
        for last, (leaves, _) in concat_chains(graph).items():
            for v in leaves:
                b = root.get(v, v)
                if b in start:
                    end[b] = max(end[b], last)
        for b in constants & set(start):
            start[b], end[b] = 0, end_all
        # A concat chain's inputs whose slots in its result are contiguous (every dim before the
        # concat dim has size 1) live in those slots from the start: the result's buffer holds
        # them, and the chain copies nothing.
        member: dict[int, tuple[int, int]] = {}
        chains = concat_chains(graph)
        owners = {graph.ops[last].results[0] for last in chains}
        for last, (leaves, links) in chains.items():
            out = graph.ops[last].results[0]
            dim = graph.ops[last].attrs["dim"]
            shape = graph.specs[out].shape
            roots = [root.get(v, v) for v in leaves]
            if (any(n != 1 for n in shape[:dim]) or len(set(roots)) != len(roots) or out not in start
                    or out in member
                    or any(r in constants or r in graph.inputs or r in member or r in owners or r not in start
                           or graph.specs[r].numel != graph.specs[v].numel or graph.storage[r] != graph.storage[out]
                           for r, v in zip(roots, leaves))):
                continue
            row = math.prod(shape[dim + 1:]) * ISA_ITEMSIZE[graph.storage[out]]
            at = 0
            for r, v in zip(roots, leaves):
                member[r] = (out, at)
                start[out] = min(start[out], start[r])
                end[out] = max(end[out], end[r])
                reads[out] = reads.get(out, 0) + reads.get(r, 0)
                at += graph.specs[v].shape[dim] * row
            for i in links:        # links run no commands: they share the result's buffer
                member[graph.ops[i].results[0]] = (out, 0)

        def nbytes(b: int) -> int:
            size = max(1, graph.specs[b].numel) * ISA_ITEMSIZE[graph.storage[b]]
            return -(-size // ALIGN) * ALIGN

        def density(b: int) -> float:
            return (reads.get(b, 0) + (b not in constants)) / (nbytes(b) * (end[b] - start[b] + 1))

        capacity = {"sram": chip.sram_bytes, "dram": chip.dram.bytes}
        held: dict[str, list[tuple[int, int, int, int]]] = {"sram": [], "dram": []}   # addr, size, start, end
        where: dict[int, tuple[str, int]] = {}
        for b, p in pinned.items():
            held[p.space].append((p.addr, -(-p.nbytes // ALIGN) * ALIGN, 0, end_all))
            where[b] = (p.space, p.addr)
        for b in sorted((b for b in start if b not in member and b not in pinned), key=lambda b: (-density(b), b)):
            size, s0, s1 = nbytes(b), start[b], end[b]
            align = weight_align(size, chip) if b in constants else ALIGN
            for space in ("sram", "dram"):
                busy = sorted((a, a + n) for a, n, t0, t1 in held[space] if t0 <= s1 and s0 <= t1)
                addr = 0
                for lo, hi in busy:
                    if lo - addr >= size:
                        break
                    addr = -(-max(addr, hi) // align) * align
                if addr + size <= capacity[space]:
                    held[space].append((addr, size, s0, s1))
                    where[b] = (space, addr)
                    break
            else:
                raise DeviceMemoryError(_size_report(graph, chip, f"value {b} ({graph.specs[b]})"))
        for b, (out, at) in member.items():
            where[b] = (where[out][0], where[out][1] + at)
        placements: dict[int, Placement] = {}
        for v in sorted(touched):
            b = root.get(v, v)
            if b not in where:
                continue
            space, addr = where[b]
            placements[v] = Placement(space, addr, graph.specs[v].shape, graph.storage[b])
        return placements

    def _plan(self, graph: GraphOps, chip, pinned: dict[int, Placement]) -> dict[int, Placement]:
        arenas = {"sram": _Arena(chip.sram_bytes), "dram": _Arena(chip.dram.bytes)}
        for p in pinned.values():
            arenas[p.space].reserve(p.addr, p.nbytes)
        on_chip, touched, root = _buffers(graph)
        last_use = last_reads(graph, root, graph.outputs)
        # a concat chain run as one copy reads all its inputs at its last link
        for last, (leaves, _) in concat_chains(graph).items():
            for v in leaves:
                last_use[root.get(v, v)] = max(last_use.get(root.get(v, v), 0), last)
        placements: dict[int, Placement] = dict(pinned)

        def place(v: int, align: int = ALIGN) -> Placement:
            spec = graph.specs[v]
            isa = graph.storage[v]
            nbytes = max(1, spec.numel) * ISA_ITEMSIZE[isa]
            for space in ("sram", "dram"):
                addr = arenas[space].alloc(nbytes, align)
                if addr is not None:
                    return Placement(space, addr, spec.shape, isa)
            raise DeviceMemoryError(_size_report(graph, chip, f"value {v} ({spec})"))

        constants = _resident(graph)
        state = [v for v in graph.inputs if v in graph.mutated and v in touched and v not in placements]
        for v in state:                                # first, in input order: it stays between runs
            placements[v] = place(v)
        for v in sorted(touched & constants):          # weights first: they live for the whole run
            if v not in placements:
                nbytes = max(1, graph.specs[v].numel) * ISA_ITEMSIZE[graph.storage[v]]
                placements[v] = place(v, weight_align(nbytes, chip))
        for op in graph.ops:
            if op.target not in ("accelerator", "view"):
                continue
            for v in op.operands:
                if v is not None and v not in placements and v in touched and root.get(v, v) not in constants:
                    placements[v] = place(v)           # uploaded from the host before this op
            for r in op.results:
                if op.target == "view" or r in graph.in_place:
                    src_value = op.operands[0] if op.target == "view" else graph.in_place[r]
                    if src_value not in placements:
                        continue                       # a view of a weight placed below
                    src = placements[src_value]
                    placements[r] = Placement(src.space, src.addr, graph.specs[r].shape, src.dtype)
                else:
                    placements[r] = place(r)
            for v in {root.get(v, v) for v in op.operands if v is not None}:
                if v not in constants and last_use.get(v) == op.index and v in placements:
                    p = placements[v]
                    arenas[p.space].release(p.addr, p.nbytes)
        return placements
