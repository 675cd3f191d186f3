"""``simulate(program, chip)``: validate, time (C++ engine), execute (functional engine), report."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from simulator.errors import DeadlockError
from simulator.functional import Machine
from simulator.isa import ChipProgram, Engine, Space, format_command
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
    program = program.expand()
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
             timing_only: bool = False, engine: str = "cpp") -> SimResult:
    """Run a program on a chip.

    ``memory_init`` maps ``("dram"|"sram", addr)`` or ``("local", pe, addr)`` to an array whose
    bytes are written there before the run. With ``timing_only`` no numbers are computed.
    """
    chip = load_chip(chip)
    program = program.expand()      # compact loops -> plain commands
    validate(program, chip)
    timing = run_timing(program, chip, engine)
    machine = None
    if not timing_only:
        machine = Machine(chip)
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
