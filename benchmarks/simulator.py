"""Timing-only throughput of the C++ timing engine and of the Python reference model.

Builds a pipelined tiled-GEMM-like program (DMA load, DPE matmul, SIMD gelu, DMA store per
tile, with sync tokens) on every PE of mtia2i, of at least a million commands, passes it to
C++ as one numpy structured array, and prints commands per second. The Python model is timed
on a prefix of the program (whole iterations on every PE) and its rate extrapolated.

    .venv/bin/python benchmarks/simulator.py [--commands 1200000] [--python-prefix 40000]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from rich.console import Console
from rich.table import Table

from simulator import _core
from simulator.isa import CMD_DTYPE, ChipProgram, Engine, Op, SimdFn, Space
from simulator.simulate import simulate
from simulator.spec import load_chip
from simulator.timing_params import timing_params
from simulator.timing_ref import run_timing_ref


def build_program(chip, n_commands: int) -> ChipProgram:
    """Iteration-major: block i of every PE, then block i + 1, so any prefix of whole blocks
    is itself a valid program. Per PE and tile i: load A_i (waits for matmul i-2 so the
    double buffer is free), store tile i-1, matmul i (waits for load i), gelu i (waits for
    matmul i)."""
    P = chip.num_pes
    iters = -(-n_commands // (4 * P))
    n = iters * 4 * P
    c = np.zeros(n, CMD_DTYPE)
    it = np.repeat(np.arange(iters), 4 * P)
    pe = np.tile(np.repeat(np.arange(P), 4), iters)
    slot = np.tile(np.arange(4), iters * P)
    c["pe"] = pe
    c["peer"] = -1
    c["wait_tok"] = -1
    c["sig_tok"] = -1
    tok_load, tok_mm, tok_simd = 3 * pe, 3 * pe + 1, 3 * pe + 2
    tile = 128 * 128 * 2
    a = c["a"]
    # slot 0: DMA load dram -> local (double-buffered)
    m = slot == 0
    c["op"][m], c["engine"][m] = Op.DMA, Engine.DMA
    c["src_space"][m], c["dst_space"][m] = Space.DRAM, Space.LOCAL
    a[m, 0] = ((pe[m] * 4096 + it[m]) % (1 << 20)) * tile
    a[m, 1] = (it[m] % 2) * tile
    a[m, 2], a[m, 3], a[m, 4], a[m, 5] = 1, tile, tile, tile
    c["sig_tok"][m] = tok_load[m]
    w = m & (it >= 2)
    c["wait_tok"][w], c["wait_cnt"][w] = tok_mm[w], it[w] - 1
    # slot 1: DMA store of the previous tile (a NOP on the first iteration)
    m = slot == 1
    c["engine"][m] = Engine.DMA
    st = m & (it >= 1)
    c["op"][st] = Op.DMA
    c["src_space"][st], c["dst_space"][st] = Space.LOCAL, Space.DRAM
    a[st, 0] = 4 * tile
    a[st, 1] = (1 << 36) + ((pe[st] * 4096 + it[st]) % (1 << 20)) * tile
    a[st, 2], a[st, 3], a[st, 4], a[st, 5] = 1, tile, tile, tile
    c["wait_tok"][st], c["wait_cnt"][st] = tok_simd[st], it[st]
    # slot 2: matmul 128x128x128 bf16
    m = slot == 2
    c["op"][m], c["engine"][m], c["dtype"][m] = Op.DPE_MATMUL, Engine.DPE, 1
    a[m, 0], a[m, 1], a[m, 2] = (it[m] % 2) * tile, 2 * tile, 5 * tile
    a[m, 3], a[m, 4], a[m, 5] = 128, 128, 128
    c["wait_tok"][m], c["wait_cnt"][m], c["sig_tok"][m] = tok_load[m], it[m] + 1, tok_mm[m]
    # slot 3: gelu on the fp32 result, stored as bf16
    m = slot == 3
    c["op"][m], c["engine"][m], c["fn"][m] = Op.SIMD_UNARY, Engine.SIMD, SimdFn.GELU
    c["dtype"][m], c["dtype2"][m] = 0, 1
    a[m, 0], a[m, 1], a[m, 2] = 5 * tile, 4 * tile, 128 * 128
    c["wait_tok"][m], c["wait_cnt"][m], c["sig_tok"][m] = tok_mm[m], it[m] + 1, tok_simd[m]
    return ChipProgram(c, P, "bench-gemm-pipeline")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--commands", type=int, default=1_200_000)
    ap.add_argument("--python-prefix", type=int, default=40_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    chip = load_chip("mtia2i")
    params = timing_params(chip)
    prog = build_program(chip, args.commands)
    n = len(prog)

    # CPU time of this process (time.process_time), best of --repeat: the machine is shared,
    # and wall time would charge other processes' load to the engine.
    def best(fn):
        times = []
        for _ in range(args.repeat):
            t0 = time.process_time()
            out = fn()
            times.append(time.process_time() - t0)
        return min(times), out

    t_cpp, out = best(lambda: _core.run_timing(prog.commands, params, prog.num_pes, False))
    t_cpp_rec, _ = best(lambda: _core.run_timing(prog.commands, params, prog.num_pes, True))
    t_sim, res = best(lambda: simulate(prog, chip, timing_only=True))
    block = 4 * prog.num_pes
    k = max(block, args.python_prefix // block * block)
    prefix = prog.commands[:k]
    t0 = time.process_time()
    ref = run_timing_ref(prefix, params, prog.num_pes)
    t_py = time.process_time() - t0
    pre_cpp = _core.run_timing(np.ascontiguousarray(prefix), params, prog.num_pes, True)
    assert pre_cpp["cycles"] == ref.cycles, "engines disagree on the prefix"
    assert res.cycles == out["cycles"]

    rate_cpp = n / t_cpp
    rate_py = k / t_py
    table = Table(title=f"Timing-only throughput: {n:,} commands on {chip.name} "
                        f"({prog.num_pes} PEs), {out['cycles']:,} simulated cycles")
    for col in ("engine", "commands timed", "CPU seconds", "commands / s", "vs Python"):
        table.add_column(col, justify="right")
    table.add_row("C++ (_core.run_timing, no per-command times)", f"{n:,}", f"{t_cpp:.3f}",
                  f"{rate_cpp:,.0f}", f"{rate_cpp / rate_py:,.0f}x")
    table.add_row("C++ (recording start/end per command)", f"{n:,}", f"{t_cpp_rec:.3f}",
                  f"{n / t_cpp_rec:,.0f}", f"{n / t_cpp_rec / rate_py:,.0f}x")
    table.add_row("simulate(timing_only=True): validate + C++ + stats", f"{n:,}", f"{t_sim:.3f}",
                  f"{n / t_sim:,.0f}", f"{n / t_sim / rate_py:,.0f}x")
    table.add_row("Python reference (timing_ref), prefix, extrapolated", f"{k:,}", f"{t_py:.3f}",
                  f"{rate_py:,.0f}", "1x")
    Console(width=160).print(table)
    print(f"Python rate measured on the first {k:,} commands (whole iterations on all PEs) and "
          f"extrapolated; both engines agree on that prefix: {ref.cycles:,} cycles.")
    print(f"C++ best of {args.repeat} runs. Simulated time {res.seconds * 1e3:.3f} ms; "
          f"DPE utilization {res.stats['engine_utilization']['dpe']:.2%}, "
          f"DRAM {res.stats['dram_bytes_per_s'] / 1e9:.1f} GB/s of {chip.dram_bytes_per_s / 1e9:.1f}.")


if __name__ == "__main__":
    main()
