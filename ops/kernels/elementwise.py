"""Elementwise kernels (`ember.unary`, `ember.binary` on equal shapes, and the `quantize` step the
dtype pass inserts before an int8 GEMM) on the SIMD engines.

The flat elements are split evenly over the PEs. Each PE streams its range through local memory
in tiles, double-buffered: the DMA engine loads tile t+1 while the SIMD engine computes tile t,
and stores tile t-1. The DMA queue runs in order (in, in, out, in, out, ...), so a buffer is only
reloaded after the store that read it; a NOP on the SIMD queue keeps an output buffer from
being overwritten before its store has finished.

Each operand is read in its own dtype and the result written in its own (the SIMD engine computes
in fp32 and rounds, or for `quantize` rounds and saturates to int8). A binary op whose operands
differ in dtype first widens the narrower ones to fp32 in a scratch tile.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ops.kernel import ISA_ITEMSIZE, KernelCall, KernelTemplate, register_kernel
from simulator.isa import Engine

#: `ember.unary` kinds the SIMD engine computes exactly as the reference does.
UNARY_FN = {"relu": "RELU", "exp": "EXP", "silu": "SILU", "tanh": "TANH", "sigmoid": "SIGMOID",
            "reciprocal": "RECIP", "rsqrt": "RSQRT", "gelu_tanh": "GELU", "gelu": "GELU_ERF",
            "sin": "SIN", "cos": "COS"}
#: `ember.unary` kinds that are a multiply by an immediate.
UNARY_SCALE = {"neg": -1.0}
BINARY_FN = {"add": "ADD", "sub": "SUB", "mul": "MUL", "div": "DIV", "max": "MAX", "min": "MIN"}
TILE_CHOICES = (256, 1024, 4096, 16384)


@dataclass(frozen=True)
class ElementwisePlan:
    pes: int          # PEs that share the elements
    tile: int         # elements per tile


def _widened(call: KernelCall) -> list[int]:
    """Operands of a binary op that are widened to fp32 first (their dtypes differ)."""
    if call.op != "binary" or len({p.dtype for p in call.inputs}) == 1:
        return []
    return [i for i, p in enumerate(call.inputs) if p.dtype != "fp32"]


class ElementwiseKernel(KernelTemplate):
    ops = ("unary", "binary", "quantize")

    def accepts(self, op: str, operands, result, attrs) -> bool:
        if op == "quantize":
            return True
        if op == "unary":
            return attrs["kind"] in UNARY_FN or attrs["kind"] in UNARY_SCALE
        return attrs["kind"] in BINARY_FN and all(o.shape == result.shape for o in operands)

    def _sizes(self, call: KernelCall) -> tuple[int, int, int]:
        n = max(1, math.prod(call.output.shape))
        return n, len(call.inputs), ISA_ITEMSIZE[call.output.dtype]

    def _tile_bytes(self, call: KernelCall, tile: int) -> int:
        """Local memory of one plan: double-buffered operand and result tiles, fp32 scratch."""
        items = [ISA_ITEMSIZE[p.dtype] for p in call.inputs] + [ISA_ITEMSIZE[call.output.dtype]]
        return 2 * tile * sum(items) + 4 * tile * len(_widened(call))

    def plans(self, call: KernelCall, chip):
        n, _, _ = self._sizes(call)
        for tile in TILE_CHOICES:
            if self._tile_bytes(call, tile) > chip.local_mem.bytes:
                continue
            pes = max(1, min(chip.num_pes, math.ceil(n / tile)))
            yield ElementwisePlan(pes, tile)

    def predict(self, call: KernelCall, plan: ElementwisePlan, chip) -> int:
        n, k, _ = self._sizes(call)
        per_pe = math.ceil(n / plan.pes)
        tiles = math.ceil(per_pe / plan.tile)
        vec = math.ceil(plan.tile / chip.simd.elems_per_cycle)
        simd = vec * (chip.simd.lut_cycles if call.op == "unary" else 1) + vec * len(_widened(call))
        bw = {"dram": chip.dram_bytes_per_s, "sram": chip.sram.bytes_per_s}
        # every PE's tiles share the memory's bandwidth; each DMA also pays its latency
        nbytes = sum(p.nbytes for p in call.inputs) + call.output.nbytes
        moved = nbytes / bw[call.output.space] * chip.clock_hz
        dma = tiles * (k + 1) * chip.dma.latency_cycles + moved
        return int(max(dma, tiles * simd) + simd + chip.dma.latency_cycles)

    def flops(self, call: KernelCall) -> int:
        return self._sizes(call)[0]

    def emit(self, call: KernelCall, plan: ElementwisePlan, chip, builder) -> None:
        n, k, item = self._sizes(call)
        per_pe = math.ceil(n / plan.pes)
        items = [ISA_ITEMSIZE[p.dtype] for p in call.inputs]
        offset = 0
        in_buf = []
        for it in items:
            in_buf.append([offset, offset + plan.tile * it])
            offset += 2 * plan.tile * it
        out_buf = [offset, offset + plan.tile * item]
        offset += 2 * plan.tile * item
        wide = {}
        for i in _widened(call):
            wide[i] = offset
            offset += 4 * plan.tile
        kind = call.attrs.get("kind")
        dt = call.output.dtype
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
                    pe.dma(src.space, src.addr + s * items[i], "local", in_buf[i][t % 2], nbytes=m * items[i],
                           signal=loaded)

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
                wait = (loaded, (t + 1) * k)
                src = [buf[t % 2] for buf in in_buf]
                in_dt = call.inputs[0].dtype
                if call.op == "binary":
                    for i, addr in wide.items():
                        pe.simd_unary("COPY", src[i], addr, m, dtype=call.inputs[i].dtype, out_dtype="fp32",
                                      wait=wait)
                        src[i], wait, in_dt = addr, None, "fp32"
                    pe.simd_binary(BINARY_FN[kind], src[0], src[1], out_buf[t % 2], m,
                                   dtype=in_dt, out_dtype=dt, wait=wait, signal=computed)
                elif call.op == "quantize":      # x * (1 / scale), rounded and saturated to int8
                    pe.simd_scalar("MUL", src[0], out_buf[t % 2], m, float(call.attrs["scale"]),
                                   dtype=in_dt, out_dtype=dt, wait=wait, signal=computed)
                elif kind in UNARY_SCALE:
                    pe.simd_scalar("MUL", src[0], out_buf[t % 2], m, UNARY_SCALE[kind],
                                   dtype=in_dt, out_dtype=dt, wait=wait, signal=computed)
                else:
                    pe.simd_unary(UNARY_FN[kind], src[0], out_buf[t % 2], m,
                                  dtype=in_dt, out_dtype=dt, wait=wait, signal=computed)
                store(t)


register_kernel(ElementwiseKernel())
