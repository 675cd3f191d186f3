"""Chrome / Perfetto trace (JSON ``traceEvents``): one process per PE, one track per engine."""
from __future__ import annotations

import json

import numpy as np

from simulator.isa import Engine, Op
from simulator.spec import ChipSpec


def trace_events(cmds: np.ndarray, start: np.ndarray, end: np.ndarray, chip: ChipSpec,
                 max_events: int | None = None) -> list[dict]:
    """Complete ("X") events with timestamps in microseconds; args carry cycles."""
    us_per_cycle = 1e6 / chip.clock_hz
    cols = chip.pe_grid.cols
    events: list[dict] = []
    for pe in range(chip.num_pes):
        events.append({"name": "process_name", "ph": "M", "pid": pe,
                       "args": {"name": f"PE {pe} ({pe // cols},{pe % cols})"}})
        for e in Engine:
            events.append({"name": "thread_name", "ph": "M", "pid": pe, "tid": int(e),
                           "args": {"name": e.name.lower()}})
    names = [o.name.lower() for o in Op]
    n = len(cmds) if max_events is None else min(len(cmds), max_events)
    ops, pes, engs = cmds["op"][:n].tolist(), cmds["pe"][:n].tolist(), cmds["engine"][:n].tolist()
    st, en = start[:n].tolist(), end[:n].tolist()
    for i in range(n):
        events.append({"name": names[ops[i]], "ph": "X", "pid": pes[i], "tid": engs[i],
                       "ts": st[i] * us_per_cycle, "dur": (en[i] - st[i]) * us_per_cycle,
                       "args": {"index": i, "start_cycle": st[i], "end_cycle": en[i]}})
    return events


class DeferredEvents:
    """The events of one timed program, shifted by ``offset_cycles``, made only when a trace is
    written: a long run keeps its programs' timings, not millions of event dicts."""

    def __init__(self, cmds_of, start: np.ndarray, end: np.ndarray, chip: ChipSpec,
                 offset_cycles: int = 0, max_events: int | None = None):
        self._cmds_of = cmds_of            # () -> the command array (a relocated program's is made on demand)
        self.start, self.end, self.chip = start, end, chip
        self.offset_cycles, self.max_events = offset_cycles, max_events

    def events(self) -> list[dict]:
        events = trace_events(self._cmds_of(), self.start, self.end, self.chip, self.max_events)
        shift = self.offset_cycles * 1e6 / self.chip.clock_hz
        return [{**ev, "ts": ev["ts"] + shift} if "ts" in ev else ev for ev in events]


def write_trace(path: str, events: list) -> None:
    """Write events (dicts, or DeferredEvents expanded here) as a Chrome/Perfetto JSON trace."""
    flat: list[dict] = []
    for ev in events:
        if isinstance(ev, DeferredEvents):
            flat.extend(ev.events())
        else:
            flat.append(ev)
    with open(path, "w") as f:
        json.dump({"traceEvents": flat, "displayTimeUnit": "ns"}, f)
