"""Errors the compiler raises, each naming the thing at fault."""
from __future__ import annotations

from dataclasses import dataclass


class EmberError(Exception):
    """Base class of Ember's own errors."""


class CaptureError(EmberError):
    """torch.export could not capture the model."""


class LoweringError(EmberError):
    """An FX node could not be turned into `ember` ops (an op library bug or a bad model)."""


@dataclass(frozen=True)
class UnsupportedOp:
    """One aten op Ember cannot run on the accelerator: how often it occurs, and where."""
    target: str
    count: int
    sources: tuple[tuple[str, int], ...]  # (the user's own `file:line`, occurrences there)
    reason: str = ""

    @property
    def source(self) -> str:
        """The first source line (`file:line`) that produced this op."""
        return self.sources[0][0] if self.sources else "<unknown>"

    def __str__(self) -> str:
        why = f" ({self.reason})" if self.reason else ""
        where = ", ".join(src if n == 1 else f"{src} (x{n})" for src, n in self.sources)
        return f"{self.target} x{self.count} at {where}{why}"


class UnsupportedOpsError(EmberError):
    """The model has ops Ember does not support; lists every one of them."""

    def __init__(self, unsupported: list[UnsupportedOp], note: str | None = None):
        self.unsupported = unsupported
        lines = "\n".join(f"  - {u}" for u in unsupported)
        total = sum(u.count for u in unsupported)
        note = note or "Pass allow_unsupported=True to compile anyway (they are listed in cm.unsupported)."
        super().__init__(f"{total} op(s) in the model are not supported by Ember:\n{lines}\n{note}")


class DeviceMemoryError(EmberError, MemoryError):
    """What a compiled model or a session needs does not fit the chip's memories; the message
    names the sizes (weights, device state, activations) and the capacities."""


def source_of(location: str | None) -> str:
    """The source line of an MLIR location as a step records it: `loc("x"("m.py":12:0))` ->
    `m.py:12`; "" when it has none."""
    import re
    m = re.search(r'"([^"]+)":(\d+)', location or "")
    return f"{m.group(1)}:{m.group(2)}" if m else ""


def format_bytes(n: float) -> str:
    """A size in the binary unit that reads best: `24.6 MiB`, `1.07 GiB`."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= scale:
            return f"{n / scale:,.2f} {unit}" if unit == "GiB" else f"{n / scale:,.1f} {unit}"
    return f"{int(n)} B"
