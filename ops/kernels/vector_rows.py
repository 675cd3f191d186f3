"""Row-wise kernels on the vector core: the row tiling and double-buffered pipelining of
`rowwise.RowwiseKernel`, with one vector-core call (`Vec`) per tile instead of SIMD commands.

A template gives the `VectorKernel` of a call (`vector_kernel`: regions 0 = the tile's input
rows, 1 = its output rows, as the kernel reads and writes them); the tile's rows are the call's
row count (a[4]). The input keeps its dtype in local memory (the kernel widens it), and the
output has a buffer of its own, so a kernel may read its input after writing results.
"""
from __future__ import annotations

from dataclasses import dataclass

from ops.kernel import ISA_ITEMSIZE, LocalArena
from ops.kernels.rowwise import ALIGN, RowwiseKernel
from simulator.isa.vector import VectorKernel


@dataclass(frozen=True)
class Vec:
    """One vector-core call on local-memory regions; knows its own cost (the simulator's count)."""
    kernel: VectorKernel
    addrs: tuple[int, ...]
    rows: int
    param: int = 0

    def cycles(self, chip) -> int:
        return self.kernel.cycles(chip, self.rows)

    def emit(self, pe, wait=None, signal=None) -> None:
        pe.vec_kernel(self.kernel, self.addrs, self.rows, self.param, wait=wait, signal=signal)


class VectorRowKernel(RowwiseKernel):
    """A row-wise template whose tile is one vector-core call."""
    integer_operands = True
    chunked = False             # a row must fit local memory (longer rows stay on the host)

    def vector_kernel(self, call, chip) -> VectorKernel:
        raise NotImplementedError

    def layout(self, call, m: int) -> dict:
        _, cols = self.matrix(call)
        arena = LocalArena(ALIGN)
        lay: dict = {"x": [arena.take(m * cols * ISA_ITEMSIZE[call.inputs[0].dtype]) for _ in range(2)]}
        lay["out"] = [arena.take(m * self.out_cols(call) * ISA_ITEMSIZE[call.output.dtype]) for _ in range(2)]
        lay["w"], lay["t"], lay["vec"] = None, [], []
        lay["param"] = lay["end"] = arena.end
        return lay

    # `tile` is not given the chip, and the kernel depends on its vector length: the entry
    # points that are (plans, predict, emit) note it first
    def plans(self, call, chip):
        self._chip = chip
        self._kernel(call)                  # an input the vector core cannot read fails here, named
        yield from super().plans(call, chip)

    def predict(self, call, plan, chip):
        self._chip = chip
        return super().predict(call, plan, chip)

    def emit(self, call, plan, chip, builder) -> None:
        self._chip = chip
        super().emit(call, plan, chip, builder)

    def tile(self, call, lay, slot, m, row0):
        return [Vec(self._kernel(call), (lay["x"][slot], lay["out"][slot]), m)]

    def _kernel(self, call) -> VectorKernel:
        """The call's kernel, built once per (op, row length, dtype, attributes, vector length)."""
        vlen = self._chip.vector_core.vlen_bytes
        key = (call.op, call.inputs[0].shape[-1], call.inputs[0].dtype, tuple(sorted(call.attrs.items())), vlen)
        cache = self.__dict__.setdefault("_built", {})
        if key not in cache:
            cache[key] = self.vector_kernel(call, self._chip)
        return cache[key]
