"""Row-wise softmax and log-softmax over the last dim (`ember.softmax`) on the SIMD engines,
on the row-wise framework (`rowwise.RowwiseKernel`).

Per tile: row max, subtract, exp, row sum, scale by its reciprocal (or subtract its log). Rows
too long for local memory go in chunks, in two passes: an online max with a rescaled running
sum, then the results.
"""
from __future__ import annotations

from ops.kernel import ISA_ITEMSIZE, register_kernel
from ops.kernels.rowwise import TINY, Job, RowwiseKernel, Simd, _float_rows

#: Row maximum floor: an all -inf row (a fully masked attention row) gives zeros, not NaN.
NEG_BIG = -3.0e38
#: log(s) for s >= 1: square roots shrink s to s^(1/8) <= ~3, a two-term atanh series gives a
#: start within ~0.1, and Newton steps y += s * exp(-y) - 1 square the error (no LOG on the SIMD).
LOG_HALVINGS = 3
LOG_NEWTON_STEPS = 3


def log_of(s: int, y: int, a: int, b: int, m: int) -> list[Simd]:
    """y = log(s) for m fp32 values s >= 1 (a, b: scratch vectors; s is kept)."""
    out = [Simd("unary", "COPY", (s, a), m, 1)]
    for _ in range(LOG_HALVINGS):                     # a = s ** (1 / 2**k)
        out += [Simd("unary", "RSQRT", (a, b), m, 1), Simd("binary", "MUL", (a, b, a), m, 1)]
    out += [Simd("scalar", "ADD", (a, b), m, 1, imm=1.0),      # z = (a - 1) / (a + 1)
            Simd("scalar", "ADD", (a, a), m, 1, imm=-1.0),
            Simd("binary", "DIV", (a, b, a), m, 1),
            Simd("binary", "MUL", (a, a, b), m, 1),            # log a ~ 2z (1 + z^2 / 3)
            Simd("scalar", "MUL", (b, b), m, 1, imm=1.0 / 3.0),
            Simd("scalar", "ADD", (b, b), m, 1, imm=1.0),
            Simd("binary", "MUL", (a, b, y), m, 1),
            Simd("scalar", "MUL", (y, y), m, 1, imm=2.0 * 2 ** LOG_HALVINGS)]
    for _ in range(LOG_NEWTON_STEPS):                 # y += s / exp(y) - 1
        out += [Simd("unary", "EXP", (y, a), m, 1), Simd("binary", "DIV", (s, a, a), m, 1),
                Simd("binary", "ADD", (y, a, y), m, 1), Simd("scalar", "ADD", (y, y), m, 1, imm=-1.0)]
    return out


class SoftmaxKernel(RowwiseKernel):
    """softmax / log-softmax over the last dim: row max, subtract, exp, row sum, scale."""
    ops = ("softmax",)

    def accepts(self, op, operands, result, attrs, chip=None) -> bool:
        x = operands[0]
        return _float_rows(operands, result) and attrs["dim"] == x.rank - 1

    def scratch_tiles(self, call):
        return 1 if call.attrs["log"] else 0

    def flops(self, call):
        return 5 * call.inputs[0].nbytes // ISA_ITEMSIZE[call.inputs[0].dtype]

    def tile(self, call, lay, slot, m, row0):
        _, c = self.matrix(call)
        dt, odt = call.inputs[0].dtype, call.output.dtype
        x, w = lay["x"][slot], self.work(call, lay, slot)
        mx, s, ls, a, b = lay["vec"][:5]
        # the row max of bf16 values is a bf16 value: subtract it straight from the input
        steps = [Simd("reduce", "MAX", (x, mx), m, c, dtype=dt, out_dtype=dt),
                 Simd("scalar", "MAX", (mx, mx), m, 1, imm=NEG_BIG, dtype=dt, out_dtype=dt),
                 Simd("bcast", "SUB", (x, mx, w), m, c, dtype=dt)]
        e = lay["t"][0] if call.attrs["log"] else w
        steps += [Simd("unary", "EXP", (w, e), m, c),
                  Simd("reduce", "ADD", (e, s), m, c),
                  Simd("scalar", "MAX", (s, s), m, 1, imm=TINY)]
        if call.attrs["log"]:
            steps += log_of(s, ls, a, b, m)
            steps += [Simd("bcast", "SUB", (w, ls, x), m, c, out_dtype=odt)]
        else:
            steps += [Simd("unary", "RECIP", (s, s), m, 1),
                      Simd("bcast", "MUL", (w, s, x), m, c, out_dtype=odt)]
        return steps

    def row_jobs(self, call, lay, row, chunks):
        _, cols = self.matrix(call)
        log, odt = call.attrs["log"], call.output.dtype
        mx, mx2, cm, s, cs, d, r, a, b = lay["vec"][:9]
        out = call.output
        item = ISA_ITEMSIZE[out.dtype]
        last = len(chunks) - 1

        def stats(j: int, n: int):          # pass 1: running max and rescaled running sum
            def steps(slot: int) -> list[Simd]:
                w, out_ = self.chunk_work(call, lay, slot, n)
                if j == 0:
                    out_ += [Simd("reduce", "MAX", (w, cm), 1, n),
                             Simd("scalar", "MAX", (cm, mx), 1, 1, imm=NEG_BIG),
                             Simd("bcast", "SUB", (w, mx, w), 1, n),
                             Simd("unary", "EXP", (w, w), 1, n),
                             Simd("reduce", "ADD", (w, s), 1, n)]
                else:
                    out_ += [Simd("reduce", "MAX", (w, cm), 1, n),
                             Simd("binary", "MAX", (mx, cm, mx2), 1, 1),
                             Simd("bcast", "SUB", (w, mx2, w), 1, n),
                             Simd("unary", "EXP", (w, w), 1, n),
                             Simd("reduce", "ADD", (w, cs), 1, n),
                             Simd("binary", "SUB", (mx, mx2, d), 1, 1),     # s *= exp(old max - new max)
                             Simd("unary", "EXP", (d, d), 1, 1),
                             Simd("binary", "MUL", (s, d, s), 1, 1),
                             Simd("binary", "ADD", (s, cs, s), 1, 1),
                             Simd("unary", "COPY", (mx2, mx), 1, 1)]
                if j == last:
                    out_.append(Simd("scalar", "MAX", (s, s), 1, 1, imm=TINY))
                    out_ += log_of(s, r, a, b, 1) if log else [Simd("unary", "RECIP", (s, r), 1, 1)]
                return out_
            return steps

        def result(n: int):                  # pass 2: exp(x - max) / sum, or x - max - log(sum)
            def steps(slot: int) -> list[Simd]:
                w, out_ = self.chunk_work(call, lay, slot, n)
                out_.append(Simd("bcast", "SUB", (w, mx, w), 1, n))
                if log:
                    return out_ + [Simd("bcast", "SUB", (w, r, lay["x"][slot]), 1, n, out_dtype=odt)]
                return out_ + [Simd("unary", "EXP", (w, w), 1, n),
                               Simd("bcast", "MUL", (w, r, lay["x"][slot]), 1, n, out_dtype=odt)]
            return steps

        jobs = [Job((self.chunk_load(call, row, c0, n),), stats(j, n)) for j, (c0, n) in enumerate(chunks)]
        jobs += [Job((self.chunk_load(call, row, c0, n),), result(n),
                     (("x", out.space, out.addr + (row * cols + c0) * item, n * item),)) for c0, n in chunks]
        return jobs


register_kernel(SoftmaxKernel())
