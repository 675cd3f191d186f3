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


def write_trace(path: str, events: list[dict]) -> None:
    with open(path, "w") as f:
        json.dump({"traceEvents": events, "displayTimeUnit": "ns"}, f)
