"""Changing one chip field moves cycles the way physics says, for a memory-bound and a
compute-bound program (timing only, mtia2i)."""
import pytest

from simulator import LocalMemoryOverflow, ProgramBuilder, load_chip, simulate

BASE = load_chip("mtia2i")


def memory_bound(chip):
    """Every PE streams 1 MiB from DRAM into local memory (in 64 KiB pieces)."""
    b = ProgramBuilder(chip)
    for p in range(chip.num_pes):
        for i in range(16):
            b.pe(p).dma("dram", (p * 16 + i) << 16, "local", 0, nbytes=1 << 16)
    return simulate(b.build(), chip, timing_only=True)


def compute_bound(chip):
    """Every PE runs 8 bf16 matmuls 128x256x128 on data already in local memory."""
    b = ProgramBuilder(chip)
    for p in range(chip.num_pes):
        for _ in range(8):
            b.pe(p).dpe_matmul(0, 0x10000, 0x20000, 128, 256, 128, dtype="bf16", accumulate=True)
    return simulate(b.build(), chip, timing_only=True)


@pytest.fixture(scope="module")
def base():
    return memory_bound(BASE), compute_bound(BASE)


def test_programs_are_what_they_claim(base):
    mem, comp = base
    assert mem.stats["dram_bytes_per_s"] > 0.95 * BASE.dram_bytes_per_s
    assert comp.stats["mac_utilization"]["bf16"] > 0.75
    # compute bound, by hand: k_tile = 1024 / 32 = 32, so 256/32 * 128/32 = 32 tile passes
    # of 128 rows + 8 overhead cycles, 8 times per PE
    assert comp.cycles == 8 * 32 * (128 + 8)


def test_dram_bandwidth(base):
    mem, comp = base
    chip = BASE.with_(dram__bytes_per_s=2 * BASE.dram.bytes_per_s)
    ratio = memory_bound(chip).cycles / mem.cycles
    assert 0.5 <= ratio <= 0.52               # twice the bandwidth, half the time
    assert compute_bound(chip).cycles == comp.cycles


def test_clock(base):
    mem, comp = base
    chip = BASE.with_(clock_hz=2 * BASE.clock_hz)
    c2 = compute_bound(chip)
    assert c2.cycles == comp.cycles and c2.seconds == pytest.approx(comp.seconds / 2)
    m2 = memory_bound(chip)                    # DRAM bytes/s fixed: twice the cycles
    assert 1.95 <= m2.cycles / mem.cycles <= 2.0
    assert m2.seconds == pytest.approx(mem.seconds, rel=0.03)


def test_dpe_size(base):
    mem, comp = base
    chip = BASE.with_(dpe__macs_per_cycle={"fp32": 512, "bf16": 2048, "fp16": 2048, "int8": 4096})
    ratio = compute_bound(chip).cycles / comp.cycles
    # 16 tile passes instead of 32, each still 128 + 8 cycles
    assert ratio == 0.5
    assert memory_bound(chip).cycles == mem.cycles


def _gemm_on_one_pe(chip, m=128, k=1024, n=1024, nt=32, kc=256):
    """C[m, n] = A[m, k] @ B[k, n] in bf16 on PE 0, one n-tile of B at a time. If A (256 KiB)
    fits in local memory next to a B tile and a C tile, it is loaded once and reused for every
    n-tile; otherwise it is streamed again, in k-chunks, for each n-tile. More local memory
    -> more reuse -> less DRAM traffic -> fewer cycles. Commands run as one chain."""
    b = ProgramBuilder(chip)
    pe = b.pe(0)
    t = b.token()
    done = 0

    def step(fn, *args, **kw):
        nonlocal done
        fn(*args, wait=(t, done) if done else None, signal=t, **kw)
        done += 1

    A, B = 0, 1 << 24
    resident = m * k * 2 + k * nt * 2 + m * nt * 4 <= chip.local_mem.bytes
    a_loc, b_loc = 0, (m * k * 2 if resident else m * kc * 2)
    c_loc = b_loc + (k if resident else kc) * nt * 2
    if resident:
        step(pe.dma, "dram", A, "local", a_loc, nbytes=m * k * 2)
    for j in range(n // nt):
        if resident:
            step(pe.dma, "dram", B, "local", b_loc, rows=k, row_bytes=nt * 2,
                 src_stride=n * 2)
            step(pe.dpe_matmul, a_loc, b_loc, c_loc, m, k, nt, dtype="bf16")
        else:
            for c in range(k // kc):
                step(pe.dma, "dram", A + c * kc * 2, "local", a_loc, rows=m, row_bytes=kc * 2,
                     src_stride=k * 2)
                step(pe.dma, "dram", B + c * kc * n * 2 + j * nt * 2, "local", b_loc, rows=kc,
                     row_bytes=nt * 2, src_stride=n * 2)
                step(pe.dpe_matmul, a_loc, b_loc, c_loc, m, kc, nt, dtype="bf16",
                     accumulate=c > 0)
        step(pe.dma, "local", c_loc, "dram", 1 << 25, rows=m, row_bytes=nt * 4,
             dst_stride=n * 4)
    return resident, simulate(b.build(), chip, timing_only=True)


def test_local_memory_size():
    small_fits, small = _gemm_on_one_pe(BASE.with_(local_mem__bytes="192 KiB"))
    base_fits, base = _gemm_on_one_pe(BASE)
    assert not small_fits and base_fits
    assert small.stats["bytes"]["dram_read"] > 3 * base.stats["bytes"]["dram_read"]
    assert small.cycles > 1.3 * base.cycles       # the chain also waits on compute
    # and a program written for a bigger memory does not fit the default one
    b = ProgramBuilder(BASE)
    b.pe(0).dma("dram", 0, "local", 0, nbytes=512 * 1024)
    with pytest.raises(LocalMemoryOverflow):
        simulate(b.build(), BASE, timing_only=True)


def test_local_memory_bandwidth():
    """A self-copy inside local memory is bound by the local port."""
    def copy(chip):
        b = ProgramBuilder(chip)
        b.pe(0).dma("local", 0, "local", 0x20000, nbytes=0x20000)
        return simulate(b.build(), chip, timing_only=True).cycles
    fast = copy(BASE)
    slow = copy(BASE.with_(local_mem__bytes_per_s=BASE.local_mem.bytes_per_s / 2))
    lat = BASE.dma.latency_cycles
    assert slow - lat == pytest.approx(2 * (fast - lat), abs=1)
