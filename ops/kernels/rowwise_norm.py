"""Row-wise normalizations on the SIMD engines, on the row-wise framework
(`rowwise.RowwiseKernel`): layer and RMS norm over trailing dims (`ember.norm`), and
inference batch norm (`ember.batch_norm`: a per-channel scale and shift).

Norm rows too long for local memory go in chunks, in two passes (moments about the first
chunk's mean, then the results); batch norm planes that do not fit stay on the host.
"""
from __future__ import annotations

import math

from ops.kernel import ISA_ITEMSIZE, register_kernel
from ops.kernels.rowwise import ALIGN, Job, ParamLoad, RowwiseKernel, Simd, _float_rows, _row_fits


# ----------------------------------------------------------------------------- layer / RMS norm

class NormKernel(RowwiseKernel):
    """Layer or RMS norm over the last `axes` dims (contiguous: one row of the matrix), then
    * weight + bias (replicated to a tile once per PE)."""
    ops = ("norm",)

    def accepts(self, op, operands, result, attrs, chip=None) -> bool:
        x = operands[0]
        return _float_rows(operands, result) and 1 <= attrs["axes"] <= x.rank and attrs["kind"] in ("layer", "rms")

    def matrix(self, call):
        shape = call.inputs[0].shape
        cols = math.prod(shape[len(shape) - call.attrs["axes"]:])
        return math.prod(shape) // cols, cols

    def scratch_tiles(self, call):
        return 1

    def flops(self, call):
        n = call.inputs[0].nbytes // ISA_ITEMSIZE[call.inputs[0].dtype]
        return (5 if call.attrs["kind"] == "layer" else 3) * n + 2 * n * self._affine(call)

    def _affine(self, call) -> int:
        return sum(p is not None for p in call.inputs[1:3])

    def param_bytes(self, call, m):
        _, c = self.matrix(call)
        return self._affine(call) * m * c * 4 + ALIGN

    def params(self, call, lay):
        # weight / bias repeated over the tile's rows; bf16 ones land in halves of the scratch tile
        _, c = self.matrix(call)
        m = lay["m"]
        out, pos = [], lay["param"]
        for k, i in enumerate(i for i in (1, 2) if call.inputs[i] is not None):
            out.append(ParamLoad(i, m, pos, lay["t"][0] + k * m * c * 2))
            pos += m * c * 4
        return out

    def layout(self, call, m):
        lay = super().layout(call, m)
        lay["m"] = m
        return lay

    def tile(self, call, lay, slot, m, row0):
        _, c = self.matrix(call)
        odt = call.output.dtype
        x, w, t = lay["x"][slot], self.work(call, lay, slot), lay["t"][0]
        mean, var = lay["vec"][:2]
        steps = self.widen(call, lay, slot, m)
        if call.attrs["kind"] == "layer":
            steps += [Simd("reduce", "ADD", (w, mean), m, c),
                      Simd("scalar", "MUL", (mean, mean), m, 1, imm=1.0 / c),
                      Simd("bcast", "SUB", (w, mean, w), m, c)]
        steps += [Simd("binary", "MUL", (w, w, t), m, c),
                  Simd("reduce", "ADD", (t, var), m, c),
                  Simd("scalar", "MUL", (var, var), m, 1, imm=1.0 / c),
                  Simd("scalar", "ADD", (var, var), m, 1, imm=float(call.attrs["eps"])),
                  Simd("unary", "RSQRT", (var, var), m, 1)]
        params = [(q.dst, "MUL" if q.operand == 1 else "ADD") for q in self.params(call, lay)]
        last = len(params) == 0
        steps.append(Simd("bcast", "MUL", (w, var, x if last else w), m, c,
                          out_dtype=odt if last else "fp32"))
        for i, (addr, fn) in enumerate(params):
            last = i == len(params) - 1
            steps.append(Simd("binary", fn, (w, addr, x if last else w), m, c, out_dtype=odt if last else "fp32"))
        return steps

    chunk_scratch = 2

    def chunk_operands(self, call):
        return tuple(i for i in (1, 2) if call.inputs[i] is not None)

    def row_jobs(self, call, lay, row, chunks):
        _, cols = self.matrix(call)
        layer, odt = call.attrs["kind"] == "layer", call.output.dtype
        shift, s1, s2, cs, cq, mean, rstd, d = lay["vec"][:8]
        t, t2 = lay["t"]
        out = call.output
        item = ISA_ITEMSIZE[out.dtype]
        last = len(chunks) - 1

        def stats(j: int, n: int):
            # sums of (x - shift) and its squares; shift = the first chunk's mean keeps the
            # one-pass variance E[y^2] - E[y]^2 clear of cancellation
            def steps(slot: int) -> list[Simd]:
                w, out_ = self.chunk_work(call, lay, slot, n)
                acc1, acc2 = (s1, s2) if j == 0 else (cs, cq)
                if layer:
                    if j == 0:
                        out_ += [Simd("reduce", "ADD", (w, shift), 1, n),
                                 Simd("scalar", "MUL", (shift, shift), 1, 1, imm=1.0 / n)]
                    out_ += [Simd("bcast", "SUB", (w, shift, w), 1, n),
                             Simd("reduce", "ADD", (w, acc1), 1, n)]
                out_ += [Simd("binary", "MUL", (w, w, t), 1, n),
                         Simd("reduce", "ADD", (t, acc2), 1, n)]
                if j > 0:
                    out_ += [Simd("binary", "ADD", (s1, cs, s1), 1, 1)] if layer else []
                    out_ += [Simd("binary", "ADD", (s2, cq, s2), 1, 1)]
                if j == last:
                    out_.append(Simd("scalar", "MUL", (s2, rstd), 1, 1, imm=1.0 / cols))
                    if layer:
                        out_ += [Simd("scalar", "MUL", (s1, s1), 1, 1, imm=1.0 / cols),
                                 Simd("binary", "MUL", (s1, s1, d), 1, 1),
                                 Simd("binary", "SUB", (rstd, d, rstd), 1, 1),
                                 Simd("binary", "ADD", (shift, s1, mean), 1, 1)]
                    out_ += [Simd("scalar", "ADD", (rstd, rstd), 1, 1, imm=float(call.attrs["eps"])),
                             Simd("unary", "RSQRT", (rstd, rstd), 1, 1)]
                return out_
            return steps

        params = self.chunk_operands(call)

        def result(n: int):
            def steps(slot: int) -> list[Simd]:
                w, out_ = self.chunk_work(call, lay, slot, n)
                if layer:
                    out_.append(Simd("bcast", "SUB", (w, mean, w), 1, n))
                dst = [w] * len(params) + [lay["x"][slot]]
                dts = ["fp32"] * len(params) + [odt]
                out_.append(Simd("bcast", "MUL", (w, rstd, dst[0]), 1, n, out_dtype=dts[0]))
                for k, i in enumerate(params):
                    src = call.inputs[i]
                    vec = lay[f"in{i}"][slot]
                    if src.dtype != "fp32":
                        out_.append(Simd("unary", "COPY", (vec, (t, t2)[k]), 1, n, dtype=src.dtype))
                        vec = (t, t2)[k]
                    out_.append(Simd("binary", "MUL" if i == 1 else "ADD", (w, vec, dst[k + 1]), 1, n,
                                     out_dtype=dts[k + 1]))
                return out_
            return steps

        jobs = [Job((self.chunk_load(call, row, c0, n),), stats(j, n)) for j, (c0, n) in enumerate(chunks)]
        jobs += [Job((self.chunk_load(call, row, c0, n),
                      *(self.chunk_load(call, row, c0, n, i, f"in{i}") for i in params)), result(n),
                     (("x", out.space, out.addr + (row * cols + c0) * item, n * item),)) for c0, n in chunks]
        return jobs


# ----------------------------------------------------------------------------- batch norm

class BatchNormKernel(RowwiseKernel):
    """Inference batch norm of an (N, C, *) input: rows are (n, c) pairs, cols the spatial
    positions; per-channel scale = weight / sqrt(var + eps) and shift = bias - mean * scale are
    computed once per PE over a channel vector repeated so that any tile's rows are a slice.
    An (N, C) input has the channels along the row instead: its scale and shift are [tile_rows,
    C] tiles (the vector repeated per row) applied elementwise."""
    ops = ("batch_norm",)
    loops = False         # a tile's channel vectors start at (first row % C)
    chunked = False

    def accepts(self, op, operands, result, attrs, chip=None) -> bool:
        x = operands[0]
        if x is None or x.rank < 2 or x.numel == 0:
            return False
        if x.rank == 2:
            return _row_fits(x.shape[1] * 4 * 10, chip)
        inner = math.prod(x.shape[2:])
        return inner > 0 and _row_fits(inner * 4 * 2 + 4 * 4 * 2 * x.shape[1], chip)

    def matrix(self, call):
        shape = call.inputs[0].shape
        return (shape[0], shape[1]) if len(shape) == 2 else (shape[0] * shape[1], math.prod(shape[2:]))

    def flops(self, call):
        return 2 * call.inputs[0].nbytes // ISA_ITEMSIZE[call.inputs[0].dtype]

    def _reps(self, call, m) -> int:
        ch = call.inputs[0].shape[1]
        return m if len(call.inputs[0].shape) == 2 else math.ceil((ch - 1 + m) / ch)

    def param_bytes(self, call, m):
        ch = call.inputs[0].shape[1]
        n = self._reps(call, m) * ch
        return 4 * (-(-n * 4 // ALIGN) * ALIGN) * 2 + ALIGN

    def layout(self, call, m):
        lay = super().layout(call, m)
        ch = call.inputs[0].shape[1]
        n = self._reps(call, m) * ch
        stride = -(-n * 4 // ALIGN) * ALIGN
        lay["m"], lay["n"] = m, n
        lay["pvec"] = [lay["param"] + i * stride for i in range(4)]            # weight, bias, mean, var
        lay["pstage"] = [lay["param"] + (4 + i) * stride for i in range(4)]
        return lay

    def params(self, call, lay):
        reps = self._reps(call, lay["m"])
        return [ParamLoad(i, reps, lay["pvec"][i - 1], lay["pstage"][i - 1])
                for i in (1, 2, 3, 4) if call.inputs[i] is not None]

    def setup(self, call, lay, m):
        n = lay["n"]
        w, b, mean, var = lay["pvec"]
        steps = [Simd("scalar", "ADD", (var, var), n, 1, imm=float(call.attrs["eps"])),
                 Simd("unary", "RSQRT", (var, var), n, 1)]                     # var := scale
        if call.inputs[1] is not None:
            steps.append(Simd("binary", "MUL", (var, w, var), n, 1))
        steps += [Simd("binary", "MUL", (mean, var, mean), n, 1),
                  Simd("scalar", "MUL", (mean, mean), n, 1, imm=-1.0)]           # mean := shift
        if call.inputs[2] is not None:
            steps.append(Simd("binary", "ADD", (mean, b, mean), n, 1))
        return steps

    def tile(self, call, lay, slot, m, row0):
        _, c = self.matrix(call)
        x, w = lay["x"][slot], self.work(call, lay, slot)
        if len(call.inputs[0].shape) == 2:
            scale, shift = lay["pvec"][3], lay["pvec"][2]
            return self.widen(call, lay, slot, m) + [
                Simd("binary", "MUL", (w, scale, w), m, c),
                Simd("binary", "ADD", (w, shift, x), m, c, out_dtype=call.output.dtype)]
        off = (row0 % call.inputs[0].shape[1]) * 4
        scale, shift = lay["pvec"][3] + off, lay["pvec"][2] + off
        return self.widen(call, lay, slot, m) + [
            Simd("bcast", "MUL", (w, scale, w), m, c),
            Simd("bcast", "ADD", (w, shift, x), m, c, out_dtype=call.output.dtype)]


register_kernel(NormKernel())
register_kernel(BatchNormKernel())
