"""Functional engine: runs commands on byte-addressed memories with the hardware's dtypes.

Numbers follow the engines: the DPE multiplies bf16/fp16 (or fp32) inputs with fp32
accumulation and int8 inputs with int32 accumulation; the SIMD engine computes in fp32 and
rounds (bf16/fp16, round to nearest even via ml_dtypes) or saturates (int8, int32) on store.
GELU is the tanh approximation a lookup table implements.
"""
from __future__ import annotations

import numpy as np

from simulator.isa import FLAG_ACCUMULATE, DType, Dir, Mcast, Op, SimdFn, Space, format_command
from simulator.memory import Memory
from simulator.spec import ChipSpec

_F32 = np.float32


def store_cast(x: np.ndarray, dtype: DType) -> np.ndarray:
    """fp32 values as the engine stores them in ``dtype`` (rounding or saturating)."""
    if dtype in (DType.INT8, DType.INT32):
        info = np.iinfo(dtype.np)
        return np.clip(np.rint(x.astype(np.float64)), info.min, info.max).astype(dtype.np)
    return x.astype(dtype.np)


def _gelu(x):
    return 0.5 * x * (1.0 + np.tanh(_F32(0.7978845608028654) * (x + _F32(0.044715) * x * x * x)))


_UNARY = {
    SimdFn.COPY: lambda x: x, SimdFn.RELU: lambda x: np.maximum(x, _F32(0)),
    SimdFn.EXP: np.exp, SimdFn.GELU: _gelu, SimdFn.SILU: lambda x: x / (_F32(1) + np.exp(-x)),
    SimdFn.TANH: np.tanh, SimdFn.SIGMOID: lambda x: _F32(1) / (_F32(1) + np.exp(-x)),
    SimdFn.RECIP: lambda x: _F32(1) / x, SimdFn.RSQRT: lambda x: _F32(1) / np.sqrt(x),
}
_BINARY = {
    SimdFn.ADD: np.add, SimdFn.SUB: np.subtract, SimdFn.MUL: np.multiply,
    SimdFn.MAX: np.maximum, SimdFn.MIN: np.minimum, SimdFn.DIV: np.divide,
}
_REDUCE = {SimdFn.ADD: np.sum, SimdFn.MAX: np.max, SimdFn.MIN: np.min}


class Machine:
    """The chip's memories: one DRAM, one SRAM, one local memory per PE."""

    def __init__(self, chip: ChipSpec):
        self.chip = chip
        self.dram = Memory("DRAM", chip.dram.bytes)
        self.sram = Memory("SRAM", chip.sram.bytes)
        self.local = [Memory(f"local memory of PE {i}", chip.local_mem.bytes, local=True)
                      for i in range(chip.num_pes)]
        self.cols = chip.pe_grid.cols
        self.rows = chip.pe_grid.rows

    def mem(self, space: "Space | str", pe: int | None = None) -> Memory:
        space = space if isinstance(space, Space) else Space[str(space).upper()]
        if space == Space.DRAM:
            return self.dram
        if space == Space.SRAM:
            return self.sram
        if pe is None:
            raise ValueError("local memory needs a PE number")
        return self.local[pe]

    # --- execution ------------------------------------------------------------------------
    def execute(self, c: np.void, index: int) -> list:
        """Read a command's inputs and compute its outputs; returns the writes, which the
        caller commits when the command completes (so an unsynchronized reader of a result
        sees poisoned or stale memory, as on the chip)."""
        op = Op(int(c["op"]))
        self._pending = []
        if op is not Op.NOP:
            what = format_command(c, index)
            getattr(self, "_" + op.name.lower())(c, [int(x) for x in c["a"]], int(c["pe"]), what)
        return self._pending

    @staticmethod
    def commit(writes: list) -> None:
        for mem, addr, data, stride, what in writes:
            mem.write2d(addr, data, stride, what)

    def _defer(self, mem: Memory, addr: int, data: np.ndarray, what: str) -> None:
        buf = np.ascontiguousarray(data).reshape(1, -1).view(np.uint8)
        self._pending.append((mem, addr, buf, buf.shape[1], what))

    def _defer2d(self, mem: Memory, addr: int, data: np.ndarray, stride: int, what: str) -> None:
        self._pending.append((mem, addr, data, stride, what))

    def _dma(self, c, a, pe, what):
        src_space, dst_space = Space(int(c["src_space"])), Space(int(c["dst_space"]))
        data = self.mem(src_space, pe).read2d(a[0], a[2], a[3], a[4], what)
        if dst_space != Space.LOCAL:
            self._defer2d(self.mem(dst_space), a[1], data, a[5], what)
            return
        d = int(c["peer"]) if int(c["peer"]) >= 0 else pe
        mc = Mcast((int(c["flags"]) >> 1) & 3)
        r, col = divmod(d, self.cols)
        targets = ([r * self.cols + cc for cc in range(self.cols)] if mc is Mcast.ROW else
                   [rr * self.cols + col for rr in range(self.rows)] if mc is Mcast.COL else [d])
        for t in targets:
            self._defer2d(self.local[t], a[1], data, a[5], what)

    def _dpe_matmul(self, c, a, pe, what):
        mem = self.local[pe]
        dt = DType(int(c["dtype"]))
        m, k, n = a[3], a[4], a[5]
        A = mem.read_array(a[0], (m, k), dt.np, what)
        B = mem.read_array(a[1], (k, n), dt.np, what)
        if dt is DType.INT8:
            out_t = np.int32
            C = A.astype(np.int32) @ B.astype(np.int32)
        else:
            out_t = np.float32
            C = A.astype(np.float32) @ B.astype(np.float32)
        if int(c["flags"]) & FLAG_ACCUMULATE:
            C = C + mem.read_array(a[2], (m, n), out_t, what)
        self._defer(mem, a[2], C.astype(out_t), what)

    def _re_acc(self, c, a, pe, what):
        mem = self.local[pe]
        t = np.int32 if int(c["dtype"]) == DType.INT32 else np.float32
        x = mem.read_array(a[0], (a[2],), t, what) + mem.read_array(a[1], (a[2],), t, what)
        self._defer(mem, a[0], x.astype(t), what)

    def _re_send(self, c, a, pe, what):
        t = np.int32 if int(c["dtype"]) == DType.INT32 else np.float32
        r, col = divmod(pe, self.cols)
        d = Dir(int(c["peer"]))
        r += {Dir.N: -1, Dir.S: 1}.get(d, 0)
        col += {Dir.W: -1, Dir.E: 1}.get(d, 0)
        dst = self.local[r * self.cols + col]
        x = self.local[pe].read_array(a[0], (a[2],), t, what)
        if int(c["flags"]) & FLAG_ACCUMULATE:
            x = x + dst.read_array(a[1], (a[2],), t, what)
        self._defer(dst, a[1], x.astype(t), what)

    def _load(self, pe, addr, shape, dt, what):
        return self.local[pe].read_array(addr, shape, dt.np, what).astype(np.float32)

    def _simd_unary(self, c, a, pe, what):
        dt, dt2 = DType(int(c["dtype"])), DType(int(c["dtype2"]))
        x = self._load(pe, a[0], (a[2],), dt, what)
        with np.errstate(all="ignore"):
            y = _UNARY[SimdFn(int(c["fn"]))](x)
        self._defer(self.local[pe], a[1], store_cast(y, dt2), what)

    def _simd_binary(self, c, a, pe, what):
        dt, dt2 = DType(int(c["dtype"])), DType(int(c["dtype2"]))
        x = self._load(pe, a[0], (a[3],), dt, what)
        y = self._load(pe, a[1], (a[3],), dt, what)
        with np.errstate(all="ignore"):
            z = _BINARY[SimdFn(int(c["fn"]))](x, y)
        self._defer(self.local[pe], a[2], store_cast(z, dt2), what)

    def _simd_scalar(self, c, a, pe, what):
        dt, dt2 = DType(int(c["dtype"])), DType(int(c["dtype2"]))
        imm = _F32(np.array([a[3]], np.int64).view(np.float64)[0])
        x = self._load(pe, a[0], (a[2],), dt, what)
        with np.errstate(all="ignore"):
            z = _BINARY[SimdFn(int(c["fn"]))](x, imm)
        self._defer(self.local[pe], a[1], store_cast(z, dt2), what)

    def _simd_row_reduce(self, c, a, pe, what):
        dt, dt2 = DType(int(c["dtype"])), DType(int(c["dtype2"]))
        x = self._load(pe, a[0], (a[2], a[3]), dt, what)
        y = _REDUCE[SimdFn(int(c["fn"]))](x, axis=1)
        self._defer(self.local[pe], a[1], store_cast(y, dt2), what)

    def _simd_row_bcast(self, c, a, pe, what):
        dt, dt2 = DType(int(c["dtype"])), DType(int(c["dtype2"]))
        x = self._load(pe, a[0], (a[3], a[4]), dt, what)
        v = self._load(pe, a[1], (a[3], 1), dt, what)
        with np.errstate(all="ignore"):
            z = _BINARY[SimdFn(int(c["fn"]))](x, v)
        self._defer(self.local[pe], a[2], store_cast(z, dt2), what)

    def _mlu_transpose(self, c, a, pe, what):
        dt = DType(int(c["dtype"]))
        x = self.local[pe].read_array(a[0], (a[2], a[3]), dt.np, what)
        self._defer(self.local[pe], a[1], np.ascontiguousarray(x.T), what)

    def _mlu_copy2d(self, c, a, pe, what):
        mem = self.local[pe]
        self._defer2d(mem, a[1], mem.read2d(a[0], a[2], a[3], a[4], what), a[5], what)

    def _mlu_concat(self, c, a, pe, what):
        mem = self.local[pe]
        x = mem.read(a[0], a[3] * a[4], what).reshape(a[3], a[4])
        y = mem.read(a[1], a[3] * a[5], what).reshape(a[3], a[5])
        self._defer(mem, a[2], np.concatenate([x, y], axis=1), what)
