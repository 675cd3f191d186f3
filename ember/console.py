"""The one rich Console the CLI prints through: terminal width on a tty, wide in pipes and logs
(rich's 80-column default would crop the tables that CI logs and scripts read)."""
from __future__ import annotations

import sys

from rich.console import Console

console = Console(width=None if sys.stdout.isatty() else 160)
