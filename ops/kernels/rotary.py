"""Rotary position embedding on the SIMD engines: the `rotary` op the fuse-rotary pass makes of
`x * cos + rotate_half(x) * sin`, with rotate_half(x) = cat(-x[..., h:], x[..., :h]) along the
last dim (of size 2h), as Llama-style models (and the Hugging Face ones) write it.

Operands: x [..., D], cos and sin (x's shape, or repeating over its leading dims: one table
shared by every head), and a constant sign row [D] = (-1, ..., -1, 1, ..., 1) that the pass adds.

x is taken as flat elements in tiles of whole rows, split over the PEs in whole tiles; when cos
and sin repeat every `period` elements, a tile is sized so that the period divides it or it
divides the period (as the elementwise kernel reads a broadcast operand), so each tile reads
each table with one DMA. Per tile: the DMA engine loads x, cos and sin; the MLU copies x's two
halves of every row into a swapped tile [x2 | x1] (two strided copies); the SIMD engine computes
a = x * cos, b = swapped * sin, b = b * sign, a + b, in fp32 (narrower operands widened first),
rounded to the output dtype by the last command, and the DMA engine stores it. Tiles are
double-buffered: tile t + 1 loads while tile t computes. The sign tile is loaded once per PE.

The numbers are what `rotary` (torch) gives: the same fp32 products and sum, in the same order.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ops.kernel import (
    ISA_ITEMSIZE,
    KernelCall,
    KernelTemplate,
    LocalArena,
    register_kernel,
    streaming_dma_cycles,
)
from ops.kernels.elementwise import broadcast_period, fit_tile, load_repeating
from simulator.isa import Engine

ALIGN = 64
#: Rows per tile the search tries (before fitting them to the tables' period).
TILE_ROWS = (8, 32, 128, 512)


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x * cos + cat(-x2, x1) * sin over the last dim, as the kernel computes it (fp32)."""
    half = x.shape[-1] // 2
    xf = x.float()
    return xf * cos.float() + torch.cat((-xf[..., half:], xf[..., :half]), dim=-1) * sin.float()


def sign_row(d: int) -> list[float]:
    """The constant the kernel multiplies the swapped halves by: -1 for the first half."""
    return [-1.0] * (d // 2) + [1.0] * (d // 2)


@dataclass(frozen=True)
class RotaryPlan:
    pes: int          # PEs that share the rows
    tile_rows: int    # rows per tile


def _table_period(call: KernelCall) -> int | None:
    """Elements after which cos and sin repeat (None: they have x's shape)."""
    return broadcast_period(call.inputs[1].shape, call.output.shape)


class RotaryKernel(KernelTemplate):
    ops = ("rotary",)

    def accepts(self, op, operands, result, attrs, chip=None) -> bool:
        if len(operands) != 4 or any(o is None or not o.is_float for o in operands):
            return False
        x, cos, sin, sign = operands
        d = x.shape[-1] if x.rank else 0
        if d < 2 or d % 2 or cos.shape != sin.shape or tuple(sign.shape) != (d,):
            return False
        period = broadcast_period(cos.shape, x.shape)
        return cos.shape == x.shape or (period is not None and period % d == 0)

    @staticmethod
    def _rows(call: KernelCall) -> tuple[int, int]:
        d = call.output.shape[-1]
        return math.prod(call.output.shape) // d, d

    def _layout(self, call: KernelCall, m: int) -> dict:
        """Local memory for tiles of m rows: double-buffered operands, swapped copies and
        results; fp32 scratch; the sign tile."""
        _, d = self._rows(call)
        n = m * d
        arena = LocalArena(ALIGN)
        x, cos, sin, _ = call.inputs
        lay = {name: [arena.take(n * ISA_ITEMSIZE[p.dtype]) for _ in range(2)]
               for name, p in (("x", x), ("sw", x), ("cos", cos), ("sin", sin))}
        lay["out"] = [arena.take(n * ISA_ITEMSIZE[call.output.dtype]) for _ in range(2)]
        lay["a"], lay["b"], lay["sign"] = arena.take(n * 4), arena.take(n * 4), arena.take(n * 4)
        lay["wide"] = {name: arena.take(n * 4) for name, p in (("x", x), ("sw", x), ("cos", cos), ("sin", sin))
                       if p.dtype != "fp32"}
        lay["end"] = arena.end
        return lay

    def plans(self, call: KernelCall, chip):
        rows, d = self._rows(call)
        period = _table_period(call)
        seen = set()
        for m in TILE_ROWS:
            m = min(m, rows)
            if period is not None:
                m = fit_tile(m, period // d)
            if m in seen or self._layout(call, m)["end"] > chip.local_mem.bytes:
                continue
            seen.add(m)
            yield RotaryPlan(max(1, min(chip.num_pes, math.ceil(rows / m))), m)

    @staticmethod
    def _per_pe(plan: RotaryPlan, rows: int) -> int:
        """Rows per PE: an even share in whole tiles."""
        return min(rows, math.ceil(math.ceil(rows / plan.pes) / plan.tile_rows) * plan.tile_rows)

    @staticmethod
    def _simd(call: KernelCall, n: int) -> list[tuple[str, int]]:
        """The SIMD commands of a tile of n elements: (kind, elements)."""
        widen = [("COPY", n) for p in (call.inputs[0], call.inputs[0], *call.inputs[1:3]) if p.dtype != "fp32"]
        return widen + [("MUL", n)] * 3 + [("ADD", n)]

    def predict(self, call: KernelCall, plan: RotaryPlan, chip) -> int:
        """Pipelined tiles on one PE, as the row-wise kernels: the sign tile and the first loads,
        then per tile the slower of its compute (the MLU swap of the next tile overlaps the SIMD
        work) and its loads + store, then the last swap, compute and store; never faster than
        the bytes all PEs move through the shared memory."""
        rows, d = self._rows(call)
        per_pe = self._per_pe(plan, rows)
        tiles = math.ceil(per_pe / plan.tile_rows)
        n = min(plan.tile_rows, per_pe) * d
        w, lat = chip.simd.elems_per_cycle, chip.simd.latency_cycles
        simd = sum(math.ceil(k / w) + lat for _, k in self._simd(call, n))
        mlu = 2 * (math.ceil(n * ISA_ITEMSIZE[call.inputs[0].dtype] / 2 / chip.mlu.bytes_per_cycle)
                   + chip.mlu.latency_cycles)
        x, cos, _, sign = call.inputs
        out = call.output
        pes = min(plan.pes, math.ceil(rows / per_pe))
        load = (streaming_dma_cycles(n * ISA_ITEMSIZE[x.dtype], x.space, pes, chip)
                + 2 * streaming_dma_cycles(n * ISA_ITEMSIZE[cos.dtype], cos.space, pes, chip))
        store = streaming_dma_cycles(n * ISA_ITEMSIZE[out.dtype], out.space, pes, chip)
        first = streaming_dma_cycles(n * 4, sign.space, pes, chip)
        chain = first + load + (tiles - 1) * max(simd, mlu, load + store) + mlu + simd + store
        moved = {"dram": 0.0, "sram": 0.0}
        for p in (x, cos, call.inputs[2], out):      # tables read once per element of x
            moved[p.space] += rows * d * ISA_ITEMSIZE[p.dtype]
        clk = chip.clock_hz
        streams = max(moved["dram"] * clk / chip.dram_bytes_per_s, moved["sram"] * clk / chip.sram.bytes_per_s)
        return int(max(chain, streams + simd + mlu))

    def flops(self, call: KernelCall) -> int:
        return 4 * math.prod(call.output.shape)

    def emit(self, call: KernelCall, plan: RotaryPlan, chip, builder) -> None:
        rows, d = self._rows(call)
        h = d // 2
        per_pe = self._per_pe(plan, rows)
        lay = self._layout(call, plan.tile_rows)
        x, cos, sin, sign = call.inputs
        out = call.output
        xi, oi = ISA_ITEMSIZE[x.dtype], ISA_ITEMSIZE[out.dtype]
        if sign.dtype != "fp32":
            raise ValueError(f"ember.rotary: the sign row must be fp32, not {sign.dtype}")
        period = _table_period(call)
        m = plan.tile_rows
        for p in range(plan.pes):
            start, end = p * per_pe, min(rows, (p + 1) * per_pe)
            if start >= end:
                continue
            pe = builder.pe(p)
            loaded, swapped, computed, stored, ready = (builder.token() for _ in range(5))
            pe.dma(sign.space, sign.addr, "local", lay["sign"], rows=min(m, end - start), row_bytes=d * 4,
                   src_stride=0, signal=ready)
            tiles = [(s, min(m, end - s)) for s in range(start, end, m)]

            def load(t: int) -> None:
                s, k = tiles[t]
                for name, src, rep in (("x", x, None), ("cos", cos, period), ("sin", sin, period)):
                    load_repeating(pe, src, rep, m * d, s * d, k * d, lay[name][t % 2], loaded)

            load(0)
            for t, (s, k) in enumerate(tiles):
                if t + 1 < len(tiles):
                    load(t + 1)
                slot, n = t % 2, k * d
                # the MLU: [x1 | x2] -> [x2 | x1], row by row, once the swapped slot is free
                if t >= 2:
                    pe.nop(Engine.MLU, wait=(computed, t - 1))
                row = d * xi
                pe.mlu_copy2d(lay["x"][slot] + h * xi, lay["sw"][slot], k, h * xi, src_stride=row, dst_stride=row,
                              wait=(loaded, 3 * (t + 1)))
                pe.mlu_copy2d(lay["x"][slot], lay["sw"][slot] + h * xi, k, h * xi, src_stride=row, dst_stride=row,
                              signal=swapped)
                # the SIMD engine
                if t == 0:
                    pe.nop(Engine.SIMD, wait=(ready, 1))
                if t >= 2:
                    pe.nop(Engine.SIMD, wait=(stored, t - 1))
                src = {}
                wait = (loaded, 3 * (t + 1))
                for name, p_ in (("x", x), ("cos", cos), ("sin", sin)):
                    src[name] = lay[name][slot]
                    if p_.dtype != "fp32":
                        pe.simd_unary("COPY", src[name], lay["wide"][name], n, dtype=p_.dtype, out_dtype="fp32",
                                      wait=wait)
                        src[name], wait = lay["wide"][name], None
                pe.simd_binary("MUL", src["x"], src["cos"], lay["a"], n, wait=wait)
                src["sw"] = lay["sw"][slot]
                wait = (swapped, t + 1)
                if x.dtype != "fp32":
                    pe.simd_unary("COPY", src["sw"], lay["wide"]["sw"], n, dtype=x.dtype, out_dtype="fp32",
                                  wait=wait)
                    src["sw"], wait = lay["wide"]["sw"], None
                pe.simd_binary("MUL", src["sw"], src["sin"], lay["b"], n, wait=wait)
                pe.simd_binary("MUL", lay["b"], lay["sign"], lay["b"], n)
                pe.simd_binary("ADD", lay["a"], lay["b"], lay["out"][slot], n, out_dtype=out.dtype,
                               signal=computed)
                pe.dma("local", lay["out"][slot], out.space, out.addr + s * d * oi, nbytes=n * oi,
                       wait=(computed, t + 1), signal=stored)


register_kernel(RotaryKernel())
