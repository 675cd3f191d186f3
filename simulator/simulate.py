"""``simulate(program, chip)``: validate, time (C++ engine), execute (functional engine), report."""
from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from typing import Any, Mapping

import numpy as np

from simulator.errors import DeadlockError, InvalidCommand
from simulator.functional import Machine
from simulator.isa import NUM_ARGS, ChipProgram, Engine, Op, RelocatedProgram, Space, format_command
from simulator.spec import ChipSpec, load_chip
from simulator.stats import build_stats
from simulator.timing_params import timing_params
from simulator.timing_ref import TimingResult, run_timing_ref
from simulator.trace import trace_events, write_trace
from simulator.validate import validate


def run_timing(program: ChipProgram, chip: ChipSpec, engine: str = "cpp",
               record: bool = True) -> TimingResult:
    """Time a program with the C++ engine (``"cpp"``) or the Python reference (``"python"``).

    Raises DeadlockError when commands are left that can never issue.
    """
    params = timing_params(chip)
    program = with_vector_cycles(program.expand(), chip)
    cmds = program.commands
    if engine == "cpp":
        from simulator import _core
        r = _core.run_timing(cmds, params, program.num_pes, record)
        res = TimingResult(int(r["cycles"]), r["start"], r["end"], r["busy"], list(r["blocked"]))
    elif engine == "python":
        res = run_timing_ref(cmds, params, program.num_pes)
    else:
        raise ValueError(f"unknown timing engine {engine!r}; use 'cpp' or 'python'")
    if res.blocked:
        raise _deadlock(program, chip, res)
    return res


def with_vector_cycles(program: ChipProgram, chip: ChipSpec) -> ChipProgram:
    """The (expanded) program with each VEC_KERNEL's a[7] set to its cycles on ``chip``, counted
    from its kernel's RVV code (simulator/isa/vector.py); the program itself when it has none."""
    cmds = program.commands
    calls = np.flatnonzero(cmds["op"] == int(Op.VEC_KERNEL))
    if len(calls) == 0:
        return program
    cmds = cmds.copy()
    a = cmds["a"]
    which = a[calls, 0]
    if (bad := (which < 0) | (which >= len(program.vector_kernels))).any():
        i = int(calls[np.flatnonzero(bad)[0]])
        raise InvalidCommand(f"command #{i} ({format_command(cmds[i], i)}): calls vector kernel k{int(a[i, 0])}, "
                             f"but the program has {len(program.vector_kernels)}")
    terms = np.array([k.cost_terms(chip) for k in program.vector_kernels], np.int64).reshape(-1, 2)
    a[calls, 7] = terms[which, 0] + terms[which, 1] * a[calls, 4]
    cmds["a"] = a
    return ChipProgram(cmds, program.num_pes, program.name, vector_kernels=program.vector_kernels)


def _deadlock(program: ChipProgram, chip: ChipSpec, res: TimingResult) -> DeadlockError:
    cols = chip.pe_grid.cols
    lines = [f"deadlock: {len(res.blocked)} command queue(s) can never proceed "
             f"(last event at cycle {res.cycles}):"]
    for b in res.blocked:
        cmd = format_command(program.commands[b["index"]], b["index"])
        why = (f"waits for token t{b['token']} >= {b['need']} (signalled {b['have']} times)"
               if b["token"] >= 0 else "is behind a blocked command")
        lines.append(f"  PE {b['pe']} ({b['pe'] // cols},{b['pe'] % cols}) "
                     f"{Engine(b['engine']).name.lower()} queue: `{cmd}` {why}")
    return DeadlockError("\n".join(lines), res.blocked)


class SimResult:
    """Outcome of a run: ``cycles``, ``seconds``, ``stats``, trace, and memory readback."""

    def __init__(self, program: ChipProgram, chip: ChipSpec, timing: TimingResult,
                 machine: Machine | None):
        self.program = program
        self.chip = chip
        self.timing = timing
        self.machine = machine
        self.cycles = timing.cycles
        self.seconds = timing.cycles / chip.clock_hz
        self.stats = build_stats(program.commands, chip, timing.cycles, timing.busy)

    def read(self, space: "str | Space", addr: int, shape, dtype, pe: int | None = None) -> np.ndarray:
        """Read back a region written by the program (raises if any byte was never written)."""
        if self.machine is None:
            raise RuntimeError("timing_only run: no memory contents to read")
        return self.machine.mem(space, pe).read_array(addr, shape, dtype, "readback").copy()

    def trace_events(self, max_events: int | None = None) -> list[dict]:
        return trace_events(self.program.commands, self.timing.start, self.timing.end, self.chip,
                            max_events)

    def write_trace(self, path: str, max_events: int | None = None) -> None:
        """Chrome/Perfetto JSON trace: one process per PE, one track per engine."""
        write_trace(path, self.trace_events(max_events))

    def __repr__(self) -> str:
        return f"SimResult(cycles={self.cycles}, seconds={self.seconds:.3e}, chip={self.chip.name})"


#: Operand slots holding local-memory addresses, per opcode (the timing model does not read
#: them); SIMD_SCALAR's a[3] (the immediate) is not read either.
_UNTIMED_SLOTS = {Op.DPE_MATMUL: (0, 1, 2), Op.RE_ACC: (0, 1), Op.RE_SEND: (0, 1),
                  Op.SIMD_UNARY: (0, 1), Op.SIMD_BINARY: (0, 1, 2), Op.SIMD_SCALAR: (0, 1, 3),
                  Op.SIMD_ROW_REDUCE: (0, 1), Op.SIMD_ROW_BCAST: (0, 1, 2), Op.MLU_TRANSPOSE: (0, 1),
                  Op.MLU_COPY2D: (0, 1), Op.MLU_CONCAT: (0, 1, 2), Op.SIMD_MX_QUANT: (0, 1),
                  Op.VEC_KERNEL: (1, 2, 3, 5)}


class TimingCache:
    """Timing-only results of programs, keyed by exactly what the timing model reads.

    The timing engine reads an address only to pick the DRAM channel or SRAM bank a DMA
    starts on: ``(addr // interleave) % channels``, a function of ``addr`` modulo
    ``interleave * channels`` (also for every loop iteration, whose strides are in the key).
    Local-memory and host addresses pick no server, nor do an indexed DMA's index address, count
    and step (a[6], a[7]). So the key is the program with DMA
    DRAM/SRAM addresses reduced modulo the least common multiple of the two memories'
    ``interleave * channels``, and every other address (and SIMD immediates) zeroed. A
    relocated program's key is its base's key plus its deltas reduced the same way (a base's
    own key is that of its relocation by zeros).

    Results of a hit are the first run's (cycles, engine busy time, trace, stats: none of
    them depends on addresses). At most ``capacity`` results are kept (least recently used
    go first).
    """

    def __init__(self, capacity: int = 512, max_commands: int = 20_000_000):
        self.capacity = capacity
        #: expanded commands kept at most, over all results (a large kernel's are ~100 MB)
        self.max_commands = max_commands
        self._kept_commands = 0
        self._results: "OrderedDict[tuple, SimResult]" = OrderedDict()
        self._base_keys: dict[int, tuple[ChipProgram, str]] = {}
        self.hits = 0
        self.misses = 0

    @staticmethod
    def period(chip: ChipSpec) -> int:
        return math.lcm(chip.dram.interleave_bytes * chip.dram.channels,
                        chip.sram.interleave_bytes * chip.sram.banks)

    def _content_key(self, program: ChipProgram, period: int) -> str:
        cmds = program.commands.copy()
        strides = program.strides.copy()
        op = cmds["op"]
        a = cmds["a"]
        dma = op == int(Op.DMA)
        for j, field in ((0, "src_space"), (1, "dst_space")):
            space = cmds[field]
            mem = dma & ((space == int(Space.DRAM)) | (space == int(Space.SRAM)))
            a[mem, j] %= period
            a[dma & ~mem, j] = 0
            strides[dma & ~mem, j] = 0
        # an indexed DMA's index address, count and step: its timing never depends on them
        a[dma, 6:] = 0
        strides[dma, 6:NUM_ARGS] = 0
        for o, slots in _UNTIMED_SLOTS.items():
            rows = np.flatnonzero(op == int(o))
            for j in slots:
                a[rows, j] = 0
                strides[rows, j] = 0
        cmds["a"] = a
        h = hashlib.blake2b(digest_size=20)
        h.update(np.int64(program.num_pes).tobytes())
        for k in program.vector_kernels:          # a call's cycles are its kernel's
            h.update(k.ir.encode())
            h.update(repr(k.trips).encode())
        for arr in (cmds, program.loops, strides):
            h.update(np.ascontiguousarray(arr).tobytes())
        return h.hexdigest()

    def key(self, program: ChipProgram, chip: ChipSpec) -> tuple:
        period = self.period(chip)
        chip_key = chip.fingerprint()
        relocated = isinstance(program, RelocatedProgram)
        if relocated or program.addr_slots is not None:      # a relocated kernel, or the base of some
            base = program.base if relocated else program
            known = self._base_keys.get(id(base))
            if known is None or known[0] is not base:
                known = (base, self._content_key(base, period))
                self._base_keys[id(base)] = known
            # the base is its own relocation by zeros: deltas alike modulo the period time alike
            deltas = [int(d) % period for d in program.deltas] if relocated else []
            while deltas and deltas[-1] == 0:
                deltas.pop()
            return chip_key, known[1], tuple(deltas)
        return chip_key, self._content_key(program, period)

    def get(self, key: tuple) -> "SimResult | None":
        res = self._results.get(key)
        if res is None:
            self.misses += 1
            return None
        self.hits += 1
        self._results.move_to_end(key)
        return res

    def put(self, key: tuple, res: "SimResult") -> None:
        if key in self._results:
            self._kept_commands -= len(self._results[key].program)
        self._results[key] = res
        self._kept_commands += len(res.program)
        self._results.move_to_end(key)
        while len(self._results) > 1 and (len(self._results) > self.capacity
                                          or self._kept_commands > self.max_commands):
            _, old = self._results.popitem(last=False)
            self._kept_commands -= len(old.program)

    def clear(self) -> None:
        self._results.clear()
        self._base_keys.clear()
        self._kept_commands = 0


#: The cache the runtime's timing-only runs share (bounded by results and by expanded commands,
#: ~100 bytes each with their timing; keyed by content and chip).
TIMING_CACHE = TimingCache(capacity=4096, max_commands=16_000_000)


MemoryInit = "Mapping[tuple, np.ndarray] | Iterable[tuple[tuple, np.ndarray]]"


def _init_memory(machine: Machine, memory_init: Any) -> None:
    items = memory_init.items() if isinstance(memory_init, Mapping) else memory_init
    for key, value in items:
        if len(key) == 2:
            space, addr = key
            pe = None
        else:
            space, pe, addr = key
        machine.mem(space, pe).write(int(addr), np.asarray(value), f"memory_init {key}")


def simulate(program: ChipProgram, chip: "str | ChipSpec" = "mtia2i", memory_init: Any = None,
             timing_only: bool = False, engine: str = "cpp", cache: TimingCache | None = None) -> SimResult:
    """Run a program on a chip.

    ``memory_init`` maps ``("dram"|"sram", addr)`` or ``("local", pe, addr)`` to an array whose
    bytes are written there before the run. With ``timing_only`` no numbers are computed, and
    a ``cache`` (TimingCache) answers a program whose timing it has already computed.
    A relocated program (RelocatedProgram) found in the cache is not validated again: its
    compiler checked that each moved address stays inside the operand it points into.
    """
    chip = load_chip(chip)
    key = None
    if timing_only and cache is not None:
        key = cache.key(program, chip)
        hit = cache.get(key)
        if hit is not None:
            if not isinstance(program, RelocatedProgram):
                validate(program.expand(), chip)     # addresses differ from the cached run's
            return hit
    program = program.expand()      # compact loops -> plain commands
    validate(program, chip)
    program = with_vector_cycles(program, chip)
    timing = run_timing(program, chip, engine)
    if key is not None:
        res = SimResult(program, chip, timing, None)
        cache.put(key, res)
        return res
    machine = None
    if not timing_only:
        machine = Machine(chip)
        machine.vector_kernels = program.vector_kernels
        if memory_init is not None:
            _init_memory(machine, memory_init)
        _execute(program, machine, timing)
    return SimResult(program, chip, timing, machine)


def _execute(program: ChipProgram, machine: Machine, timing: TimingResult) -> None:
    """Run commands in time order: inputs read at issue, outputs written at completion."""
    n = len(program)
    if n == 0:
        return
    idx = np.arange(n)
    zero = timing.end == timing.start
    times = np.concatenate([timing.start, timing.end])
    # completions (0) before issues (1) at the same cycle; a zero-length command completes
    # right after its own issue (2)
    phase = np.concatenate([np.ones(n, np.int64), np.where(zero, 2, 0)])
    which = np.concatenate([idx, idx])
    order = np.lexsort((which, phase, times))
    cmds = program.commands
    pending: dict[int, list] = {}
    for k in order.tolist():
        i = int(which[k])
        if k < n:
            pending[i] = machine.execute(cmds[i], i)
        else:
            machine.commit(pending.pop(i))
