"""The integer numbers both timing engines (C++ and the Python reference) read from a chip.

Bandwidths become exact rationals of bytes per cycle, ``num / den``: a transfer of ``b`` bytes
occupies a server for ``ceil(b * den / num)`` cycles. Integer arithmetic keeps the two engines
bit-identical.
"""
from __future__ import annotations

from math import gcd

from simulator.isa import DPE_DTYPES, DType
from simulator.spec import ChipSpec, DpeModel

DPE_MODEL_CODE = {DpeModel.cached_stream: 0, DpeModel.systolic_os: 1, DpeModel.systolic_ws: 2}


def _rational(bytes_per_s: float, clock_hz: float, servers: int = 1) -> tuple[int, int]:
    """Bytes per cycle of one server, as (num, den) in lowest terms."""
    num, den = int(bytes_per_s), int(clock_hz) * servers
    g = gcd(num, den)
    return num // g, den // g


def timing_params(chip: ChipSpec) -> dict[str, int]:
    """Flat dict of ints; the C++ engine reads the same keys."""
    clk = chip.clock_hz
    p: dict[str, int] = {
        "pe_rows": chip.pe_grid.rows, "pe_cols": chip.pe_grid.cols,
        "dma_latency": chip.dma.latency_cycles, "hop_latency": chip.noc.hop_latency_cycles,
        "dram_channels": chip.dram.channels, "dram_interleave": chip.dram.interleave_bytes,
        "sram_banks": chip.sram.banks, "sram_interleave": chip.sram.interleave_bytes,
        "dpe_model": DPE_MODEL_CODE[chip.dpe.model], "dpe_n_tile": chip.dpe.n_tile,
        "dpe_rows": chip.dpe.array_rows, "dpe_cols": chip.dpe.array_cols,
        "dpe_overhead": chip.dpe.pass_overhead_cycles,
        "simd_width": chip.simd.elems_per_cycle, "simd_lut": chip.simd.lut_cycles,
        "simd_latency": chip.simd.latency_cycles,
        "mlu_bpc": chip.mlu.bytes_per_cycle, "mlu_latency": chip.mlu.latency_cycles,
        "re_width": chip.reduce.elems_per_cycle, "re_latency": chip.reduce.latency_cycles,
    }
    for dt in DType:        # per ISA dtype; 0 where the DPE does not multiply it (int32, or the chip lacks it)
        name = DPE_DTYPES.get(dt)
        p[f"macs_{int(dt)}"] = int(chip.dpe.macs_per_cycle.get(name) or 0) if name else 0
    p["dram_num"], p["dram_den"] = _rational(chip.dram.bytes_per_s, clk, chip.dram.channels)
    p["sram_num"], p["sram_den"] = _rational(chip.sram.bytes_per_s, clk, chip.sram.banks)
    p["local_num"], p["local_den"] = _rational(chip.local_mem.bytes_per_s, clk)
    p["link_num"], p["link_den"] = _rational(chip.noc.link_bytes_per_s, clk)
    p["host_num"], p["host_den"] = _rational(chip.host_link.bytes_per_s, clk)
    return p
