"""The `ember` command line. Each command group lives in its own module and is added here."""
from __future__ import annotations

import typer

from ember.cli_chips import chips_app

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Compile PyTorch models for an MTIA-style accelerator and simulate them.")
app.add_typer(chips_app, name="chips")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
