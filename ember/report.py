"""Human-readable summaries of a compiled model (shared by the CLI and the demo)."""
from __future__ import annotations

from collections import Counter

from rich.table import Table

from compiler.errors import source_of


def op_summary_table(counts: Counter, title: str) -> Table:
    """Graph-level op counts, most frequent first."""
    table = Table(title=title)
    table.add_column("op")
    table.add_column("count", justify="right")
    for name, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        table.add_row(name, str(n))
    table.add_row("[bold]total[/bold]", f"[bold]{sum(counts.values())}[/bold]")
    return table


def unsupported_table(unsupported) -> Table:
    table = Table(title="Ops that stay on the host")
    for col in ("aten op", "count", "source lines", "why"):
        table.add_column(col)
    for u in unsupported:
        where = ", ".join(src if n == 1 else f"{src} (x{n})" for src, n in u.sources)
        table.add_row(u.target, str(u.count), where, u.reason)
    return table


def run_summary_tables(run, top: int = 10) -> list[Table]:
    """Where the time of a simulated run goes: by op, by engine."""
    by_op: dict[str, list] = {}
    for s in run.steps:
        if s.kind in ("kernel", "transfer"):
            key = s.op if s.kind == "kernel" else f"transfer {s.op}"
            row = by_op.setdefault(key, [0, 0, 0, 0.0])
            row[0] += 1
            row[1] += s.cycles
            row[2] += s.predicted_cycles or 0
            row[3] += s.roofline_cycles or 0.0
    ops = Table(title=f"Top ops by simulated time ({run.cycles:,} cycles, {run.seconds * 1e3:.3f} ms "
                      f"at {run.chip.clock_hz / 1e9:g} GHz)")
    for col in ("op", "count", "cycles", "% of run", "predicted", "roofline"):
        ops.add_column(col, justify="left" if col == "op" else "right")
    for name, (n, cycles, predicted, roof) in sorted(by_op.items(), key=lambda kv: -kv[1][1])[:top]:
        ops.add_row(name, str(n), f"{cycles:,}", f"{100 * cycles / max(run.cycles, 1):.1f}",
                    f"{predicted:,}" if predicted else "", f"{roof:,.0f}" if roof else "")
    host = [s for s in run.steps if s.kind == "host"]
    b = run.breakdown
    caption = (f"device {b['device'] * 1e3:.3f} ms, host link {b['host_link'] * 1e3:.3f} ms, "
               f"host {b['host'] * 1e3:.3f} ms")
    if host:
        caption += (f"; {len(host)} op(s) ran on the host, in modelled host time; their tensors cross the host "
                    "link (transfer rows)")
    ops.caption = caption
    engines = Table(title="Engine utilization", caption="busy cycles / (PEs x run cycles)")
    engines.add_column("engine")
    engines.add_column("utilization", justify="right")
    for engine, u in run.stats["engine_utilization"].items():
        engines.add_row(engine, f"{100 * u:.1f}%")
    return [ops, engines]


def per_op_table(run, limit: int | None = None) -> Table:
    """Every accelerator op of a simulated run in program order: its source line, the cost
    model's predicted cycles, the simulated cycles, the roofline bound max(ops / peak, bytes /
    bandwidth), and how far the simulation is from each."""
    table = Table(title="Per op: predicted, simulated and roofline cycles")
    for col in ("#", "op", "source", "predicted", "simulated", "roofline", "pred. error", "of roofline"):
        table.add_column(col, justify="left" if col in ("op", "source") else "right")
    kernels = [s for s in run.steps if s.kind == "kernel"]
    for i, s in enumerate(kernels[:limit]):
        error = f"{100 * (s.predicted_cycles - s.cycles) / max(s.cycles, 1):+.1f}%" if s.predicted_cycles else ""
        bound = f"{100 * s.roofline_cycles / max(s.cycles, 1):.0f}%" if s.roofline_cycles else ""
        table.add_row(str(i), s.op, _short_location(s.location), f"{s.predicted_cycles:,}" if s.predicted_cycles else "",
                      f"{s.cycles:,}", f"{s.roofline_cycles:,.0f}" if s.roofline_cycles else "", error, bound)
    if limit is not None and len(kernels) > limit:
        table.caption = f"first {limit} of {len(kernels)} accelerator ops"
    return table


def _short_location(location: str) -> str:
    """`loc("file.py":12:3)` -> `file.py:12` (the file's name only)."""
    return source_of(location).rsplit("/", 1)[-1]


def generation_tables(gen, title: str) -> list[Table]:
    """`ember.generate`'s latencies, and where the time of the prefill and of a decode step went."""
    summary = Table(title=title)
    for col in ("batch", "prompt", "new tokens", "TTFT ms", "TPOT ms", "tokens/s"):
        summary.add_column(col, justify="right")
    summary.add_row(str(gen.batch), str(gen.prompt_len), str(len(gen.step_s) + 1), f"{gen.ttft_s * 1e3:.3f}",
                    f"{gen.tpot_s * 1e3:.3f}", f"{gen.tokens_per_s:,.1f}")
    where = Table(title="Where the time went (ms)", caption="weights: GEMMs (in decode, streaming every weight "
                                                           "once); attention: over the KV cache")
    parts = list(gen.breakdown.get("prefill", {}))
    where.add_column("phase")
    for p in parts:
        where.add_column(p, justify="right")
    for phase, label in (("prefill", "prefill"), ("step", "decode step (mean)")):
        if phase in gen.breakdown:
            where.add_row(label, *(f"{gen.breakdown[phase][p] * 1e3:.3f}" for p in parts))
    return [summary, where]
