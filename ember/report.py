"""Human-readable summaries of a compiled model (shared by the CLI and the demo)."""
from __future__ import annotations

from collections import Counter

from rich.table import Table


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
