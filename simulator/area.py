"""Die area and power estimates of a chip, from the coefficients of its file's `area` section and
its energy costs: what a design-space sweep divides by (perf per mm², per watt).

    area_breakdown(chip)   mm² per block: MACs, SRAM, local memories, PE logic, NoC, DRAM and
                           host PHYs, fixed blocks; `total` divides their sum by the utilization
    peak_power_w(chip)     every engine and memory busy at its peak rate at once, plus static
                           power: a bound on what any run draws (a run's own average power is
                           its energy over its time, `RunResult.stats["energy_j"]`)
"""
from __future__ import annotations

from typing import Any

MIB = 1 << 20


def area_breakdown(chip: Any) -> dict[str, float]:
    a = chip.area
    pes = chip.num_pes
    link_bytes_per_cycle = chip.noc.link_bytes_per_s / chip.clock_hz
    blocks = {
        "macs": pes * chip.dpe.macs_per_cycle["bf16"] * a.mac_mm2,
        "sram": chip.sram.bytes / MIB * a.sram_mm2_per_mib,
        "local_mem": pes * chip.local_mem.bytes / MIB * a.local_mem_mm2_per_mib,
        "pe_logic": pes * a.pe_logic_mm2,
        "noc": pes * link_bytes_per_cycle * a.noc_mm2_per_link_byte,
        "dram_phy": chip.dram.bytes_per_s / 1e9 * a.dram_phy_mm2_per_gb_s,
        "host_phy": chip.host_link.bytes_per_s / 1e9 * a.host_phy_mm2_per_gb_s,
        "fixed": a.fixed_mm2,
    }
    blocks["total"] = sum(blocks.values()) / a.utilization
    return blocks


def peak_power_w(chip: Any, dtype: str = "bf16") -> dict[str, float]:
    """Watts by component with every engine at its peak rate in `dtype` (the DPE's operands and
    results moving through local memory at its full bandwidth, SRAM and DRAM streaming at
    theirs), plus static power."""
    pj, hz, pes = 1e-12, chip.clock_hz, chip.num_pes
    watts = {
        "dpe": pes * chip.dpe.macs_per_cycle[dtype] * chip.dpe.energy_pj_per_mac[dtype] * hz * pj,
        "simd": pes * chip.simd.elems_per_cycle * chip.simd.energy_pj_per_elem * hz * pj,
        "local_mem": pes * chip.local_mem.bytes_per_s * chip.local_mem.energy_pj_per_byte * pj,
        "sram": chip.sram.bytes_per_s * chip.sram.energy_pj_per_byte * pj,
        "dram": chip.dram.bytes_per_s * chip.dram.energy_pj_per_byte * pj,
        "static": chip.static_power_w,
    }
    watts["total"] = sum(watts.values())
    return watts
