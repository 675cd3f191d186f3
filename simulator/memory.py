"""Byte-addressed simulated memories that start poisoned: reading a byte nothing wrote fails.

Pages are allocated on first write, so a 128 GiB DRAM costs only what a program touches.
"""
from __future__ import annotations

import numpy as np

from simulator.errors import AddressOutOfRange, LocalMemoryOverflow, UninitializedRead

PAGE_BITS = 16
PAGE = 1 << PAGE_BITS


class Memory:
    """One memory (DRAM, SRAM or one PE's local memory) with a per-byte initialized map."""

    def __init__(self, name: str, size: int, local: bool = False):
        self.name = name
        self.size = size
        self.local = local
        self._data: dict[int, np.ndarray] = {}
        self._init: dict[int, np.ndarray] = {}

    def _check(self, addr: int, n: int, what: str) -> None:
        if addr < 0 or addr + n > self.size:
            cls = LocalMemoryOverflow if self.local else AddressOutOfRange
            raise cls(f"{what}: bytes [{addr:#x}, {addr + n:#x}) are outside {self.name} "
                      f"(size {self.size:#x} = {self.size} bytes)")

    def write(self, addr: int, data: np.ndarray, what: str = "write") -> None:
        """Write raw bytes (any array; its bytes are copied) and mark them initialized."""
        buf = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
        n = buf.size
        self._check(addr, n, what)
        pos = 0
        while pos < n:
            page, off = divmod(addr + pos, PAGE)
            take = min(n - pos, PAGE - off)
            if page not in self._data:
                self._data[page] = np.zeros(PAGE, np.uint8)
                self._init[page] = np.zeros(PAGE, bool)
            self._data[page][off:off + take] = buf[pos:pos + take]
            self._init[page][off:off + take] = True
            pos += take

    def read(self, addr: int, n: int, what: str = "read") -> np.ndarray:
        """Read n bytes; raises UninitializedRead naming the first poisoned byte."""
        self._check(addr, n, what)
        out = np.empty(n, np.uint8)
        pos = 0
        while pos < n:
            page, off = divmod(addr + pos, PAGE)
            take = min(n - pos, PAGE - off)
            init = self._init.get(page)
            if init is None or not init[off:off + take].all():
                first = off if init is None else off + int(np.argmin(init[off:off + take]))
                bad = page * PAGE + first
                raise UninitializedRead(f"{what}: reads {self.name}[{bad:#x}], which nothing has "
                                        f"written (range [{addr:#x}, {addr + n:#x}))")
            out[pos:pos + take] = self._data[page][off:off + take]
            pos += take
        return out

    def read2d(self, addr: int, rows: int, row_bytes: int, stride: int, what: str) -> np.ndarray:
        """rows x row_bytes bytes, rows ``stride`` apart; returns a (rows, row_bytes) array."""
        if stride == row_bytes or rows == 1:
            return self.read(addr, rows * row_bytes, what).reshape(rows, row_bytes)
        return np.stack([self.read(addr + r * stride, row_bytes, what) for r in range(rows)])

    def write2d(self, addr: int, data: np.ndarray, stride: int, what: str) -> None:
        rows, row_bytes = data.shape
        if stride == row_bytes or rows == 1:
            self.write(addr, data, what)
        else:
            for r in range(rows):
                self.write(addr + r * stride, data[r], what)

    def read_array(self, addr: int, shape, dtype, what: str = "read") -> np.ndarray:
        dt = np.dtype(dtype)
        n = int(np.prod(shape)) * dt.itemsize
        return self.read(addr, n, what).view(dt).reshape(shape)
