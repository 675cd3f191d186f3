"""Functional engine: the chip's memories and the driver that runs commands on them.

Each engine's semantics live in ``simulator/engines/<engine>.py``. A command reads its inputs
when it issues and its outputs are written when it completes (``execute`` then ``commit``),
so a reader that is not synchronized with a writer sees poisoned or stale memory.
"""
from __future__ import annotations

import numpy as np

from simulator.engines import FUNCTIONAL
from simulator.engines.dtypes import store_cast  # noqa: F401  (re-exported)
from simulator.isa import Op, Space, format_command
from simulator.memory import Memory
from simulator.spec import ChipSpec
from simulator.validate import HOST_BYTES


class Machine:
    """The memories: DRAM, SRAM, one local memory per PE, and host memory (over PCIe)."""

    def __init__(self, chip: ChipSpec):
        self.chip = chip
        self.dram = Memory("DRAM", chip.dram.bytes)
        self.sram = Memory("SRAM", chip.sram.bytes)
        self.host = Memory("host memory", HOST_BYTES)
        self.local = [Memory(f"local memory of PE {i}", chip.local_mem.bytes, local=True)
                      for i in range(chip.num_pes)]
        self.cols = chip.pe_grid.cols
        self.rows = chip.pe_grid.rows
        self.vector_kernels: tuple = ()     # the running program's (simulate sets them)
        self._pending: list = []

    def mem(self, space: "Space | str", pe: int | None = None) -> Memory:
        space = space if isinstance(space, Space) else Space[str(space).upper()]
        if space == Space.DRAM:
            return self.dram
        if space == Space.SRAM:
            return self.sram
        if space == Space.HOST:
            return self.host
        if pe is None:
            raise ValueError("local memory needs a PE number")
        return self.local[pe]

    def execute(self, c: np.void, index: int) -> list:
        """Read a command's inputs and compute its outputs; returns the writes, which the
        caller commits when the command completes."""
        op = Op(int(c["op"]))
        self._pending = []
        if op is not Op.NOP:
            FUNCTIONAL[op](self, c, [int(x) for x in c["a"]], int(c["pe"]),
                           format_command(c, index))
        return self._pending

    @staticmethod
    def commit(writes: list) -> None:
        for mem, addr, data, stride, what in writes:
            mem.write2d(addr, data, stride, what)

    def defer(self, mem: Memory, addr: int, data: np.ndarray, what: str) -> None:
        """Write ``data`` (any array, its bytes) at ``addr`` when the command completes."""
        buf = np.ascontiguousarray(data).reshape(1, -1).view(np.uint8)
        self._pending.append((mem, addr, buf, buf.shape[1], what))

    def defer2d(self, mem: Memory, addr: int, data: np.ndarray, stride: int, what: str) -> None:
        """Write the rows of a (rows, bytes) uint8 array ``stride`` apart, at completion."""
        self._pending.append((mem, addr, data, stride, what))
