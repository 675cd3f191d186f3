"""The PE's vector core (simulator/isa/vector.py, simulator/engines/vec.py): kernels run from their
LLVM module's host build on local memory and are timed from the same module built for RVV; a
kernel's fault stops the run by name; Program files keep the modules and refuse bad ones."""
from __future__ import annotations

import numpy as np
import pytest
from llvmlite import ir

from ops.kernels.vector_ir import I32, I64, KernelIR, const
from ops.kernels.vector_scan import scan_kernel
from ops.kernels.vector_select import select_kernel
from simulator import IndexOutOfRange, InvalidCommand, LocalMemoryOverflow, ProgramBuilder, load_chip, simulate
from simulator.isa import vector
from simulator.isa.artifact import Program, ProgramFileError
from simulator.isa.vector import Region

TINY, MTIA = load_chip("tiny"), load_chip("mtia2i")
IDS, TABLE, OUT = 0x0, 0x1000, 0x2000          # local addresses


def lookup_kernel(n: int, vlen: int = 64) -> vector.VectorKernel:
    """out[r] = table[ids[r]] (int32), on the scalar core, with ids checked against [0, n)."""
    kir = KernelIR(f"lookup_{n}", (Region("in", 4), Region("in", 4 * n, per_row=False), Region("out", 4)), vlen)
    b = kir.builder
    i = b.sext(kir.load(b, 0, "int32", kir.row), I64)
    bad = b.or_(b.icmp_signed("<", i, const(I64, 0)), b.icmp_signed(">=", i, const(I64, n)))
    fault, ok = kir.block("bad_id", 0, 0), kir.block("lookup", 0, 1)
    b.cbranch(bad, fault, ok)
    kir.fail_at(ir.IRBuilder(fault), kir.row)
    ob = ir.IRBuilder(ok)
    kir.store(ob, 2, "int32", kir.row, kir.load(ob, 1, "int32", i))
    return kir.finish(ob, fault=f"index outside [0, {n})")


def _lookup_program(kernel, rows: int):
    b = ProgramBuilder(TINY, "lookup")
    pe, loaded, done = b.pe(0), b.token(), b.token()
    n = kernel.regions[1].row_bytes // 4
    pe.dma("dram", 0, "local", IDS, nbytes=4 * rows, signal=loaded)
    pe.dma("dram", 0x10000, "local", TABLE, nbytes=4 * n, signal=loaded)
    pe.vec_kernel(kernel, (IDS, TABLE, OUT), rows, wait=(loaded, 2), signal=done)
    pe.dma("local", OUT, "dram", 0x20000, nbytes=4 * rows, wait=(done, 1))
    return b.build()


@pytest.mark.parametrize("seed", range(3))
def test_a_scalar_core_lookup_reads_repeated_and_unordered_ids(seed):
    rng = np.random.default_rng(seed)
    n, rows = 37, 50
    table = rng.integers(-2**31, 2**31 - 1, n, dtype=np.int64).astype(np.int32)
    ids = rng.integers(0, n, rows).astype(np.int32)          # repeats, in no order
    k = lookup_kernel(n)
    res = simulate(_lookup_program(k, rows), TINY, memory_init={("dram", 0): ids, ("dram", 0x10000): table})
    np.testing.assert_array_equal(res.read("dram", 0x20000, (rows,), np.int32), table[ids])
    assert res.stats["busy_cycles"]["vec"][0] == k.cycles(TINY, rows)


def test_a_kernel_fault_stops_the_run_by_name():
    n, rows = 37, 8
    ids = np.arange(rows, dtype=np.int32)
    ids[5] = n                                               # one past the end
    with pytest.raises(IndexOutOfRange, match=r"vec.call k0 .* vector kernel lookup_37 stopped at element 5 of "
                                              r"its input: index outside \[0, 37\)"):
        simulate(_lookup_program(lookup_kernel(n), rows), TINY,
                 memory_init={("dram", 0): ids, ("dram", 0x10000): np.zeros(n, np.int32)})


def test_bad_calls_are_refused_before_running():
    b = ProgramBuilder(TINY)
    b.pe(0).vec_kernel(lookup_kernel(4, vlen=128), (IDS, TABLE, OUT), 1)     # built for another vector length
    with pytest.raises(InvalidCommand, match=r"lookup_4 is built for 128-byte vectors, but tiny.s vector_core.vlen_bytes is 64"):
        simulate(b.build(), TINY)
    b = ProgramBuilder(TINY)
    b.pe(0).vec_kernel(lookup_kernel(4), (IDS, TABLE, 0xFFFF0), 4)            # past local memory
    with pytest.raises(LocalMemoryOverflow, match="region 2 of vector kernel lookup_4 is past the end of local memory"):
        simulate(b.build(), TINY)


def test_the_host_build_and_the_rvv_build_come_from_one_module(monkeypatch):
    # both builds parse the kernel's one IR text (`parse`); nothing else describes the kernel's code
    seen = []
    real = vector.parse
    monkeypatch.setattr(vector, "parse", lambda text: seen.append(text) or real(text))
    vector._jit.cache_clear()
    vector._rvv_asm.cache_clear()
    k = scan_kernel("int32", 20, "sum", 64)
    buf = np.arange(20, dtype=np.int32)
    out = np.zeros(20, np.int32)
    assert k.run([buf.view(np.uint8), out.view(np.uint8)], 1, 0) == vector.OK
    np.testing.assert_array_equal(out, np.cumsum(buf))
    asm = k.rvv_asm()
    assert seen == [k.ir, k.ir]
    assert f"{k.name}:" in asm and "lw\t" in asm and "ret" in asm


def test_cycles_match_a_count_by_hand():
    # Hand counts, from what each loop must do per trip and the chip file's cycles per class
    # (tiny and mtia2i: scalar 1, scalar_mem 2, branch 2, vector_config 1, vector_alu 1,
    # vector_mem 2, vector_reduce 4, launch 16):
    #
    # cumsum of int32 rows: per element a load (2), an add (1), a store (2), the two pointer
    # increments (1 + 1) and the loop branch (2): 9 cycles. Per row, about 10 more (its loop
    # counter, pointers and branch). 8 rows of 100: 16 + 8 * (900 + 10) = 7296.
    k = scan_kernel("int32", 100, "sum", 64)
    assert k.cycles(MTIA, 8) == pytest.approx(16 + 8 * (900 + 10), rel=0.2)
    #
    # argmax of one fp32 row of 1024 in vectors of 16 lanes. Per vector: a load (2) and the
    # lanes' indices (1); torch's order "(x, i) comes before (y, j)": x > y (1), or x NaN and y
    # not (two NaN tests, a not, an and, an or: 5), or x == y (1) or both NaN (2) at a smaller
    # index (1, and an and and an or: 3): 12 mask ops; that test twice (after the previous pick,
    # before the best so far): 24, or'd with "pass 0" (1) and and'ed (1); two merges (2); the
    # loop counter and pointer (2), vsetvli (1) and branch (2): 2 + 1 + 26 + 2 + 5 = 36 cycles,
    # 64 vectors: 2304. Per row, the lane reduction (two reductions of 4, the NaN test, moves:
    # about 20) and the pass's setup (about 20): 16 + 2304 + 40 = 2360.
    k = select_kernel("fp32", 1024, 1, True, 64)
    assert k.cycles(MTIA, 1) == pytest.approx(2360, rel=0.2)


def test_program_files_keep_the_modules_and_refuse_bad_ones(tmp_path):
    prog = _lookup_program(lookup_kernel(9), 4)
    p = Program(chip={"name": "tiny"}, dtype="fp32", tensors={}, inputs=[], outputs=[], steps=[], kernels=[prog])
    path = str(tmp_path / "k.ember")
    p.save(path)
    back = Program.load(path).kernels[0]
    assert [k.to_json() for k in back.vector_kernels] == [k.to_json() for k in prog.vector_kernels]
    assert "lookup_9:" in back.asm()
    broken = lookup_kernel(9)
    object.__setattr__(broken, "ir", broken.ir.replace("ret i64", "ret i32"))
    prog.vector_kernels = (broken,)
    p.save(path)
    with pytest.raises(ProgramFileError, match=r"kernel lookup: vector kernel 0 cannot be used: invalid LLVM IR"):
        Program.load(path)


def test_the_chip_file_sets_the_vector_cores_speed():
    slow = MTIA.with_(vector_core={"cycles": {"scalar_mem": 4}})
    scan = scan_kernel("int32", 100, "sum", 64)
    assert scan.cycles(slow, 8) - scan.cycles(MTIA, 8) == 8 * 100 * 2 * 2      # a load and a store per element
    wide = MTIA.with_(vector_core={"vlen_bytes": 128})
    narrow_k = select_kernel("fp32", 4096, 1, True, 64)
    wide_k = select_kernel("fp32", 4096, 1, True, wide.vector_core.vlen_bytes)
    assert 0.4 < wide_k.cycles(wide, 1) / narrow_k.cycles(MTIA, 1) < 0.6         # half the vectors a row
