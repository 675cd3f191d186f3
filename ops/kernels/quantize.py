"""Per-row (per-token) int8 quantization on the SIMD engines: the two steps the dtype pass puts
before an int8 GEMM whose activation is quantized row by row at run time.

* `row_scale`: s[r] = max(max |x[r, :]|, TINY) * (1 / 127), one fp32 per row (shape [..., 1]);
  the GEMM's epilogue multiplies row r of its accumulator by it.
* `quantize_rows`: xq[r, c] = x[r, c] * (1 / s[r]), rounded half to even and saturated to int8,
  with s[r] recomputed by the same commands (a kernel writes one result, and reading x twice
  costs less than a second pass over int8 data).

|x| comes from a row max and a row min (the SIMD engine has no abs). Both kernels stream rows
like the other row-wise kernels (`rowwise.RowwiseKernel`); rows too long for local memory go
in chunks, and `quantize_rows` then reads each row twice: its scale, then its values.
The numbers are exactly what `scale_rows` in torch gives (fp32 throughout, the same order).
"""
from __future__ import annotations

import torch

from ops.kernel import ISA_ITEMSIZE, register_kernel
from ops.kernels.rowwise import TINY, Job, RowwiseKernel, Simd, _float_rows

INT8_MAX = 127.0


def scale_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(s, 1 / s) per row of `x` (shape [..., 1], fp32), as the kernels compute them."""
    xf = x.float()
    amax = torch.maximum(xf.amax(-1, keepdim=True), xf.amin(-1, keepdim=True) * -1.0).clamp_min(TINY)
    s = amax * torch.tensor(1.0 / INT8_MAX, dtype=torch.float32)
    return s, torch.tensor(1.0, dtype=torch.float32) / s


def quantize_rows(x: torch.Tensor) -> torch.Tensor:
    """int8 x row by row, as `quantize_rows` computes it."""
    _, inv = scale_rows(x)
    return torch.clamp(torch.round(x.float() * inv), -128, 127).to(torch.int8)


def _finish(hi: int, lo: int, rows: int) -> list[Simd]:
    """hi := max(hi, -lo, TINY) / 127: the row scale, from the row max and row min."""
    return [Simd("scalar", "MUL", (lo, lo), rows, 1, imm=-1.0),
            Simd("binary", "MAX", (hi, lo, hi), rows, 1),
            Simd("scalar", "MAX", (hi, hi), rows, 1, imm=TINY),
            Simd("scalar", "MUL", (hi, hi), rows, 1, imm=1.0 / INT8_MAX)]


class _RowQuantKernel(RowwiseKernel):
    quantizes = False

    def accepts(self, op, operands, result, attrs, chip=None) -> bool:
        return _float_rows(operands, result)

    def out_cols(self, call):
        return self.matrix(call)[1] if self.quantizes else 1

    def flops(self, call):
        rows, cols = self.matrix(call)
        return rows * cols * (3 if self.quantizes else 2)

    def tile(self, call, lay, slot, m, row0):
        _, c = self.matrix(call)
        dt = call.inputs[0].dtype
        x, (hi, lo, inv) = lay["x"][slot], lay["vec"][:3]
        steps = [Simd("reduce", "MAX", (x, hi), m, c, dtype=dt), Simd("reduce", "MIN", (x, lo), m, c, dtype=dt)]
        steps += _finish(hi, lo, m)
        if not self.quantizes:
            return steps + [Simd("scalar", "MUL", (hi, lay["out"][slot]), m, 1, imm=1.0,
                                 out_dtype=call.output.dtype)]
        return steps + self.widen(call, lay, slot, m) + [
            Simd("unary", "RECIP", (hi, inv), m, 1),
            Simd("bcast", "MUL", (self.work(call, lay, slot), inv, lay["out"][slot]), m, c, out_dtype="int8")]

    def row_jobs(self, call, lay, row, chunks):
        dt = call.inputs[0].dtype
        hi, lo, inv, chi, clo = lay["vec"][:5]
        last = len(chunks) - 1
        out = call.output

        def stats(j: int, n: int):          # pass 1: running row max and min
            def steps(slot: int) -> list[Simd]:
                x = lay["x"][slot]
                if j == 0:
                    s = [Simd("reduce", "MAX", (x, hi), 1, n, dtype=dt), Simd("reduce", "MIN", (x, lo), 1, n, dtype=dt)]
                else:
                    s = [Simd("reduce", "MAX", (x, chi), 1, n, dtype=dt), Simd("binary", "MAX", (hi, chi, hi), 1, 1),
                         Simd("reduce", "MIN", (x, clo), 1, n, dtype=dt), Simd("binary", "MIN", (lo, clo, lo), 1, 1)]
                if j == last:
                    s += _finish(hi, lo, 1)
                    s += ([Simd("unary", "RECIP", (hi, inv), 1, 1)] if self.quantizes else
                          [Simd("scalar", "MUL", (hi, lay["out"][slot]), 1, 1, imm=1.0, out_dtype=out.dtype)])
                return s
            return steps

        def values(n: int):                 # pass 2: each chunk times 1 / s, to int8
            def steps(slot: int) -> list[Simd]:
                work, widen = self.chunk_work(call, lay, slot, n)
                return widen + [Simd("bcast", "MUL", (work, inv, lay["x"][slot]), 1, n, out_dtype="int8")]
            return steps

        item = ISA_ITEMSIZE[out.dtype]
        if not self.quantizes:
            return [Job((self.chunk_load(call, row, c0, n),), stats(j, n),
                        ("out", out.space, out.addr + row * item, item) if j == last else None)
                    for j, (c0, n) in enumerate(chunks)]
        _, cols = self.matrix(call)
        return ([Job((self.chunk_load(call, row, c0, n),), stats(j, n)) for j, (c0, n) in enumerate(chunks)]
                + [Job((self.chunk_load(call, row, c0, n),), values(n),
                       ("out", out.space, out.addr + (row * cols + c0) * item, n * item)) for c0, n in chunks])


class RowScaleKernel(_RowQuantKernel):
    ops = ("row_scale",)


class RowQuantizeKernel(_RowQuantKernel):
    ops = ("quantize_rows",)
    quantizes = True


register_kernel(RowScaleKernel())
register_kernel(RowQuantizeKernel())
