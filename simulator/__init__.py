"""Ember chip simulator: chip spec, ISA, functional and timing engines.

Python API (what the compiler and runtime use)::

    from simulator import ProgramBuilder, simulate, load_chip

    chip = load_chip("tiny")                       # name, YAML path or ChipSpec
    b = ProgramBuilder(chip)
    t = b.token()                                  # a sync token (chip-wide counter)
    pe = b.pe(0, 0)                                # PE (row, col) command stream
    pe.dma("dram", 0x0, "local", 0x0, nbytes=1024, signal=t)
    pe.simd_unary("exp", 0x0, 0x400, n=256, dtype="fp32", wait=(t, 1))
    pe.dma("local", 0x400, "dram", 0x1000, nbytes=1024)
    prog = b.build()                               # ChipProgram: one CMD_DTYPE record per command
    print(prog.dump())                             # readable text

    res = simulate(prog, chip, memory_init={("dram", 0x0): x},   # or ("local", pe, addr)
                   timing_only=False)              # engine="python" selects the reference model
    res.cycles, res.seconds
    res.stats["engine_utilization"], res.stats["bytes"], res.stats["energy_j"]
    res.read("dram", 0x1000, (256,), "float32")    # outputs; unwritten bytes raise
    res.write_trace("trace.json")                  # Chrome / Perfetto

Modules: ``spec`` (chips), ``isa`` (opcodes, encoding, builder), ``functional`` and ``memory``
(numbers), ``timing_ref`` and ``csrc/`` (timing: Python reference and C++ engine), ``stats``,
``trace``, ``validate``, ``errors``. Faults raise subclasses of ``SimulatorError``:
``LocalMemoryOverflow``, ``AddressOutOfRange``, ``IndexOutOfRange`` (an indexed DMA's index
outside its tensor), ``UninitializedRead``, ``DeadlockError``.
"""
from simulator.errors import (AddressOutOfRange, DeadlockError, IndexOutOfRange, InvalidCommand,
                              LocalMemoryOverflow, SimulatorError, UninitializedRead)
from simulator.isa import ChipProgram, DType, Engine, Mcast, Op, ProgramBuilder, SimdFn, Space
from simulator.simulate import SimResult, run_timing, simulate
from simulator.spec import ChipSpec, ChipSpecError, list_chips, load_chip

__all__ = ["AddressOutOfRange", "DeadlockError", "IndexOutOfRange", "InvalidCommand", "LocalMemoryOverflow",
           "SimulatorError", "UninitializedRead", "ChipProgram", "DType", "Engine", "Mcast", "Op",
           "ProgramBuilder", "SimdFn", "Space", "SimResult", "run_timing", "simulate",
           "ChipSpec", "ChipSpecError", "list_chips", "load_chip"]
