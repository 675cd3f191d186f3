"""Vector-core kernels: LLVM modules that the PE's RISC-V core (RVV 1.0) runs, one command each.

A `VectorKernel` is the hardware contract between compiler and simulator for code the
fixed-function engines cannot run: the text of one LLVM module, the local-memory regions its
function reads and writes, and how often each of its basic blocks runs. Both sides build from
that one text:

- **functional**: the module is JIT-compiled for the host (llvmlite MCJIT) and called on copies
  of the PE's local-memory regions (`run`);
- **timing**: the module is compiled for ``riscv64`` with the vector extension at the chip's
  vector length (`rvv_asm`); the instructions of each basic block are sorted into classes
  (`classify`), and a call costs ``launch_cycles + sum over blocks of executions x sum of the
  block's instructions' cycles`` (`cost_terms`), the cycles per class coming from the chip file
  (``vector_core.cycles``). A vector instruction at register grouping LMUL > 1 costs LMUL times.

The function is ``i64 @<name>(ptr %region0, ..., i64 %rows, i64 %param)``: ``rows`` is the
command's row count (a[4]) and ``param`` a kernel-defined integer (a[5]). It returns -1, or the
flat position of an element at fault (an index out of range, a zero divisor), which stops the
run with an error naming the command. Executions of a block are ``const + per_row * rows``
(`VectorKernel.trips`, by the block's name in the IR); blocks the code generator adds take
the executions of the named block before them in the assembly.
"""
from __future__ import annotations

import ctypes
import functools
import re
from collections import Counter
from dataclasses import dataclass

import numpy as np

#: The instruction classes of `vector_core.cycles` in a chip file (simulator/spec.py VectorCycles).
CLASSES = ("scalar", "scalar_mem", "branch", "vector_config", "vector_alu", "vector_mem",
           "vector_indexed", "vector_reduce", "divide")
RISCV_TRIPLE = "riscv64-unknown-elf"
ROLES = ("in", "out", "inout")
OK = -1


@dataclass(frozen=True)
class Region:
    """A local-memory region the kernel's function gets a pointer to: ``row_bytes * rows`` bytes
    (``per_row``), or ``row_bytes`` whatever the rows (a table). An "out" region is written whole."""
    role: str
    row_bytes: int
    per_row: bool = True

    def nbytes(self, rows: int) -> int:
        return self.row_bytes * rows if self.per_row else self.row_bytes


@dataclass(frozen=True)
class VectorKernel:
    """One LLVM module and what the simulator needs to run and time it (module docstring)."""
    name: str
    ir: str
    regions: tuple[Region, ...]
    trips: tuple[tuple[str, int, int], ...]      # (IR block name, executions per call, per row)
    vlen_bytes: int                              # the vector length the IR's vectors are sized for
    fault: str = ""                              # what a returned position means ("index outside [0, 50)")

    def __post_init__(self):
        if not 1 <= len(self.regions) <= 3:
            raise ValueError(f"vector kernel {self.name}: 1 to 3 regions, got {len(self.regions)}")
        for r in self.regions:
            if r.role not in ROLES or r.row_bytes < 0:
                raise ValueError(f"vector kernel {self.name}: bad region {r}")

    # ---- timing ---------------------------------------------------------------------------
    def rvv_asm(self) -> str:
        """The RVV assembly the timing model counts (cached per module text and vector length)."""
        return _rvv_asm(self.ir, self.vlen_bytes)

    def block_counts(self) -> dict[str, Counter]:
        """Instruction-class counts (weighted by LMUL) per basic block, keyed by the trip entry
        each block takes its executions from."""
        return _block_counts(self.rvv_asm(), tuple(name for name, _, _ in self.trips))

    def cost_terms(self, chip) -> tuple[int, int]:
        """(cycles per call, cycles per row) on a chip: a call of ``rows`` rows takes
        ``const + per_row * rows`` cycles."""
        vc = chip.vector_core
        cpi = {c: getattr(vc.cycles, c) for c in CLASSES}
        trips = {name: (c, r) for name, c, r in self.trips}
        const, per_row = vc.launch_cycles, 0
        for block, counts in self.block_counts().items():
            cycles = sum(n * cpi[c] for c, n in counts.items())
            c, r = trips[block]
            const += c * cycles
            per_row += r * cycles
        return const, per_row

    def cycles(self, chip, rows: int) -> int:
        const, per_row = self.cost_terms(chip)
        return const + per_row * rows

    # ---- function -------------------------------------------------------------------------
    def run(self, buffers: list[np.ndarray], rows: int, param: int) -> int:
        """Call the host build on uint8 buffers (one per region, modified in place); returns -1
        or the position at fault."""
        fn = _jit(self.ir, self.name, len(self.regions))
        ptrs = [b.ctypes.data for b in buffers]
        return int(fn(*ptrs, rows, param))

    # ---- storage --------------------------------------------------------------------------
    def to_json(self) -> dict:
        return {"name": self.name, "ir": self.ir, "vlen_bytes": self.vlen_bytes,
                "regions": [[r.role, r.row_bytes, r.per_row] for r in self.regions],
                "trips": [list(t) for t in self.trips], "fault": self.fault}

    @classmethod
    def from_json(cls, d: dict) -> "VectorKernel":
        return cls(d["name"], d["ir"], tuple(Region(r[0], int(r[1]), bool(r[2])) for r in d["regions"]),
                   tuple((str(t[0]), int(t[1]), int(t[2])) for t in d["trips"]), int(d["vlen_bytes"]),
                   str(d.get("fault", "")))


# ---- LLVM ---------------------------------------------------------------------------------
@functools.cache
def _llvm():
    import llvmlite.binding as llvm
    llvm.initialize_all_targets()
    llvm.initialize_all_asmprinters()
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    return llvm


def parse(ir_text: str):
    """The module of an IR text, verified (a ValueError names the fault)."""
    llvm = _llvm()
    try:
        mod = llvm.parse_assembly(ir_text)
        mod.verify()
    except RuntimeError as e:
        raise ValueError(f"invalid LLVM IR for a vector kernel: {e}") from e
    return mod


@functools.lru_cache(maxsize=256)
def _rvv_asm(ir_text: str, vlen_bytes: int) -> str:
    llvm = _llvm()
    mod = parse(ir_text)
    tm = llvm.Target.from_triple(RISCV_TRIPLE).create_target_machine(
        cpu="generic-rv64", features=f"+m,+a,+f,+d,+c,+v,+zvl{vlen_bytes * 8}b", opt=2,
        reloc="static", codemodel="default")
    tm.set_asm_verbosity(True)          # block names (`# %row`) on the labels
    mod.triple = RISCV_TRIPLE
    mod.data_layout = str(tm.target_data)
    return tm.emit_assembly(mod)


_ENGINES: dict[str, object] = {}


@functools.lru_cache(maxsize=256)
def _jit(ir_text: str, name: str, nregions: int):
    llvm = _llvm()
    mod = parse(ir_text)
    tm = llvm.Target.from_default_triple().create_target_machine(opt=2)
    engine = llvm.create_mcjit_compiler(mod, tm)
    engine.finalize_object()
    _ENGINES[ir_text] = engine          # keeps the code alive as long as the function
    proto = ctypes.CFUNCTYPE(ctypes.c_int64, *([ctypes.c_void_p] * nregions), ctypes.c_int64, ctypes.c_int64)
    return proto(engine.get_function_address(name))


# ---- assembly -> instruction classes ------------------------------------------------------
_BLOCK = re.compile(r"^(?:\.LBB\d+_\d+:|\s*#\s*%bb\.\d+:)\s*(?:#\s*%([\w.]+))?")
_LMUL = re.compile(r"\bm(f?)(\d)\b")


def classify(mnemonic: str) -> str:
    """The cycle class of one RISC-V instruction (its mnemonic)."""
    m = mnemonic.lower()
    if m.startswith("vset"):
        return "vector_config"
    if m.startswith("v"):
        if re.match(r"v(l|s)(u|o)xei", m) or re.match(r"v(l|s)se\d", m):
            return "vector_indexed"
        if re.match(r"v(l|s)(e\d|m\.|\dre|\dr\.|seg)", m) or re.match(r"v(l|s)e\d+ff", m):
            return "vector_mem"
        if re.match(r"v(f?w?red|slide|rgather|compress|cpop|first|mv\.x\.s|fmv\.f\.s|id\.v|iota)", m):
            return "vector_reduce"
        if re.match(r"v(f?div|rem|fsqrt|frdiv|divu|remu)", m):
            return "divide"
        return "vector_alu"
    if re.match(r"(b[a-z]*|j|jal|jalr|jr|ret|call|tail)$", m):
        return "branch"
    if re.match(r"(l[bhwd]u?|fl[wdh]|s[bhwd]|fs[wdh]|c\.[ls][wd]|c\.f[ls][wd])$", m):
        return "scalar_mem"
    if re.match(r"(div|rem|fdiv|fsqrt)", m):
        return "divide"
    return "scalar"


def _block_counts(asm: str, names: tuple[str, ...]) -> dict[str, Counter]:
    counts: dict[str, Counter] = {}
    current = names[0]
    lmul = 1
    started = False
    for line in asm.splitlines():
        m = _BLOCK.match(line)
        if m:
            started = True
            name = m.group(1)
            if name in names:
                current = name
            continue
        body = line.split("#", 1)[0].strip()
        if not started or not body or body.endswith(":") or body.startswith("."):
            continue
        mnemonic, *rest = body.split(None, 1)
        operands = rest[0] if rest else ""
        cls = classify(mnemonic)
        if cls == "vector_config":
            g = _LMUL.search(operands)
            lmul = 1 if g is None or g.group(1) else int(g.group(2))
        weight = lmul if cls.startswith("vector_") and cls != "vector_config" or (cls == "divide" and mnemonic.startswith("v")) else 1
        counts.setdefault(current, Counter())[cls] += weight
    return counts
