"""Per-row (per-token) int8 or fp8 quantization on the SIMD engines: the step the dtype pass puts
before a quantized GEMM whose activation is quantized row by row at run time.

`quantize_rows` reads each row of x once and writes two results:

* xq[r, c] = x[r, c] * (1 / s[r]), rounded half to even and saturated to int8 (or rounded to
  nearest even and saturated to fp8 e4m3, whichever xq's dtype is);
* s[r] = max(max |x[r, :]|, TINY) * (1 / TOP), one fp32 per row (shape [..., 1]), TOP = 127 for
  int8 and 448 for fp8, which the GEMM's epilogue multiplies row r of its accumulator by.

|x| comes from a row max and a row min (the SIMD engine has no abs). Rows stream through local
memory like the other row-wise kernels (`rowwise.RowwiseKernel`), each tile's scales stored
after its int8 rows from a buffer per slot. Rows too long for local memory go in chunks, in
two passes per row: the scale over its chunks (stored once), then its int8 values.
The numbers are exactly what `scale_rows` / `quantize_rows` in torch give (fp32 throughout,
the same order).
"""
from __future__ import annotations

import torch

from ops.kernel import ISA_ITEMSIZE, register_kernel
from ops.kernels.rowwise import TINY, Job, RowwiseKernel, Simd, _float_rows

#: The magnitude a row's largest value maps to, per ISA dtype of the quantized rows.
TOP = {"int8": 127.0, "fp8": 448.0}


def scale_rows(x: torch.Tensor, top: float = TOP["int8"]) -> tuple[torch.Tensor, torch.Tensor]:
    """(s, 1 / s) per row of `x` (shape [..., 1], fp32), as the kernel computes them."""
    xf = x.float()
    amax = torch.maximum(xf.amax(-1, keepdim=True), xf.amin(-1, keepdim=True) * -1.0).clamp_min(TINY)
    s = amax * torch.tensor(1.0 / top, dtype=torch.float32)
    return s, torch.tensor(1.0, dtype=torch.float32) / s


def quantize_rows(x: torch.Tensor, dtype: torch.dtype = torch.int8) -> tuple[torch.Tensor, torch.Tensor]:
    """(xq, s): x row by row in int8 (or fp8 e4m3) and the row scales, as the `quantize_rows`
    kernel computes them."""
    fp8 = dtype == torch.float8_e4m3fn
    s, inv = scale_rows(x, TOP["fp8" if fp8 else "int8"])
    y = x.float() * inv
    if fp8:
        return torch.clamp(y, -TOP["fp8"], TOP["fp8"]).to(dtype), s
    return torch.clamp(torch.round(y), -128, 127).to(torch.int8), s


def _finish(hi: int, lo: int, scale: int, rows: int, top: float) -> list[Simd]:
    """scale := max(hi, -lo, TINY) / top: the row scale, from the row max and row min."""
    return [Simd("scalar", "MUL", (lo, lo), rows, 1, imm=-1.0),
            Simd("binary", "MAX", (hi, lo, hi), rows, 1),
            Simd("scalar", "MAX", (hi, hi), rows, 1, imm=TINY),
            Simd("scalar", "MUL", (hi, scale), rows, 1, imm=1.0 / top)]


class RowQuantizeKernel(RowwiseKernel):
    """`quantize_rows`: x (fp32 or bf16, [..., K]) -> int8 or fp8 rows xq [..., K] (`output`) and
    their fp32 scales s [..., 1] (`extra_outputs[0]`), x read once."""
    ops = ("quantize_rows",)

    def accepts(self, op, operands, result, attrs, chip=None) -> bool:
        return _float_rows(operands, result)

    def flops(self, call):
        rows, cols = self.matrix(call)
        return rows * cols * 3          # row max, row min, multiply

    def tile(self, call, lay, slot, m, row0):
        _, c = self.matrix(call)
        dt = call.inputs[0].dtype
        x, scale, (hi, lo, inv) = lay["x"][slot], lay["out1"][slot], lay["vec"][:3]
        return ([Simd("reduce", "MAX", (x, hi), m, c, dtype=dt), Simd("reduce", "MIN", (x, lo), m, c, dtype=dt)]
                + _finish(hi, lo, scale, m, TOP[call.output.dtype]) + self.widen(call, lay, slot, m)
                + [Simd("unary", "RECIP", (scale, inv), m, 1),
                   Simd("bcast", "MUL", (self.work(call, lay, slot), inv, lay["out"][slot]), m, c,
                        out_dtype=call.output.dtype)])

    def row_jobs(self, call, lay, row, chunks):
        dt = call.inputs[0].dtype
        hi, lo, inv, chi, clo = lay["vec"][:5]
        last = len(chunks) - 1
        out, scales = call.output, call.extra_outputs[0]

        def stats(j: int, n: int):          # pass 1: running row max and min, then the scale
            def steps(slot: int) -> list[Simd]:
                x = lay["x"][slot]
                if j == 0:
                    s = [Simd("reduce", "MAX", (x, hi), 1, n, dtype=dt), Simd("reduce", "MIN", (x, lo), 1, n, dtype=dt)]
                else:
                    s = [Simd("reduce", "MAX", (x, chi), 1, n, dtype=dt), Simd("binary", "MAX", (hi, chi, hi), 1, 1),
                         Simd("reduce", "MIN", (x, clo), 1, n, dtype=dt), Simd("binary", "MIN", (lo, clo, lo), 1, 1)]
                if j == last:
                    scale = lay["out1"][slot]
                    s += _finish(hi, lo, scale, 1, TOP[out.dtype]) + [Simd("unary", "RECIP", (scale, inv), 1, 1)]
                return s
            return steps

        def values(n: int):                 # pass 2: each chunk times 1 / s, to int8 / fp8
            def steps(slot: int) -> list[Simd]:
                work, widen = self.chunk_work(call, lay, slot, n)
                return widen + [Simd("bcast", "MUL", (work, inv, lay["x"][slot]), 1, n, out_dtype=out.dtype)]
            return steps

        item, s_item = ISA_ITEMSIZE[out.dtype], ISA_ITEMSIZE[scales.dtype]
        _, cols = self.matrix(call)
        scale_store = (("out1", scales.space, scales.addr + row * s_item, s_item),)
        return ([Job((self.chunk_load(call, row, c0, n),), stats(j, n), scale_store if j == last else ())
                 for j, (c0, n) in enumerate(chunks)]
                + [Job((self.chunk_load(call, row, c0, n),), values(n),
                       (("out", out.space, out.addr + (row * cols + c0) * item, n * item),)) for c0, n in chunks])


register_kernel(RowQuantizeKernel())
