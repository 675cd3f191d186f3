"""Hand-written kernels on the `tiny` chip: numbers against numpy/torch, golden cycle counts.

`tiny` (simulator/chips/tiny.yaml) runs at 1 GHz with round rates, so every duration below is
derived by hand from the spec:
  DRAM: 2 channels x 16 B/cycle, 256 B interleave    SRAM: 2 banks x 64 B/cycle
  local memory port: 128 B/cycle                      NoC link: 64 B/cycle, 1 cycle per hop
  DMA: 10 cycles latency; a PE in row r is r + 1 hops from memory (north edge)
  DPE (cached_stream): n_tile 16, bf16 k_tile 256/16 = 16, 4 overhead cycles per tile pass
  SIMD: 16 elements/cycle, lookup-table functions 2 cycles per vector, 2 cycles latency
A DMA lasts max(bytes / rate over the servers it uses) + latency + hops.
"""
import ml_dtypes
import numpy as np
import torch

from simulator import Engine, ProgramBuilder, load_chip, simulate

BF16 = ml_dtypes.bfloat16
TINY = load_chip("tiny")


def test_tiled_gemm_one_pe_golden():
    """C[32,32] = A[32,64] @ B[64,32] in bf16 on PE 0, tiled over K in two steps of 32."""
    rng = np.random.default_rng(0)
    A = rng.standard_normal((32, 64)).astype(BF16)
    B = rng.standard_normal((64, 32)).astype(BF16)
    b = ProgramBuilder(TINY)
    t_in, t_mm = b.token(), b.token()
    pe = b.pe(0, 0)
    A_LOC, B_LOC, C_LOC = 0x0, 0x800, 0x1000
    for k in range(2):
        # A[:, 32k:32k+32]: 32 rows of 64 B, 128 B apart in DRAM -> contiguous 2 KiB
        pe.dma("dram", 0x0 + 64 * k, "local", A_LOC + 0x2000 * k, rows=32, row_bytes=64,
               src_stride=128, signal=t_in)
        pe.dma("dram", 0x1000 + 2048 * k, "local", B_LOC + 0x2000 * k, nbytes=2048, signal=t_in)
    pe.dpe_matmul(A_LOC, B_LOC, C_LOC, 32, 32, 32, dtype="bf16", wait=(t_in, 2))
    pe.dpe_matmul(A_LOC + 0x2000, B_LOC + 0x2000, C_LOC, 32, 32, 32, dtype="bf16",
                  accumulate=True, wait=(t_in, 4), signal=t_mm)
    pe.dma("local", C_LOC, "dram", 0x4000, nbytes=4096, wait=(t_mm, 1))
    res = simulate(b.build(), TINY, memory_init={("dram", 0x0): A, ("dram", 0x1000): B})

    C = res.read("dram", 0x4000, (32, 32), np.float32)
    ref = torch.from_numpy(A.astype(np.float32)) @ torch.from_numpy(B.astype(np.float32))
    np.testing.assert_allclose(C, ref.numpy(), rtol=1e-5, atol=1e-4)
    # Each 2 KiB load: DRAM 1 KiB per channel / 16 = 64 cycles (> edge link 32, local port 16),
    # + 10 latency + 1 hop = 75; four loads in the DMA queue end at 75, 150, 225, 300.
    # Matmul 32x32x32: ceil(32/16) k-passes * ceil(32/16) n-passes * (32 rows + 4) = 144.
    # mm0 waits for B0 (150) -> 294; mm1 waits for B1 (300) -> 444.
    # Store 4 KiB: 2 KiB per channel / 16 = 128 + 11 = 139 -> 583.
    assert res.cycles == 583
    assert res.stats["bytes"]["dram_read"] == 8192 and res.stats["bytes"]["dram_write"] == 4096
    assert res.stats["macs"]["bf16"] == 32 * 64 * 32


def test_tiled_gemm_four_pes():
    """C[64,64] = A[64,64] @ B[64,64], PE (i, j) computes the 32x32 block (i, j); int8 too."""
    rng = np.random.default_rng(1)
    for dtype, np_t, out_t in (("bf16", BF16, np.float32), ("int8", np.int8, np.int32)):
        if dtype == "int8":
            A = rng.integers(-128, 128, (64, 64)).astype(np.int8)
            B = rng.integers(-128, 128, (64, 64)).astype(np.int8)
        else:
            A = rng.standard_normal((64, 64)).astype(BF16)
            B = rng.standard_normal((64, 64)).astype(BF16)
        es = np.dtype(np_t).itemsize
        b = ProgramBuilder(TINY)
        for i in range(2):
            for j in range(2):
                tok = b.token()
                pe = b.pe(i, j)
                pe.dma("dram", i * 32 * 64 * es, "local", 0x0, nbytes=32 * 64 * es, signal=tok)
                pe.dma("dram", 0x4000 + j * 32 * es, "local", 0x2000, rows=64, row_bytes=32 * es,
                       src_stride=64 * es, signal=tok)
                pe.dpe_matmul(0x0, 0x2000, 0x4000, 32, 64, 32, dtype=dtype, wait=(tok, 2), signal=tok)
                pe.dma("local", 0x4000, "dram", 0x8000 + (i * 32 * 64 + j * 32) * 4, rows=32,
                       row_bytes=128, dst_stride=256, wait=(tok, 3))
        res = simulate(b.build(), TINY, memory_init={("dram", 0): A, ("dram", 0x4000): B})
        C = res.read("dram", 0x8000, (64, 64), out_t)
        if dtype == "int8":
            np.testing.assert_array_equal(C, A.astype(np.int32) @ B.astype(np.int32))
        else:
            ref = torch.from_numpy(A.astype(np.float32)) @ torch.from_numpy(B.astype(np.float32))
            np.testing.assert_allclose(C, ref.numpy(), rtol=1e-5, atol=1e-4)
        # the DRAM channels (32 B/cycle together) carry 2*64*64*es + 64*64*4 bytes at least
        dram_bytes = 2 * 64 * 64 * es + 64 * 64 * 4
        assert res.cycles >= dram_bytes // 32
        assert res.cycles == simulate(b.build(), TINY, timing_only=True, engine="python").cycles


def _softmax_program(dtype: str, rows: int = 16, cols: int = 64):
    b = ProgramBuilder(TINY)
    t = b.token()
    pe = b.pe(0, 0)
    es = 4 if dtype == "fp32" else 2
    X, MX, E, SM, OUT = 0x0, 0x2000, 0x3000, 0x5000, 0x6000
    n = rows * cols
    pe.dma("dram", 0x0, "local", X, nbytes=n * es, signal=t)
    pe.simd_row_reduce("max", X, MX, rows, cols, dtype=dtype, out_dtype="fp32", wait=(t, 1))
    pe.simd_row_bcast("sub", X, MX, E, rows, cols, dtype=dtype, out_dtype="fp32") if dtype == "fp32" else \
        pe.simd_row_bcast("sub", X, MX, E, rows, cols, dtype=dtype, out_dtype=dtype)
    # (bf16: the row max is stored as bf16 first so both operands share a dtype)
    pe.simd_unary("exp", E, E, n, dtype="fp32" if dtype == "fp32" else dtype, out_dtype="fp32")
    pe.simd_row_reduce("add", E, SM, rows, cols, dtype="fp32", out_dtype="fp32")
    pe.simd_unary("recip", SM, SM, rows, dtype="fp32", out_dtype="fp32")
    pe.simd_row_bcast("mul", E, SM, OUT, rows, cols, dtype="fp32", out_dtype=dtype, signal=t)
    pe.dma("local", OUT, "dram", 0x4000, nbytes=n * es, wait=(t, 2))
    return b.build()


def test_softmax_rows_fp32_golden():
    x = np.random.default_rng(2).standard_normal((16, 64)).astype(np.float32) * 3
    res = simulate(_softmax_program("fp32"), TINY, memory_init={("dram", 0): x})
    y = res.read("dram", 0x4000, (16, 64), np.float32)
    np.testing.assert_allclose(y, torch.softmax(torch.from_numpy(x), dim=1).numpy(), rtol=1e-5, atol=1e-7)
    # load 4 KiB: 2 KiB per DRAM channel / 16 = 128 + 11 = 139
    # SIMD (16 lanes): row max 16 rows * 4 vectors + 2 = 66; row sub 66; exp 1024/16 * 2 + 2 = 130;
    #   row sum 66; recip of 16 values 1 * 2 + 2 = 4; row mul 66  -> 398, ends at 537
    # store 4 KiB: 139 -> 676
    assert res.cycles == 676
    assert res.stats["busy_cycles"]["simd"][0] == 398


def test_softmax_rows_bf16():
    x = (np.random.default_rng(3).standard_normal((16, 64)) * 3).astype(BF16)
    b_prog = _softmax_program("bf16")
    # bf16 row max feeds a bf16 broadcast: store the max as bf16 (same value, it is an input)
    cmds = b_prog.commands
    cmds["dtype2"][1] = 1
    res = simulate(b_prog, TINY, memory_init={("dram", 0): x})
    y = res.read("dram", 0x4000, (16, 64), BF16).astype(np.float32)
    ref = torch.softmax(torch.from_numpy(x.astype(np.float32)), dim=1).numpy()
    np.testing.assert_allclose(y, ref, rtol=1e-2, atol=1e-3)   # bf16 has 8 mantissa bits
    assert not np.array_equal(y, ref)                           # and it did round


def _broadcast_program(multicast: bool):
    """Y_pe = X_pe @ W on all four PEs; W (32x32 bf16) comes from DRAM, X_pe from SRAM."""
    b = ProgramBuilder(TINY)
    W_LOC, X_LOC, Y_LOC = 0x0, 0x800, 0x1000
    tw = [b.token(), b.token()]     # W arrived in column 0 / 1
    for pe_idx in range(4):
        pe = b.pe(pe_idx)
        col, row = pe_idx % 2, pe_idx // 2
        if multicast:
            if row == 0:      # the top PE of each column broadcasts W down its column
                pe.dma("dram", 0x0, "local", W_LOC, nbytes=2048, mcast="col", signal=tw[col])
        else:
            pe.dma("dram", 0x0, "local", W_LOC, nbytes=2048, signal=tw[col])
        tx = b.token()
        pe.dma("sram", pe_idx * 1024, "local", X_LOC, nbytes=1024, signal=tx)
        need = 1 if multicast else 2   # unicast: both PEs of the column signal tw[col]
        pe.nop(Engine.DPE, wait=(tw[col], need))
        pe.dpe_matmul(X_LOC, W_LOC, Y_LOC, 16, 32, 32, dtype="bf16", wait=(tx, 1), signal=tx)
        pe.dma("local", Y_LOC, "sram", 0x10000 + pe_idx * 2048, nbytes=2048, wait=(tx, 2))
    return b.build()


def test_multicast_weight_broadcast():
    rng = np.random.default_rng(4)
    W = rng.standard_normal((32, 32)).astype(BF16)
    X = rng.standard_normal((4, 16, 32)).astype(BF16)
    init = {("dram", 0): W, ("sram", 0): X}
    res = simulate(_broadcast_program(True), TINY, memory_init=init)
    uni = simulate(_broadcast_program(False), TINY, memory_init=init)
    for r in (res, uni):
        for p in range(4):
            Y = r.read("sram", 0x10000 + p * 2048, (16, 32), np.float32)
            ref = torch.from_numpy(X[p].astype(np.float32)) @ torch.from_numpy(W.astype(np.float32))
            np.testing.assert_allclose(Y, ref.numpy(), rtol=1e-5, atol=1e-4)
    assert res.stats["bytes"]["dram_read"] == 2 * 2048     # one read per column, not per PE
    assert uni.stats["bytes"]["dram_read"] == 4 * 2048
    # Multicast, by hand. Each server (DRAM channel, SRAM bank, link, local port) serves its
    # share of a transfer in request order; a DMA is done when its last share is, + 10 + hops.
    # Queues with requests at the same cycle are served in PE order.
    # W down column 0 by PE 0 at t=0: DRAM 1 KiB per channel / 16 = 64 (edge link and column
    #   link 32, local ports of PEs 0 and 2 16) -> 64 + 10 + 2 hops = 76.
    # W down column 1 by PE 1 at t=0: the DRAM channels are busy until 64 -> 128 + 12 = 140.
    # X from SRAM, 1 KiB (512 B per bank / 64 = 8, edge link 16, local port 8):
    #   PE 2 at 0: column 0's edge link is busy until 32 -> 48 + 12 = 60; PE 3 likewise 60.
    #   PE 0 at 76 (behind W in its DMA queue) -> 92 + 11 = 103; PE 1 at 140 -> 167.
    # Matmul 16x32x32: 2 k-passes * 2 n-passes * (16 + 4) = 80, once W and X are there:
    #   PE 2 76 -> 156, PE 0 103 -> 183, PE 3 140 -> 220, PE 1 167 -> 247.
    # Y stores, 2 KiB up the column to SRAM (edge link 32 binds) + 10 + hops:
    #   PE 2 156 -> 188 + 12 = 200; PE 0 183: column 0's edge link is free at 188 -> 220 + 11
    #   = 231; PE 3 220 -> 252 + 12 = 264; PE 1 247: column 1's link is free at 252 -> 284 + 11
    #   = 295.
    assert res.cycles == 295
    assert res.cycles < uni.cycles
