"""Row-wise kernels on the vector core: the row tiling and double-buffered pipelining of
`rowwise.RowwiseKernel`, with one vector-core call (`Vec`) per tile instead of SIMD commands.

A template gives the `VectorKernel` of a call (`vector_kernel`). Its regions are, in order: the
tile's input rows, the same rows of each `tile_operands` operand (a gather's indices), the tile's
output rows, then one region holding each `param_operands` operand, loaded whole once per PE
(a scalar divisor) and packed by `param_offsets`. The tile's rows are the call's row count
(a[4]). Every operand keeps its dtype in local memory (the kernel widens what it reads), and the
output has a buffer of its own, so a kernel may read its input after writing results.
"""
from __future__ import annotations

from dataclasses import dataclass

from ops.kernel import ISA_ITEMSIZE, LocalArena
from ops.kernels.rowwise import ALIGN, ParamLoad, RowwiseKernel
from simulator.isa import Engine
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


#: The constants' region packs each one at a multiple of this many bytes.
PARAM_STEP = 4


def param_offsets(sizes: list[int]) -> list[int]:
    """Byte offsets of constants of these sizes in their region, packed in order."""
    offsets, at = [], 0
    for n in sizes:
        offsets.append(at)
        at += -(-n // PARAM_STEP) * PARAM_STEP
    return offsets


class VectorRowKernel(RowwiseKernel):
    """A row-wise template whose tile is one vector-core call."""
    integer_operands = True
    widen_params = False
    compute_engine = Engine.VEC
    chunked = False             # a row must fit local memory (longer rows stay on the host)

    def vector_kernel(self, call, chip) -> VectorKernel:
        raise NotImplementedError

    def layout(self, call, m: int) -> dict:
        _, cols = self.matrix(call)
        arena = LocalArena(ALIGN)
        lay: dict = {"x": [arena.take(m * cols * ISA_ITEMSIZE[call.inputs[0].dtype]) for _ in range(2)]}
        for i in self.tile_operands(call):
            nbytes = m * self.operand_cols(call, i) * ISA_ITEMSIZE[call.inputs[i].dtype]
            lay[f"in{i}"] = [arena.take(nbytes) for _ in range(2)]
        lay["out"] = [arena.take(m * self.out_cols(call) * ISA_ITEMSIZE[call.output.dtype]) for _ in range(2)]
        lay["w"], lay["t"], lay["vec"] = None, [], []
        lay["param"] = arena.take(self.param_bytes(call, m))
        lay["end"] = arena.end
        return lay

    def params(self, call, lay) -> list[ParamLoad]:
        """Each of `param_operands` once, as it is stored, at `param_offsets` in one region."""
        ops = self.param_operands(call)
        offsets = param_offsets([call.inputs[i].nbytes for i in ops])
        return [ParamLoad(i, 1, lay["param"] + at, lay["param"] + at) for i, at in zip(ops, offsets)]

    def param_bytes(self, call, m: int) -> int:
        return sum(-(-call.inputs[i].nbytes // PARAM_STEP) * PARAM_STEP for i in self.param_operands(call))

    def param_operands(self, call) -> tuple[int, ...]:
        """Operands loaded once per PE, whole (a scalar divisor): the kernel's last region."""
        return ()

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
        """Regions: the input's rows, then each tile operand's, the output's, the constants."""
        addrs = (lay["x"][slot], *(lay[f"in{i}"][slot] for i in self.tile_operands(call)), lay["out"][slot],
                 *((lay["param"],) if self.param_operands(call) else ()))
        return [Vec(self._kernel(call), addrs, m)]

    def _kernel(self, call) -> VectorKernel:
        """The call's kernel, built once per (op, row length, dtype, attributes, vector length)."""
        vlen = self._chip.vector_core.vlen_bytes
        key = (call.op, tuple((p.shape, p.dtype) for p in call.inputs if p is not None), call.output.dtype,
               tuple(sorted((k, str(v)) for k, v in call.attrs.items())), vlen)
        cache = self.__dict__.setdefault("_built", {})
        if key not in cache:
            cache[key] = self.vector_kernel(call, self._chip)
        return cache[key]
