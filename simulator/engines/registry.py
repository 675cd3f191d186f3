"""Opcode -> functional implementation."""
from __future__ import annotations

from typing import Callable

from simulator.isa import Op

FUNCTIONAL: dict[Op, Callable] = {}


def register(*ops: Op):
    """Register the decorated function as the semantics of ``ops`` (once each)."""
    def deco(fn):
        for op in ops:
            if op in FUNCTIONAL:
                raise ValueError(f"{op.name} registered twice")
            FUNCTIONAL[op] = fn
        return fn
    return deco
