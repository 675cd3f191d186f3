"""The PE command set a compiler targets: opcodes, compact encoding, program container."""
from simulator.isa.encoding import (CMD_DTYPE, FLAG_ACCUMULATE, INDEXED_SHIFT, NUM_ARGS, format_command,
                                    indexed_of, pack_index, unpack_index)
from simulator.isa.opcodes import (DPE_DTYPES, ENGINE_OF_OP, LUT_FNS, NUM_ENGINES, DType, Dir, Engine, Indexed,
                                   Mcast, Op, SimdFn, Space)
from simulator.isa.program import (LOOP_DTYPE, ChipProgram, PEStream, ProgramBuilder,
                                    RelocatedProgram, Strided)

__all__ = ["CMD_DTYPE", "FLAG_ACCUMULATE", "INDEXED_SHIFT", "NUM_ARGS", "format_command", "indexed_of",
           "pack_index", "unpack_index", "DPE_DTYPES", "ENGINE_OF_OP", "LUT_FNS", "NUM_ENGINES", "DType", "Dir", "Engine",
           "Indexed", "Mcast", "Op", "SimdFn", "Space", "ChipProgram", "PEStream", "ProgramBuilder",
           "LOOP_DTYPE", "RelocatedProgram", "Strided"]
