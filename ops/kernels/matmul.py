"""GEMM kernel template for `ember.matmul` and `ember.linear` on the dot-product engine.

Shape of the schedule (one plan):

* The output of each batch element is cut into ``mt x nt`` tiles. Every PE gets the same
  number of jobs (tiles); PE (r, c) owns M-tile positions ``mpos, mpos + pm, ...`` and N-tile
  positions ``npos, npos + pn, ...``. Two layouts: ``rows`` (PE rows split into ``pm`` groups
  along M; the PEs of one row share their M tiles) and ``cols`` (PE columns split into ``pn``
  groups along N; the PEs of one column share their N tiles). ``rows`` with ``pm`` = PE rows
  is the 2D grid: A multicast along PE rows, B down PE columns.
* An operand tile that a whole PE row (A) or column (B) needs is fetched once by one PE of
  that row/column with a multicast DMA; otherwise each PE fetches its own tiles.
* Inside a job, K is walked in ``kt`` steps through ``nbuf`` alternating local buffers: the
  DMA for step s + nbuf overlaps the DPE on step s. Sync tokens: "full" (DMA -> consumers),
  "free" (every consumer -> the fetching PE, per buffer slot).
* linear's weight W[N, K] arrives as W-tiles [nt, kt] and the MLU transposes each into the
  DPE's [kt, nt] operand layout.
* Epilogue in place on the fp32/int32 accumulator: bias add (SIMD, or the reduction engine for
  int32), rounding to the output dtype, then a strided DMA of the tile to the output. The bias
  is read in its own dtype; it and the dequantization vector (the "column params") are loaded
  after the first job's first ``nbuf`` fetches, which the DPE waits for, and replicated over the
  rows the epilogue adds per command by reading them that many times from memory or by a local
  copy, whichever the chip's rates make sooner. A quantized GEMM (int8 operands and a fourth
  operand, the fp32 dequantization vector d[N]) instead widens the int32 accumulator to fp32,
  multiplies each column n by d[n], and adds the bias in fp32. When the activation was quantized
  per row, a fifth operand s[M] (fp32, loaded per job like a residual tile) first scales row m by
  s[m].
  ``cbufs`` accumulators let the next job's DPE run while the epilogue and store drain.
* A fused elementwise epilogue (attribute ``epilogue``, set by the fuse-epilogues pass) runs
  after that, still in fp32 on the accumulator: unary SIMD functions, scales, and binary ops with
  a result-shaped operand (a residual) whose tile the PE's DMA queue loads like the bias (and
  widens to fp32 when it is narrower). Only the last step rounds to the output dtype.
* K loops are emitted as `PEStream.repeat` blocks (``nbuf`` steps per iteration), so a
  program grows with the number of jobs, not with K.

This file searches the plans (`MatmulTemplate.plans` / `choose`). The parts:
`matmul_tiles` (the problem, a plan's layout over the grid, its buffers), `matmul_cost`
(`predict`: a software-pipeline model of the busiest PE, with the DMA queue, memory channels and
NoC edges its fetches share, plus fill and drain) and `matmul_emit` (the per-PE commands).
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from ops.kernel import KernelCall, KernelTemplate, register_kernel
from ops.kernels.elementwise import tile_epilogue
from ops.kernels.matmul_cost import _Rates, _predict
from ops.kernels.matmul_emit import _Emitter
from ops.kernels.matmul_tiles import MX_BLOCK, MatmulPlan, _Buffers, _cdiv, _gemm


class MatmulTemplate(KernelTemplate):
    """Tiled GEMM on the DPE: multicast operand sharing, double-buffered K loop, fused bias."""
    ops = ("matmul", "linear")

    def flops(self, call: KernelCall) -> int:
        g = _gemm(call)
        return 2 * g.batch * g.M * g.K * g.N + len(g.epilogue) * g.batch * g.M * g.N

    def accepts_epilogue(self, op: str, operands: list[Any], result: Any, step: tuple,
                         other: Any = None, attrs: Any = None) -> bool:
        """Whether the epilogue can apply `step` (an `epilogue` entry: ("unary", kind, alpha,
        beta) or ("binary", kind, position, side)) to each output tile of this instance
        (operand/result TensorSpecs; `other`: a binary step's other operand). The epilogue
        computes in fp32, so an int32 accumulator must be dequantized first (operand 3); an MX
        GEMM (its operands rows of bytes, "ui8") accumulates in fp32."""
        if tile_epilogue(step[0], step[1]) is None:
            return False
        x = operands[0]
        if (x is not None and not x.is_float and x.dtype != "ui8"
                and not (len(operands) > 3 and operands[3] is not None)):
            return False
        if step[0] == "binary":
            return other is not None and other.is_float and tuple(other.shape) == tuple(result.shape)
        return True

    def plans(self, call: KernelCall, chip: Any) -> Iterator[MatmulPlan]:
        g = _gemm(call)
        R, C = chip.pe_grid.rows, chip.pe_grid.cols
        ntile = chip.dpe.n_tile
        ktile = int(chip.dpe.macs_per_cycle[g.dtype]) // ntile
        if g.mx:            # an MX K step is whole 32-element blocks
            ktile = _cdiv(ktile, MX_BLOCK) * MX_BLOCK
        cap = chip.local_mem.bytes
        layouts = [("rows", d) for d in range(1, R + 1) if R % d == 0]
        layouts += [("cols", d) for d in range(1, C) if C % d == 0]
        if g.batch > 1:
            layouts.append(("tiles", 1))

        def sizes(total, unit, mults, parts=(1, 2, 4, 8)):
            out = {min(unit * x, total) for x in mults}
            out |= {min(_cdiv(_cdiv(total, d), unit) * unit, total) for d in parts}
            return sorted(x for x in out if 0 < x <= unit * max(mults))

        mts = sizes(g.M, 8, (2, 4, 8, 16, 32, 64))
        nts = sizes(g.N, ntile, (1, 2, 4, 8, 16))
        kts = sizes(g.K, ktile, (1, 2, 4, 8, 16, 32), parts=())
        for lay in layouts:
            for mt in mts:
                for nt in nts:
                    for kt in kts:
                        for nbuf, cbufs in ((2, 1), (2, 2), (3, 1), (3, 2)):
                            p = MatmulPlan(lay[0], lay[1], mt, nt, kt, nbuf, cbufs)
                            if _Buffers(g, p).total <= cap:
                                yield p

    def predict(self, call: KernelCall, plan: MatmulPlan, chip: Any) -> int:
        return _predict(call, _gemm(call), plan, chip)

    def choose(self, call: KernelCall, chip: Any) -> MatmulPlan:
        g = _gemm(call)
        rt = _Rates(chip)
        memo: dict = {}
        best, best_c = None, math.inf
        for p in self.plans(call, chip):
            c = _predict(call, g, p, chip, rt, memo, best_c)
            if c < best_c:
                best, best_c = p, c
        if best is None:
            return super().choose(call, chip)
        return best

    def emit(self, call: KernelCall, plan: MatmulPlan, chip: Any, builder: Any) -> None:
        g = _gemm(call)
        _Emitter(call, g, plan, chip, builder).run()


register_kernel(MatmulTemplate())
