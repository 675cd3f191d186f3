"""Convolution kernel template for `ember.conv` (1-D and 2-D, grouped, strided, dilated, padded,
optional bias) as an implicit GEMM on the dot-product engine.

Per image n and group g the convolution is a GEMM

    Y[n, g*Og + o, p] = sum_k W[g*Og + o, k] * X_cols[k, p]     k = (c, i, j), p = (oh, ow)

with M = output channels of the group (Og), K = C/groups * kh * kw and N = output pixels. The
weight is the GEMM's A operand as it lies in memory ([O, C/g*kh*kw] row major), and the output
tile [o, p] is a block of the NCHW result, so neither needs a layout change.

Shape of the schedule (one plan):

* Jobs are (image, group, ``mt`` output channels, ``nr`` whole output rows). With ``share``
  1, PE q runs jobs q, q + P, q + 2P, ... and fetches its own weight tiles. With ``share`` R
  (the PE rows), a PE column runs a weight tile on R row tiles at once, one per PE, and each
  PE fetches a block of the tile's rows and multicasts it down the column, so the weights
  cross memory once per column instead of once per PE (a PE past the last row tile only
  fetches and releases its block). Inside a job, K is walked ``cc`` input channels at a
  time through ``nbuf`` alternating local buffers, so the DMA and the memory layout unit (MLU)
  prepare step s + 1 while the DPE multiplies step s.
* Per step the DMA engine loads the weight tile [mt, cc*kh*kw] (or its block of it; one
  strided DMA) and an input slab [cc, rows, W] holding the input rows the job's output rows
  read (one DMA when the slab rows are whole input rows, else one per channel).
* The MLU builds the patch matrix [cc*kh*kw, nr*OW] from the slab with strided 2-D copies,
  one per tap and output row (over channels) or per tap and channel (over output rows),
  whichever is fewer: a tap's output rows are slab rows ``sh`` apart. A horizontal stride
  first splits the slab into its ``sw`` column phases (one strided copy per phase), after
  which a tap's pixels are contiguous again. Zero padding: slab rows above or below the input
  are copied from a zero tile; pixels whose tap falls left or right of the input are never
  written, and stay at the zeros each patch buffer is cleared to before its first use.
  1x1 convolutions with stride 1 and no padding skip the MLU: the slab is the patch matrix.
* The DPE accumulates in fp32 into [mt, nr*OW]; the epilogue on the SIMD engine adds the bias
  per output channel and rounds to the output dtype in place; a strided DMA stores the tile.
  A quantized convolution (int8 or fp8 input and weight, and a fourth operand, the fp32
  dequantization vector d[O]) accumulates in int32 (fp8: fp32); its epilogue widens the
  accumulator to fp32, multiplies output channel o (a row of the tile) by d[o] and adds the
  bias, read in fp32. Both vectors are loaded whole once per PE.
  ``cbufs`` accumulators let the next job's DPE run while the epilogue and store drain.
* Full K steps are emitted as `PEStream.repeat` blocks, so a program grows with the jobs, not
  with C.

This file searches the plans (`ConvTemplate.plans` / `choose`). The parts: `conv_tiles` (the
problem's geometry, a plan's jobs, patch copies and buffers), `conv_cost` (`predict`: the busiest
PE as a software pipeline of the three stages, DMA, MLU and DPE, each step bounded by the slowest
stage and by the buffers' round trip) and `conv_emit` (the per-PE commands); `window_tiles`
holds the output-row tiles and padding fills that pooling shares.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ops.kernel import ISA_DTYPE, KernelCall, KernelTemplate, Placement, local_bytes, register_kernel
from ops.kernels.conv_cost import _dpe_floor, _predict
from ops.kernels.conv_emit import _Emitter
from ops.kernels.conv_tiles import ConvPlan, _Buffers, _geom
from ops.kernels.matmul_cost import _Rates
from ops.kernels.matmul_tiles import _cdiv


class ConvTemplate(KernelTemplate):
    """Implicit GEMM convolution: weight tiles and input slabs by DMA, patches by the MLU, MACs
    on the DPE, dequantization, bias and rounding on the SIMD engine."""
    ops = ("conv",)

    def accepts(self, op: str, operands, result, attrs, chip=None) -> bool:
        x, w = operands[0], operands[1]
        if x is None or w is None or len(x.shape) not in (3, 4):
            return False
        call = KernelCall(op, (_spec(x), _spec(w), None if len(operands) < 3 or operands[2] is None
                               else _spec(operands[2])), _spec(result), dict(attrs))
        geo = _geom(call)
        return _Buffers(geo, ConvPlan(min(8, geo.Og), 1, 1)).total <= local_bytes(chip)

    def flops(self, call: KernelCall) -> int:
        geo = _geom(call)
        return 2 * geo.N * geo.O * geo.OH * geo.OW * geo.Cg * geo.taps

    def plans(self, call: KernelCall, chip: Any) -> Iterator[ConvPlan]:
        geo = _geom(call)
        cap = chip.local_mem.bytes
        ntile = chip.dpe.n_tile

        def options(total, unit, mults):
            out = {min(unit * x, total) for x in mults} | {total}
            out |= {_cdiv(total, d) for d in (2, 4, 8) if total >= d}
            return sorted(x for x in out if 0 < x <= max(unit * max(mults), 1))

        mts = options(geo.Og, 8, (1, 2, 4, 8, 16, 32, 64))
        nrs = sorted({min(geo.OH, r) for r in (1, 2, 4, 8, 16, 32, 64)} | {_cdiv(geo.OH, d) for d in (2, 4, 8)}
                     | {max(1, min(geo.OH, _cdiv(ntile * x, geo.OW))) for x in (1, 2, 4, 8)})
        ccs = sorted({min(geo.Cg, c) for c in (1, 2, 4, 8, 16, 32, 64, 128, 256)} | {geo.Cg})
        for mt in mts:
            for nr in nrs:
                for cc in ccs:
                    for nbuf, cbufs in ((2, 1), (2, 2), (3, 1)):
                        for share in sorted({1, chip.pe_grid.rows}):
                            p = ConvPlan(mt, nr, cc, nbuf, cbufs, share)
                            if _Buffers(geo, p).total <= cap:
                                yield p

    def predict(self, call: KernelCall, plan: ConvPlan, chip: Any) -> int:
        return _predict(call, _geom(call), plan, chip)

    def choose(self, call: KernelCall, chip: Any) -> ConvPlan:
        """The plan with the fewest predicted cycles; plans whose busiest PE's DPE work alone
        cannot beat the best so far are not predicted."""
        geo, rt = _geom(call), _Rates(chip)
        best, best_c = None, float("inf")
        for p in self.plans(call, chip):
            if _dpe_floor(geo, p, chip, rt) < best_c:
                c = _predict(call, geo, p, chip, rt)
                if c < best_c:
                    best, best_c = p, c
        return best if best is not None else super().choose(call, chip)

    def emit(self, call: KernelCall, plan: ConvPlan, chip: Any, builder: Any) -> None:
        _Emitter(call, _geom(call), plan, chip, builder).run()


def _spec(t) -> Placement:
    """A placement of a TensorSpec's shape (and ISA dtype) for `accepts`."""
    return Placement("sram", 0, tuple(t.shape), ISA_DTYPE.get(t.dtype, "fp32"))


register_kernel(ConvTemplate())
