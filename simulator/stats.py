"""Statistics of a timed run: utilization per engine, bytes per memory level, energy.

Byte and operation counts come from the program itself (vectorized over the command array),
so they cost nothing per command in the timing loop and are the same for both engines.
"""
from __future__ import annotations

import numpy as np

from simulator.isa import DPE_DTYPES, FLAG_ACCUMULATE, DType, Engine, Op, Space
from simulator.spec import ChipSpec
from simulator.validate import extents



def _sum(x) -> int:
    return int(np.sum(x, dtype=np.int64))


def program_counts(cmds: np.ndarray, chip: ChipSpec) -> dict:
    """Operation and byte counts of a program on a chip."""
    rows, cols = chip.pe_grid.rows, chip.pe_grid.cols
    op = cmds["op"]
    out: dict = {"commands": int(len(cmds)), "dram_read": 0, "dram_write": 0, "sram_read": 0,
                 "sram_write": 0, "host_read": 0, "host_write": 0, "noc_byte_hops": 0, "simd_elems": 0, "reduce_elems": 0,
                 "mlu_bytes": 0, "vector_cycles": 0, "macs": {d: 0 for d in DPE_DTYPES.values()}}
    local = 0
    for idx, space, lo, n, name in extents(cmds):
        if name == "dma destination":
            mcast = (cmds["flags"][idx] >> 1) & 3
            n = n * np.where(mcast == 1, cols, np.where(mcast == 2, rows, 1))
        local += _sum(n[space == Space.LOCAL])
    ops = np.unique(op).tolist()
    sel = {o: np.flatnonzero(op == o) for o in ops}
    if Op.DMA in sel:
        idx = sel[Op.DMA]
        a = cmds["a"][idx]
        nbytes = a[:, 2] * a[:, 3]
        src, dst = cmds["src_space"][idx], cmds["dst_space"][idx]
        for s in (Space.DRAM, Space.SRAM, Space.HOST):
            out[f"{s.name.lower()}_read"] = _sum(nbytes[src == s])
            out[f"{s.name.lower()}_write"] = _sum(nbytes[dst == s])
        # NoC byte-hops: memory <-> PE crosses (row + 1) links; PE <-> PE the Manhattan
        # distance; a multicast adds the links of its row or column once.
        mcast = (cmds["flags"][idx] >> 1) & 3
        pe = cmds["pe"][idx].astype(np.int64)
        peer = cmds["peer"][idx].astype(np.int64)
        d = np.where(peer >= 0, peer, pe)
        src_mem, dst_mem = src != Space.LOCAL, dst != Space.LOCAL
        hops = np.where(src_mem & dst_mem, 0,
                        np.where(src_mem, np.where(mcast == 2, rows, d // cols + 1),
                                 np.where(dst_mem, pe // cols + 1,
                                          np.abs(pe % cols - d % cols) + np.abs(pe // cols - d // cols))))
        hops = hops + np.where(~dst_mem & (mcast == 1), cols - 1, 0) \
            + np.where(~dst_mem & (mcast == 2) & ~src_mem, rows - 1, 0)
        out["noc_byte_hops"] += _sum(nbytes * hops)
    if Op.DPE_MATMUL in sel:
        idx = sel[Op.DPE_MATMUL]
        a = cmds["a"][idx]
        macs = a[:, 3] * a[:, 4] * a[:, 5]
        dt = cmds["dtype"][idx]
        out["macs"] = {d: _sum(macs[dt == i]) for i, d in DPE_DTYPES.items()}
        acc = (cmds["flags"][idx] & FLAG_ACCUMULATE) > 0
        local += _sum(a[acc, 3] * a[acc, 5] * 4)     # C is read back when accumulating
    for o, cols_fn in ((Op.SIMD_UNARY, lambda a: a[:, 2]), (Op.SIMD_SCALAR, lambda a: a[:, 2]),
                       (Op.SIMD_BINARY, lambda a: a[:, 3]),
                       (Op.SIMD_ROW_REDUCE, lambda a: a[:, 2] * a[:, 3]),
                       (Op.SIMD_ROW_BCAST, lambda a: a[:, 3] * a[:, 4]),
                       (Op.SIMD_MX_QUANT, lambda a: 2 * a[:, 2] * a[:, 3])):   # a max pass, a scale pass
        if o in sel:
            out["simd_elems"] += _sum(cols_fn(cmds["a"][sel[o]]))
    for o in (Op.RE_ACC, Op.RE_SEND):
        if o in sel:
            n = _sum(cmds["a"][sel[o]][:, 2])
            out["reduce_elems"] += n
            if o is Op.RE_SEND:
                out["noc_byte_hops"] += 4 * n
    esize = np.array([d.itemsize for d in DType])
    for o in (Op.MLU_TRANSPOSE, Op.MLU_COPY2D, Op.MLU_CONCAT):
        if o in sel:
            a = cmds["a"][sel[o]]
            if o is Op.MLU_TRANSPOSE:
                b = a[:, 2] * a[:, 3] * esize[np.minimum(cmds["dtype"][sel[o]], len(esize) - 1)]
            elif o is Op.MLU_COPY2D:
                b = a[:, 2] * a[:, 3]
            else:
                b = a[:, 3] * (a[:, 4] + a[:, 5])
            out["mlu_bytes"] += _sum(b)
    if Op.VEC_KERNEL in sel:          # a[7]: the call's cycles (simulate sets them)
        out["vector_cycles"] = _sum(cmds["a"][sel[Op.VEC_KERNEL]][:, 7])
    out["local"] = local
    return out


def energy_joules(counts: dict, chip: ChipSpec, seconds: float) -> dict:
    """Energy by component from per-operation and per-byte costs (pJ) plus static power."""
    pj = 1e-12
    e = {
        "dpe": sum(n * (chip.dpe.energy_pj_per_mac.get(d) or 0.0) for d, n in counts["macs"].items()) * pj,
        "simd": counts["simd_elems"] * chip.simd.energy_pj_per_elem * pj,
        "reduce": counts["reduce_elems"] * chip.reduce.energy_pj_per_elem * pj,
        "mlu": counts["mlu_bytes"] * chip.mlu.energy_pj_per_byte * pj,
        "vector": counts["vector_cycles"] * chip.vector_core.energy_pj_per_cycle * pj,
        "local_mem": counts["local"] * chip.local_mem.energy_pj_per_byte * pj,
        "sram": (counts["sram_read"] + counts["sram_write"]) * chip.sram.energy_pj_per_byte * pj,
        "dram": (counts["dram_read"] + counts["dram_write"]) * chip.dram.energy_pj_per_byte * pj,
        "noc": counts["noc_byte_hops"] * chip.noc.energy_pj_per_byte_hop * pj,
        "host_link": (counts["host_read"] + counts["host_write"]) * chip.host_link.energy_pj_per_byte * pj,
        "static": chip.static_power_w * seconds,
    }
    e["total"] = sum(e.values())
    return e


def build_stats(cmds: np.ndarray, chip: ChipSpec, cycles: int, busy: np.ndarray) -> dict:
    """The ``stats`` dict of a SimResult."""
    seconds = cycles / chip.clock_hz
    counts = program_counts(cmds, chip)
    denom = max(cycles, 1)
    util = busy / denom
    macs_total = sum(counts["macs"].values())
    peak = {d: (chip.dpe.macs_per_cycle.get(d) or 0) * chip.num_pes * denom for d in DPE_DTYPES.values()}
    return {
        "cycles": cycles,
        "seconds": seconds,
        "commands": counts["commands"],
        "engine_utilization": {e.name.lower(): float(util[:, e].mean()) for e in Engine},
        "busy_cycles": {e.name.lower(): busy[:, e].tolist() for e in Engine},
        "bytes": {k: counts[k] for k in ("dram_read", "dram_write", "sram_read", "sram_write",
                                          "host_read", "host_write", "local", "noc_byte_hops")},
        "dram_bytes_per_s": (counts["dram_read"] + counts["dram_write"]) / seconds if cycles else 0.0,
        "macs": counts["macs"],
        "mac_utilization": {d: counts["macs"][d] / peak[d] for d in DPE_DTYPES.values() if counts["macs"][d] and peak[d]},
        "achieved_ops_per_s": 2 * macs_total / seconds if cycles else 0.0,
        "energy_j": energy_joules(counts, chip, seconds),
    }
