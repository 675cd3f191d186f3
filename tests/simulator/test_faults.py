"""Faults stop the run with a clear error naming the command."""
import numpy as np
import pytest

from simulator import (AddressOutOfRange, DeadlockError, Engine, InvalidCommand,
                       LocalMemoryOverflow, ProgramBuilder, UninitializedRead, load_chip, simulate)

TINY = load_chip("tiny")   # 64 KiB local memory, 1 MiB SRAM, 16 MiB DRAM


def test_local_memory_overflow():
    b = ProgramBuilder(TINY)
    b.pe(1).dma("dram", 0, "local", 60 * 1024, nbytes=8192)
    with pytest.raises(LocalMemoryOverflow, match=r"pe1 .*past the end of local memory \(65536 bytes\)"):
        simulate(b.build(), TINY, timing_only=True)


def test_local_memory_overflow_of_a_matmul_operand():
    b = ProgramBuilder(TINY)
    b.pe(0).dpe_matmul(0, 0, 0xF000, 64, 64, 64, dtype="bf16")   # C needs 16 KiB from 60 KiB
    with pytest.raises(LocalMemoryOverflow, match="matmul C"):
        simulate(b.build(), TINY, timing_only=True)


def test_address_out_of_range():
    b = ProgramBuilder(TINY)
    b.pe(0).dma("local", 0, "dram", 16 * 1024 * 1024 - 16, nbytes=64)
    with pytest.raises(AddressOutOfRange, match="past the end of DRAM"):
        simulate(b.build(), TINY, timing_only=True)
    b = ProgramBuilder(TINY)
    b.pe(0).dma("sram", 0, "local", 0, nbytes=64, dst_pe=7)
    with pytest.raises(AddressOutOfRange, match="destination PE"):
        simulate(b.build(), TINY, timing_only=True)
    b = ProgramBuilder(TINY)
    b.pe(0, 0).re_send("N", 0, 0, 4)    # row 0 has no northern neighbour
    with pytest.raises(AddressOutOfRange, match="outside the PE grid"):
        simulate(b.build(), TINY, timing_only=True)


def test_deadlock_names_the_waiting_commands():
    b = ProgramBuilder(TINY)
    t0, t1 = b.token(), b.token()
    b.pe(0).nop(Engine.DMA, wait=(t1, 1))
    b.pe(0).nop(Engine.DMA, signal=t0)
    b.pe(3).simd_unary("exp", 0, 0, 16, wait=(t0, 1), signal=t1)
    with pytest.raises(DeadlockError) as err:
        simulate(b.build(), TINY, timing_only=True)
    msg = str(err.value)
    assert "PE 0 (0,0) dma queue" in msg and "waits for token t1 >= 1 (signalled 0 times)" in msg
    assert "PE 3 (1,1) simd queue" in msg and "simd.exp" in msg and "t0 >= 1" in msg
    assert {(b["pe"], b["engine"]) for b in err.value.blocked} == {(0, 0), (3, 3)}
    with pytest.raises(DeadlockError):      # the reference model finds it too
        simulate(b.build(), TINY, timing_only=True, engine="python")


def test_read_before_write_is_poisoned():
    b = ProgramBuilder(TINY)
    b.pe(0).simd_unary("exp", 0x100, 0x200, 8)
    with pytest.raises(UninitializedRead, match=r"local memory of PE 0\[0x100\]"):
        simulate(b.build(), TINY)


def test_unsynchronized_consumer_reads_poison():
    """Without a token the SIMD command issues while the DMA is still in flight."""
    b = ProgramBuilder(TINY)
    b.pe(0).dma("dram", 0, "local", 0, nbytes=256)
    b.pe(0).simd_unary("exp", 0, 0x400, 64)
    with pytest.raises(UninitializedRead):
        simulate(b.build(), TINY, memory_init={("dram", 0): np.ones(64, np.float32)})


def test_partial_initialization_reports_first_poisoned_byte():
    b = ProgramBuilder(TINY)
    b.pe(0).dma("dram", 0, "local", 0, nbytes=64)
    with pytest.raises(UninitializedRead, match=r"DRAM\[0x20\]"):
        simulate(b.build(), TINY, memory_init={("dram", 0): np.ones(8, np.float32)})


def test_invalid_matmul():
    b = ProgramBuilder(TINY)
    b.pe(0).dpe_matmul(0, 0, 0, 0, 4, 4)
    with pytest.raises(InvalidCommand, match="M, K, N > 0"):
        simulate(b.build(), TINY, timing_only=True)
