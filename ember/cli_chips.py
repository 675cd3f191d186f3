"""`ember chips`: list chip specs, `ember chips show NAME` prints one."""
from __future__ import annotations

import typer

chips_app = typer.Typer(invoke_without_command=True, help="List chip specs; `ember chips show NAME` prints one.")


@chips_app.callback()
def chips(ctx: typer.Context) -> None:
    if ctx.invoked_subcommand is None:
        raise NotImplementedError("chip specs are not available yet")
