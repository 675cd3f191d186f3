"""MX block quantization on the SIMD engines: the step the dtype pass puts before a GEMM compiled
for an MX format ("mxfp8", "mxfp4"), turning its fp32 or bf16 input rows into the format's rows
of 32-element blocks, each a shared e8m0 scale and its elements (simulator/isa/mx.py).

One SIMD_MX_QUANT command per tile of whole rows: the engine finds each block's largest
magnitude, derives the block's scale from it and writes the scaled, rounded and saturated
elements after the scale byte. Rows stream through local memory like the other row-wise kernels
(`rowwise.RowwiseKernel`); blocks are independent, so rows too long for local memory go in
chunks of whole blocks, one pass each. The bytes are exactly `MxFormat.encode`'s.
"""
from __future__ import annotations

from ops.kernel import KernelCall, register_kernel
from ops.kernels.rowwise import Job, RowwiseKernel, Simd
from simulator.isa.mx import BLOCK, FORMATS


class MxQuantizeKernel(RowwiseKernel):
    """`quantize_mx`: x (fp32 or bf16, [..., K], K a multiple of 32) -> its rows in the MX format
    of the result's dtype, [..., K / 32 * block bytes]."""
    ops = ("quantize_mx",)

    def accepts(self, op, operands, result, attrs, chip=None) -> bool:
        x = operands[0]
        return x is not None and x.is_float and x.rank >= 1 and x.shape[-1] % BLOCK == 0 and x.numel > 0

    def out_cols(self, call: KernelCall) -> int:
        return FORMATS[call.output.dtype].row_bytes(self.matrix(call)[1])

    def flops(self, call):
        rows, cols = self.matrix(call)
        return rows * cols * 2          # the block maxima, the scaled elements

    @staticmethod
    def _quantize(call, lay, slot: int, rows: int, cols: int) -> list[Simd]:
        return [Simd("mx", "COPY", (lay["x"][slot], lay["out"][slot]), rows, cols, dtype=call.inputs[0].dtype,
                     out_dtype=call.output.dtype)]

    def tile(self, call, lay, slot, m, row0):
        return self._quantize(call, lay, slot, m, self.matrix(call)[1])

    def row_jobs(self, call, lay, row, chunks):
        out, fmt = call.output, FORMATS[call.output.dtype]
        row_bytes = self.out_cols(call)

        def steps(n: int):
            return lambda slot: self._quantize(call, lay, slot, 1, n)
        return [Job((self.chunk_load(call, row, c0, n),), steps(n),
                    (("out", out.space, out.addr + row * row_bytes + fmt.row_bytes(c0), fmt.row_bytes(n)),))
                for c0, n in chunks]


register_kernel(MxQuantizeKernel())
