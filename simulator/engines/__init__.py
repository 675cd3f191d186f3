"""Functional semantics of each engine, one file per engine, registered by opcode.

Each entry is ``fn(machine, cmd, a, pe, what)``: it reads its inputs from ``machine`` and
hands its outputs to ``machine.defer`` / ``machine.defer2d`` (written at completion).
"""
from simulator.engines.registry import FUNCTIONAL, register
from simulator.engines import dma, dpe, mlu, reduce, simd, vec  # noqa: F401  (they register)

__all__ = ["FUNCTIONAL", "register"]
