"""OCP Microscaling (MX) block formats as the chip stores them: mxfp8 (e4m3 elements) and mxfp4
(e2m1 elements), 32 elements sharing one e8m0 scale.

A row of K values (K a multiple of 32) is K / 32 blocks, each one scale byte followed by its 32
elements: 33 bytes for mxfp8, 17 for mxfp4 (two e2m1 codes per byte, the even element in the
low nibble). Rows are the contraction axis of a GEMM, so an operand tile of kt columns is one
strided DMA of kt / 32 whole blocks per row, scales included.

Quantization follows the OCP MX v1.0 specification (section 6.3): a block's shared exponent is
floor(log2(max |v|)) - emax, emax the exponent of the element type's largest normal (8 for e4m3,
whose largest value is 448 = 1.75 * 2^8; 2 for e2m1, 6 = 1.5 * 2^2), clamped to e8m0's range
[-127, 127] (an all-zero block takes -127); each element is v / 2^shared_exp rounded to nearest
even in the element type and saturated to its largest value. A value is its element times
2^shared_exp, exact in fp32.
"""
from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np

#: Elements per block (one shared scale).
BLOCK = 32
#: e8m0's exponent bias: a scale byte b means 2^(b - 127); 255 is NaN and never written.
E8M0_BIAS = 127


@dataclass(frozen=True)
class MxFormat:
    """One MX format: its element type, the exponent of that type's largest value, and its bits."""
    name: str
    element: np.dtype
    emax: int
    bits: int

    @property
    def block_bytes(self) -> int:
        """Bytes of one block: its scale byte and its 32 elements."""
        return 1 + BLOCK * self.bits // 8

    @property
    def value_bytes(self) -> float:
        """Bytes per value, its share of the block's scale included."""
        return self.block_bytes / BLOCK

    @property
    def top(self) -> float:
        return float(ml_dtypes.finfo(self.element).max)

    def row_bytes(self, k: int) -> int:
        """Bytes of a row of k values (k a multiple of 32)."""
        if k % BLOCK:
            raise ValueError(f"{self.name}: a row of {k} values is not a whole number of {BLOCK}-element blocks")
        return k // BLOCK * self.block_bytes

    def row_values(self, nbytes: int) -> int:
        """Values in a row of `nbytes` bytes (a whole number of blocks)."""
        if nbytes % self.block_bytes:
            raise ValueError(f"{self.name}: {nbytes} bytes is not a whole number of {self.block_bytes}-byte blocks")
        return nbytes // self.block_bytes * BLOCK

    def encode(self, x: np.ndarray) -> np.ndarray:
        """x [..., K] (any float dtype, finite) -> its rows in this format, uint8 [..., row_bytes(K)]."""
        x = np.asarray(x, dtype=np.float32)
        k = x.shape[-1]
        blocks = x.reshape(*x.shape[:-1], self.row_bytes(k) // self.block_bytes, BLOCK)
        amax = np.max(np.abs(blocks), axis=-1, keepdims=True)
        # floor(log2(amax)) exactly: frexp gives amax = f * 2^e with f in [0.5, 1)
        _, e = np.frexp(amax)
        shared = np.where(amax > 0, e.astype(np.int32) - 1 - self.emax, -E8M0_BIAS)
        shared = np.clip(shared, -E8M0_BIAS, E8M0_BIAS)
        scaled = np.ldexp(blocks, -shared)                     # exact: a power-of-two division
        elems = np.clip(scaled, -self.top, self.top).astype(self.element).view(np.uint8)
        if self.bits == 4:
            elems = (elems[..., 0::2] & 0xF) | ((elems[..., 1::2] & 0xF) << 4)
        out = np.concatenate([(shared + E8M0_BIAS).astype(np.uint8), elems.astype(np.uint8)], axis=-1)
        return out.reshape(*x.shape[:-1], -1)

    def decode(self, b: np.ndarray) -> np.ndarray:
        """Rows in this format, uint8 [..., nbytes] -> their values, fp32 [..., row_values(nbytes)]."""
        b = np.asarray(b, dtype=np.uint8)
        k = self.row_values(b.shape[-1])
        blocks = b.reshape(*b.shape[:-1], k // BLOCK, self.block_bytes)
        shared = blocks[..., :1].astype(np.int32) - E8M0_BIAS
        codes = blocks[..., 1:]
        if self.bits == 4:
            codes = np.stack([codes & 0xF, codes >> 4], axis=-1).reshape(*codes.shape[:-1], BLOCK)
        elems = np.ascontiguousarray(codes).view(self.element).astype(np.float32)
        return np.ldexp(elems, shared).reshape(*b.shape[:-1], k).astype(np.float32)

    def round_trip(self, x: np.ndarray) -> np.ndarray:
        """x as this format represents it (fp32)."""
        return self.decode(self.encode(x))


FORMATS = {
    "mxfp8": MxFormat("mxfp8", np.dtype(ml_dtypes.float8_e4m3fn), 8, 8),
    "mxfp4": MxFormat("mxfp4", np.dtype(ml_dtypes.float4_e2m1fn), 2, 4),
}
