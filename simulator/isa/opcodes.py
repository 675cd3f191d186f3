"""Enumerations of the ISA: engines, opcodes, memory spaces, dtypes, SIMD functions.

The numeric values are part of the encoding (and of the C++ timing engine): append, never
renumber.
"""
from __future__ import annotations

import enum

import ml_dtypes
import numpy as np

from simulator.isa.mx import FORMATS as MX_FORMATS, MxFormat


class Engine(enum.IntEnum):
    """The in-order command queues of one PE."""
    DMA = 0
    DPE = 1
    REDUCE = 2
    SIMD = 3
    MLU = 4
    VEC = 5               # the RISC-V core's vector unit, running compiled kernels


NUM_ENGINES = len(Engine)


class Op(enum.IntEnum):
    """Opcodes. Operand meaning per opcode is documented on the PEStream builder methods."""
    NOP = 0               # sync only (signal / wait), zero duration, on any engine
    DMA = 1               # strided 2D copy between host, DRAM, SRAM, local memory; multicast;
                          # gather / scatter at an address an index in local memory moves
    DPE_MATMUL = 2        # C (+)= A @ B; bf16/fp16/fp32/fp8 -> fp32, int8 -> int32
    RE_ACC = 3            # dst += src (fp32 or int32)
    RE_SEND = 4           # forward partial sums to a neighbour PE (optionally accumulating)
    SIMD_UNARY = 5        # dst = fn(src), also casts (fn=COPY)
    SIMD_BINARY = 6       # dst = fn(a, b)
    SIMD_SCALAR = 7       # dst = fn(src, immediate)
    SIMD_ROW_REDUCE = 8   # dst[r] = reduce_fn(src[r, :])
    SIMD_ROW_BCAST = 9    # dst[r, c] = fn(src[r, c], vec[r])
    MLU_TRANSPOSE = 10    # dst = src.T (2D)
    MLU_COPY2D = 11       # strided 2D copy inside local memory (slice, reshape)
    MLU_CONCAT = 12       # dst = concat([a, b], axis=1)
    SIMD_MX_QUANT = 13    # dst = rows of src in an MX block format (simulator/isa/mx.py)
    VEC_KERNEL = 14       # run a kernel of the program's vector-kernel table on the vector core


ENGINE_OF_OP = {
    Op.DMA: Engine.DMA, Op.DPE_MATMUL: Engine.DPE, Op.RE_ACC: Engine.REDUCE,
    Op.RE_SEND: Engine.REDUCE, Op.SIMD_UNARY: Engine.SIMD, Op.SIMD_BINARY: Engine.SIMD,
    Op.SIMD_SCALAR: Engine.SIMD, Op.SIMD_ROW_REDUCE: Engine.SIMD, Op.SIMD_ROW_BCAST: Engine.SIMD,
    Op.MLU_TRANSPOSE: Engine.MLU, Op.MLU_COPY2D: Engine.MLU, Op.MLU_CONCAT: Engine.MLU,
    Op.SIMD_MX_QUANT: Engine.SIMD, Op.VEC_KERNEL: Engine.VEC,
}


class Space(enum.IntEnum):
    """Memory levels. HOST is the host's memory across the host link (PCIe)."""
    DRAM = 0
    SRAM = 1
    LOCAL = 2
    HOST = 3


class DType(enum.IntEnum):
    """Element types the engines understand."""
    FP32 = 0
    BF16 = 1
    FP16 = 2
    INT8 = 3
    INT32 = 4
    FP8 = 5               # OCP fp8 e4m3 (no infinities; largest finite 448)
    MXFP8 = 6             # OCP MX block formats (simulator/isa/mx.py): rows of 32-element
    MXFP4 = 7             # blocks, e4m3 / e2m1 elements sharing one e8m0 scale; stored as bytes

    @property
    def mx(self) -> "MxFormat | None":
        """The MX block format of an MX dtype, None for the others."""
        return MX_FORMATS.get(DPE_DTYPES.get(self, ""))

    @property
    def np(self) -> np.dtype:
        return _NP[self]

    @property
    def itemsize(self) -> int:
        return _NP[self].itemsize

    @classmethod
    def of(cls, x: "str | DType | np.dtype") -> "DType":
        if type(x) is DType:
            return x
        if isinstance(x, str):
            found = cls.__members__.get(x.upper())
            if found is not None:
                return found
        dt = np.dtype(x)
        for k, v in _NP.items():
            if v == dt and k.mx is None:     # MX rows are bytes, not a numpy element type
                return k
        raise ValueError(f"no accelerator dtype for {x!r}")


_NP = {DType.FP32: np.dtype(np.float32), DType.BF16: np.dtype(ml_dtypes.bfloat16),
       DType.FP16: np.dtype(np.float16), DType.INT8: np.dtype(np.int8),
       DType.INT32: np.dtype(np.int32), DType.FP8: np.dtype(ml_dtypes.float8_e4m3fn),
       DType.MXFP8: np.dtype(np.uint8), DType.MXFP4: np.dtype(np.uint8)}

#: The dtypes the dot-product engine multiplies, by their chip-file name (`dpe.macs_per_cycle`).
DPE_DTYPES = {DType.FP32: "fp32", DType.BF16: "bf16", DType.FP16: "fp16", DType.INT8: "int8",
              DType.FP8: "fp8", DType.MXFP8: "mxfp8", DType.MXFP4: "mxfp4"}


class Mcast(enum.IntEnum):
    """DMA destination fan-out: one PE, every PE of its row, or of its column."""
    NONE = 0
    ROW = 1
    COL = 2


class Indexed(enum.IntEnum):
    """Which address of a DMA an index moves (flags bits 3-4): none, the source (a gather) or
    the destination (a scatter)."""
    NONE = 0
    SRC = 1
    DST = 2


class Dir(enum.IntEnum):
    """Mesh directions (row 0 is the north edge, where memory attaches)."""
    N = 0
    S = 1
    E = 2
    W = 3


class SimdFn(enum.IntEnum):
    """SIMD functions. Lookup-table functions cost `simd.lut_cycles` per vector.

    With an INT32 input the engine computes COPY, ADD, SUB, MUL, MAX, MIN, the comparisons,
    the logical functions and SELECT exactly, in integers (other functions convert to fp32
    first). Comparisons and logical functions give 1 (true) or 0 (false) in the output dtype;
    logical functions and SELECT treat any nonzero input as true.
    """
    COPY = 0
    ADD = 1
    SUB = 2
    MUL = 3
    MAX = 4
    MIN = 5
    DIV = 6
    RELU = 7
    EXP = 8
    GELU = 9
    SILU = 10
    TANH = 11
    SIGMOID = 12
    RECIP = 13
    RSQRT = 14
    SIN = 15
    COS = 16
    GELU_ERF = 17         # exact GELU, x * (1 + erf(x / sqrt(2))) / 2 (GELU is the tanh form)
    EQ = 18               # a == b
    NE = 19               # a != b
    LT = 20               # a < b
    LE = 21               # a <= b
    GT = 22               # a > b
    GE = 23               # a >= b
    AND = 24              # a and b
    OR = 25               # a or b
    XOR = 26              # a xor b
    TRUNC = 27            # round toward zero (a float to an integer dtype, as torch casts)
    SELECT = 28           # binary: dst = a where b != 0, else dst unchanged (reads dst too)


LUT_FNS = frozenset({SimdFn.DIV, SimdFn.EXP, SimdFn.GELU, SimdFn.SILU, SimdFn.TANH,
                     SimdFn.SIGMOID, SimdFn.RECIP, SimdFn.RSQRT, SimdFn.SIN, SimdFn.COS,
                     SimdFn.GELU_ERF})
