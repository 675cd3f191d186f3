"""`ember chips`: list chip specs, `ember chips show NAME` prints one."""
from __future__ import annotations

import typer
from ember.console import console
from rich.table import Table
from rich.tree import Tree

from simulator.spec import ChipSpecError, list_chips, load_chip

chips_app = typer.Typer(invoke_without_command=True, help="List chip specs; `ember chips show NAME` prints one.")


def _size(n: float) -> str:
    for unit, div in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= div:
            return f"{n / div:g} {unit}"
    return f"{n:g} B"


def _rate(n: float) -> str:
    return f"{n / 1e12:g} TB/s" if n >= 1e12 else f"{n / 1e9:g} GB/s"


@chips_app.callback()
def chips(ctx: typer.Context) -> None:
    """List the chips under simulator/chips/ as a table."""
    if ctx.invoked_subcommand is not None:
        return
    names = list_chips()
    table = Table(title="Ember chip specs")
    for col in ("name", "PEs", "clock", "DPE", "bf16 peak", "int8 peak", "local mem", "SRAM",
                "DRAM", "DRAM BW"):
        # Names are what users type next: never wrap or crop them, even in a narrow pipe.
        table.add_column(col, no_wrap=col == "name", min_width=max(map(len, names)) if col == "name" else None)
    for name in names:
        c = load_chip(name)
        table.add_row(name, f"{c.pe_grid.rows}x{c.pe_grid.cols}", f"{c.clock_hz / 1e9:g} GHz",
                      c.dpe.model.value, f"{c.peak_ops_per_s('bf16') / 1e12:.1f} TFLOPS",
                      f"{c.peak_ops_per_s('int8') / 1e12:.1f} TOPS", _size(c.local_mem.bytes),
                      _size(c.sram.bytes), f"{_size(c.dram.bytes)} {c.dram.kind}",
                      _rate(c.dram.bytes_per_s))
    console.print(table)


@chips_app.command()
def show(name: str = typer.Argument(..., help="chip name or path to a YAML file")) -> None:
    """Print every field of one chip, with derived peaks."""
    try:
        c = load_chip(name)
    except ChipSpecError as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(1)
    tree = Tree(f"[bold]{c.name}[/bold]: {c.description}")
    for key, value in c.model_dump(mode="json").items():
        if key in ("name", "description"):
            continue
        if isinstance(value, dict):
            branch = tree.add(f"[bold]{key}[/bold]")
            for k, v in value.items():
                branch.add(f"{k}: {v}")
        else:
            tree.add(f"{key}: {value}")
    derived = tree.add("[bold]derived[/bold]")
    for d in c.dpe.macs_per_cycle.listed():
        derived.add(f"peak {d}: {c.peak_ops_per_s(d) / 1e12:.2f} T ops/s")
    derived.add(f"fingerprint: {c.fingerprint()[:16]}")
    console.print(tree)
