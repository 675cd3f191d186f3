"""Elementwise kernels (`ember.unary`, `ember.binary` on equal shapes) on the SIMD engines.

The flat elements are split evenly over the PEs. Each PE streams its range through local memory
in tiles, double-buffered: the DMA engine loads tile t+1 while the SIMD engine computes tile t,
and stores tile t-1. The DMA queue runs in order (in, in, out, in, out, ...), so a buffer is only
reloaded after the store that read it; a NOP on the SIMD queue keeps an output buffer from
being overwritten before its store has finished.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ops.kernel import ISA_ITEMSIZE, KernelCall, KernelTemplate, register_kernel
from simulator.isa import Engine

#: `ember.unary` kinds the SIMD engine computes exactly as the reference does.
UNARY_FN = {"relu": "RELU", "exp": "EXP", "silu": "SILU", "tanh": "TANH", "sigmoid": "SIGMOID",
            "reciprocal": "RECIP", "rsqrt": "RSQRT", "gelu_tanh": "GELU"}
#: `ember.unary` kinds that are a multiply by an immediate.
UNARY_SCALE = {"neg": -1.0}
BINARY_FN = {"add": "ADD", "sub": "SUB", "mul": "MUL", "div": "DIV", "max": "MAX", "min": "MIN"}
TILE_CHOICES = (256, 1024, 4096, 16384)


@dataclass(frozen=True)
class ElementwisePlan:
    pes: int          # PEs that share the elements
    tile: int         # elements per tile


class ElementwiseKernel(KernelTemplate):
    ops = ("unary", "binary")

    def accepts(self, op: str, operands, result, attrs) -> bool:
        if op == "unary":
            return attrs["kind"] in UNARY_FN or attrs["kind"] in UNARY_SCALE
        return attrs["kind"] in BINARY_FN and all(o.shape == result.shape for o in operands)

    def _sizes(self, call: KernelCall) -> tuple[int, int, int]:
        n = max(1, math.prod(call.output.shape))
        return n, len(call.inputs), ISA_ITEMSIZE[call.output.dtype]

    def plans(self, call: KernelCall, chip):
        n, k, item = self._sizes(call)
        for tile in TILE_CHOICES:
            if 2 * (k + 1) * tile * max(item, 4) > chip.local_mem.bytes:
                continue
            pes = max(1, min(chip.num_pes, math.ceil(n / tile)))
            yield ElementwisePlan(pes, tile)

    def predict(self, call: KernelCall, plan: ElementwisePlan, chip) -> int:
        n, k, item = self._sizes(call)
        per_pe = math.ceil(n / plan.pes)
        tiles = math.ceil(per_pe / plan.tile)
        simd = math.ceil(plan.tile / chip.simd.elems_per_cycle) * (chip.simd.lut_cycles if call.op == "unary" else 1)
        bw = {"dram": chip.dram_bytes_per_s, "sram": chip.sram.bytes_per_s}
        # every PE's tiles share the memory's bandwidth; each DMA also pays its latency
        moved = (k + 1) * n * item / bw[call.output.space] * chip.clock_hz
        dma = tiles * (k + 1) * chip.dma.latency_cycles + moved
        return int(max(dma, tiles * simd) + simd + chip.dma.latency_cycles)

    def flops(self, call: KernelCall) -> int:
        return self._sizes(call)[0]

    def emit(self, call: KernelCall, plan: ElementwisePlan, chip, builder) -> None:
        n, k, item = self._sizes(call)
        per_pe = math.ceil(n / plan.pes)
        tb = plan.tile * item
        in_buf = [[(2 * i + b) * tb for b in range(2)] for i in range(k)]
        out_buf = [(2 * k + b) * tb for b in range(2)]
        kind = call.attrs["kind"]
        for p in range(plan.pes):
            start, end = p * per_pe, min(n, (p + 1) * per_pe)
            if start >= end:
                continue
            pe = builder.pe(p)
            loaded, computed, stored = builder.token(), builder.token(), builder.token()
            tiles = [(s, min(plan.tile, end - s)) for s in range(start, end, plan.tile)]

            def load(t: int) -> None:
                s, m = tiles[t]
                for i, src in enumerate(call.inputs):
                    pe.dma(src.space, src.addr + s * item, "local", in_buf[i][t % 2], nbytes=m * item, signal=loaded)

            def store(t: int) -> None:
                s, m = tiles[t]
                pe.dma("local", out_buf[t % 2], call.output.space, call.output.addr + s * item, nbytes=m * item,
                       wait=(computed, t + 1), signal=stored)

            load(0)
            for t, (s, m) in enumerate(tiles):
                if t + 1 < len(tiles):
                    load(t + 1)
                if t >= 2:
                    pe.nop(Engine.SIMD, wait=(stored, t - 1))
                dt = call.output.dtype
                wait = (loaded, (t + 1) * k)
                if call.op == "binary":
                    pe.simd_binary(BINARY_FN[kind], in_buf[0][t % 2], in_buf[1][t % 2], out_buf[t % 2], m,
                                   dtype=dt, out_dtype=dt, wait=wait, signal=computed)
                elif kind in UNARY_SCALE:
                    pe.simd_scalar("MUL", in_buf[0][t % 2], out_buf[t % 2], m, UNARY_SCALE[kind],
                                   dtype=dt, out_dtype=dt, wait=wait, signal=computed)
                else:
                    pe.simd_unary(UNARY_FN[kind], in_buf[0][t % 2], out_buf[t % 2], m,
                                  dtype=dt, out_dtype=dt, wait=wait, signal=computed)
                store(t)


register_kernel(ElementwiseKernel())
