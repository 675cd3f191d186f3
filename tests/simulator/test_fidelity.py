"""Fidelity: systolic DPE cycle counts match SCALE-Sim's analytical model, checked against a
cycle-stepped systolic array written here; DMA-bound transfers reach the modelled bandwidth
and never exceed it.

SCALE-Sim (Samajdar et al., "SCALE-Sim: Systolic CNN Accelerator Simulator", and its
systolic_compute_os / _ws): one fold on an R x C array takes 2R + C + T - 2 cycles, where
T is the temporal dimension; partial folds are padded to the full array.
  output stationary: M on rows, N on columns, T = K;  folds = ceil(M/R) * ceil(N/C)
  weight stationary: K on rows, N on columns, T = M;  folds = ceil(K/R) * ceil(N/C)
"""
import math

import numpy as np
import pytest

from simulator import ProgramBuilder, load_chip, simulate

SHAPES = [(64, 64, 64), (100, 30, 70), (128, 256, 64), (32, 512, 96), (7, 5, 3), (200, 64, 130)]
ARRAYS = [(32, 32), (16, 8), (8, 16)]


def stepped_os(A, B, R, C):
    """Output stationary, one cycle at a time: PE (i, j) does MAC k at cycle k + i + j (skewed
    operands), then the R rows of outputs drain out one per cycle. Returns (C, cycles)."""
    M, K = A.shape
    N = B.shape[1]
    out = np.zeros((M, N))
    cycles = 0
    ii, jj = np.meshgrid(np.arange(R), np.arange(C), indexing="ij")
    for m0 in range(0, M, R):
        for n0 in range(0, N, C):
            acc = np.zeros((R, C))
            Ap = np.zeros((R, K)); Ap[:min(R, M - m0)] = A[m0:m0 + R]
            Bp = np.zeros((K, C)); Bp[:, :min(C, N - n0)] = B[:, n0:n0 + C]
            t = 0
            while True:
                k = t - ii - jj
                live = (k >= 0) & (k < K)
                if not live.any() and t > 0:
                    break
                kk = np.clip(k, 0, K - 1)
                acc += np.where(live, Ap[ii, kk] * Bp[kk, jj], 0)
                t += 1
            cycles += t + R                # MACs in cycles 0..t-1, then R rows drain
            out[m0:m0 + R, n0:n0 + C] = acc[:min(R, M - m0), :min(C, N - n0)]
    return out, cycles


def stepped_ws(A, B, R, C):
    """Weight stationary: a fold loads R rows of weights (R cycles), then input row m reaches
    PE (i, j) at cycle m + i + j; partial sums flow down and leave the bottom row."""
    M, K = A.shape
    N = B.shape[1]
    out = np.zeros((M, N))
    cycles = 0
    ii, jj = np.meshgrid(np.arange(R), np.arange(C), indexing="ij")
    for k0 in range(0, K, R):
        for n0 in range(0, N, C):
            W = np.zeros((R, C)); W[:min(R, K - k0), :min(C, N - n0)] = B[k0:k0 + R, n0:n0 + C]
            Ap = np.zeros((M, R)); Ap[:, :min(R, K - k0)] = A[:, k0:k0 + R]
            part = np.zeros((M, C))
            t = 0
            while True:
                m = t - ii - jj
                live = (m >= 0) & (m < M)
                if not live.any() and t > 0:
                    break
                mm = np.clip(m, 0, M - 1)
                np.add.at(part, (mm[live], jj[live]), (Ap[mm, ii] * W)[live])
                t += 1
            cycles += R + t                # weight load, then rows stream in cycles 0..t-1
            out[:, n0:n0 + C] += part[:, :min(C, N - n0)]
    return out, cycles


def scalesim(model, M, K, N, R, C):
    if model == "systolic_os":
        return math.ceil(M / R) * math.ceil(N / C) * (2 * R + C + K - 2)
    return math.ceil(K / R) * math.ceil(N / C) * (2 * R + C + M - 2)


def dpe_cycles(model, M, K, N, R, C):
    chip = load_chip("tiny").with_(dpe={"model": model, "array_rows": R, "array_cols": C,
                                        "macs_per_cycle": {d: R * C for d in ("fp32", "bf16", "fp16", "int8")}},
                                   local_mem__bytes="1 MiB")
    b = ProgramBuilder(chip)
    b.pe(0).dpe_matmul(0, 0x40000, 0x80000, M, K, N, dtype="fp32")
    return simulate(b.build(), chip, timing_only=True).cycles


@pytest.mark.parametrize("model,stepped", [("systolic_os", stepped_os), ("systolic_ws", stepped_ws)])
def test_systolic_cycles_match_scalesim(model, stepped, capsys):
    rng = np.random.default_rng(0)
    rows = []
    for R, C in ARRAYS:
        for M, K, N in SHAPES:
            A, B = rng.standard_normal((M, K)), rng.standard_normal((K, N))
            out, stepped_cycles = stepped(A, B, R, C)
            np.testing.assert_allclose(out, A @ B, rtol=1e-9, atol=1e-9)  # the schedule is a GEMM
            ours = dpe_cycles(model, M, K, N, R, C)
            formula = scalesim(model, M, K, N, R, C)
            rows.append((R, C, M, K, N, formula, stepped_cycles, ours))
            assert ours == formula == stepped_cycles
    with capsys.disabled():
        print(f"\n{model}: R x C | M x K x N | SCALE-Sim formula | stepped array | Ember DPE")
        for R, C, M, K, N, f, s, o in rows:
            print(f"  {R:>3}x{C:<3} | {M:>4}x{K:>4}x{N:<4} | {f:>8} | {s:>8} | {o:>8}")


def _loads(chip, space, per_pe_bytes, pes):
    b = ProgramBuilder(chip)
    for p in pes:
        b.pe(p).dma(space, p * per_pe_bytes, "local", 0, rows=per_pe_bytes // 65536,
                    row_bytes=65536, dst_stride=0)
    return simulate(b.build(), chip, timing_only=True)


def test_dma_bandwidth_reached_never_exceeded(capsys):
    chip = load_chip("mtia2i")
    rows = []
    # all 64 PEs stream 4 MiB each from DRAM: the 16 channels are the bottleneck
    r = _loads(chip, "dram", 4 << 20, range(64))
    bw = r.stats["bytes"]["dram_read"] / r.seconds
    rows.append(("DRAM, 64 PEs x 4 MiB", bw, chip.dram.bytes_per_s))
    assert 0.99 * chip.dram.bytes_per_s <= bw <= chip.dram.bytes_per_s
    # SRAM, 64 PEs: SRAM 2.7 TB/s; 8 column edge links give 2.76 TB/s, so SRAM binds
    r = _loads(chip, "sram", 2 << 20, range(64))
    bw = r.stats["bytes"]["sram_read"] / r.seconds
    rows.append(("SRAM, 64 PEs x 2 MiB", bw, chip.sram.bytes_per_s))
    assert 0.97 * chip.sram.bytes_per_s <= bw <= chip.sram.bytes_per_s
    # one PE from SRAM: its column's edge link (345.6 GB/s) binds
    r = _loads(chip, "sram", 8 << 20, [0])
    bw = r.stats["bytes"]["sram_read"] / r.seconds
    rows.append(("SRAM, 1 PE x 8 MiB (NoC link)", bw, chip.noc.link_bytes_per_s))
    assert 0.99 * chip.noc.link_bytes_per_s <= bw <= chip.noc.link_bytes_per_s
    # host -> DRAM upload over PCIe (one server, 32 GB/s)
    b = ProgramBuilder(chip)
    b.pe(0).dma("host", 0, "dram", 0, rows=64, row_bytes=1 << 20)
    r = simulate(b.build(), chip, timing_only=True)
    bw = r.stats["bytes"]["host_read"] / r.seconds
    rows.append(("host link, 64 MiB upload to DRAM", bw, chip.host_link.bytes_per_s))
    assert 0.99 * chip.host_link.bytes_per_s <= bw <= chip.host_link.bytes_per_s
    # local -> local copy on one PE: read + write share the 1 TB/s port; the 64-cycle DMA
    # latency of each of the two back-to-back commands is not hidden (one DMA queue)
    b = ProgramBuilder(chip)
    b.pe(5).dma("local", 0, "local", 0x20000, nbytes=0x20000)
    b.pe(5).dma("local", 0, "local", 0x20000, nbytes=0x20000)
    r = simulate(b.build(), chip, timing_only=True)
    bw = 2 * 2 * 0x20000 / r.seconds
    rows.append(("local port, copy on one PE", bw, chip.local_mem.bytes_per_s))
    assert 0.8 * chip.local_mem.bytes_per_s <= bw <= chip.local_mem.bytes_per_s
    with capsys.disabled():
        print("\ntransfer | achieved GB/s | modelled GB/s | ratio")
        for name, got, cap in rows:
            print(f"  {name:<32} | {got / 1e9:9.1f} | {cap / 1e9:9.1f} | {got / cap:.4f}")


def test_random_dram_traffic_never_exceeds_bandwidth():
    chip = load_chip("tiny")
    rate = chip.dram.bytes_per_s / chip.clock_hz      # bytes per cycle, all channels
    rng = np.random.default_rng(5)
    for _ in range(50):
        b = ProgramBuilder(chip)
        for _ in range(int(rng.integers(1, 20))):
            p = int(rng.integers(0, 4))
            n = int(rng.integers(1, 9000))
            b.pe(p).dma("dram", int(rng.integers(0, 1 << 20)), "local", 0, nbytes=n,
                        mcast=["none", "row", "col"][int(rng.integers(0, 3))])
        r = simulate(b.build(), chip, timing_only=True)
        assert r.stats["bytes"]["dram_read"] <= rate * r.cycles + 1e-9
