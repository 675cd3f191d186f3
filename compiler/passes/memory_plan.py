"""memory-plan: give every tensor an accelerator op touches a place in SRAM or DRAM.

Weights go to SRAM while they fit (the chip keeps weights on die when it can), else DRAM.
Activations are allocated in SRAM by a first-fit allocator that reuses a buffer once its last
reader has run (liveness), and spill to DRAM when SRAM is full. A reshape aliases its input.
When weights in SRAM would push activations out to DRAM (a model whose weights do not fit
on die), activations are planned first and weights take the SRAM above their high-water mark:
an activation is written and read several times, a weight read once per run.
Each value is held in the ISA dtype the dtype pass chose for it (`GraphOps.storage`).
"""
from __future__ import annotations

from dataclasses import dataclass

from compiler.graph_ops import GraphOps
from compiler.passes.concat_chains import concat_chains
from ops.kernel import ISA_ITEMSIZE, Placement

ALIGN = 256   # bytes: one DRAM/SRAM interleave unit, so tiles start on a channel boundary


class _Arena:
    """First-fit allocator over one memory space."""

    def __init__(self, size: int, base: int = 0):
        self.size, self.base = size, base
        self.free = [(base, size)]

    def alloc(self, nbytes: int) -> int | None:
        nbytes = -(-nbytes // ALIGN) * ALIGN
        for i, (start, length) in enumerate(self.free):
            if length >= nbytes:
                self.free[i] = (start + nbytes, length - nbytes)
                return start
        return None

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


@dataclass(frozen=True)
class MemoryPlan:
    """Placements for every value an accelerator op reads or writes."""
    name: str = "memory-plan"

    def run(self, graph: GraphOps, chip) -> dict[int, Placement]:
        placements = self._plan(graph, chip, weights_first=True)
        constants = set(graph.weights) | set(graph.literals)
        spilled = any(p.space == "dram" for v, p in placements.items() if v not in constants)
        if spilled and any(placements[v].space == "sram" for v in constants if v in placements):
            placements = self._plan(graph, chip, weights_first=False)
        return placements

    def _plan(self, graph: GraphOps, chip, weights_first: bool) -> dict[int, Placement]:
        arenas = {"sram": _Arena(chip.sram_bytes), "dram": _Arena(chip.dram.bytes)}
        on_chip = [op for op in graph.ops if op.target in ("accelerator", "view")]
        touched = {v for op in on_chip for v in (*op.operands, *op.results) if v is not None}
        # A view shares its input's buffer: liveness is tracked per buffer (its root value).
        root: dict[int, int] = {}
        for op in graph.ops:
            if op.target == "view":
                root[op.results[0]] = root.get(op.operands[0], op.operands[0])
        last_use: dict[int, int] = {}
        for op in graph.ops:
            for v in op.operands:
                if v is not None:
                    last_use[root.get(v, v)] = op.index
        for v in graph.outputs:
            last_use[root.get(v, v)] = len(graph.ops)
        # a concat chain run as one copy reads all its inputs at its last link
        for last, (leaves, _) in concat_chains(graph).items():
            for v in leaves:
                last_use[root.get(v, v)] = max(last_use.get(root.get(v, v), 0), last)
        placements: dict[int, Placement] = {}

        def place(v: int) -> Placement:
            spec = graph.specs[v]
            isa = graph.storage[v]
            nbytes = max(1, spec.numel) * ISA_ITEMSIZE[isa]
            for space in ("sram", "dram"):
                addr = arenas[space].alloc(nbytes)
                if addr is not None:
                    return Placement(space, addr, spec.shape, isa)
            raise MemoryError(f"value {v} ({spec}) does not fit in SRAM or DRAM")

        constants = set(graph.weights) | set(graph.literals)
        if weights_first:                              # they live for the whole run
            for v in sorted(touched & constants):
                placements[v] = place(v)
        for op in graph.ops:
            if op.target not in ("accelerator", "view"):
                continue
            for v in op.operands:
                if v is not None and v not in placements and v in touched and root.get(v, v) not in constants:
                    placements[v] = place(v)           # uploaded from the host before this op
            for r in op.results:
                if op.target == "view":
                    if op.operands[0] not in placements:
                        continue                       # a view of a weight placed below
                    src = placements[op.operands[0]]
                    placements[r] = Placement(src.space, src.addr, graph.specs[r].shape, src.dtype)
                else:
                    placements[r] = place(r)
            for v in {root.get(v, v) for v in op.operands if v is not None}:
                if v not in constants and last_use.get(v) == op.index and v in placements:
                    p = placements[v]
                    arenas[p.space].release(p.addr, p.nbytes)
        if not weights_first:
            # above every activation ever placed, so that no weight shares a buffer with one
            high = {space: max((p.addr + -(-p.nbytes // ALIGN) * ALIGN for p in placements.values()
                                if p.space == space), default=0) for space in arenas}
            arenas = {"sram": _Arena(chip.sram_bytes - high["sram"], high["sram"]),
                      "dram": _Arena(chip.dram.bytes - high["dram"], high["dram"])}
            for v in sorted(touched & constants):
                placements[v] = place(v)
            for op in graph.ops:
                if op.target == "view" and op.results[0] not in placements and op.operands[0] in placements:
                    src = placements[op.operands[0]]
                    placements[op.results[0]] = Placement(src.space, src.addr, graph.specs[op.results[0]].shape,
                                                          src.dtype)
        return placements
