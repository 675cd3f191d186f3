"""Faults the simulator finds. Each stops the run with a message naming the command."""
from __future__ import annotations


class SimulatorError(RuntimeError):
    """Base class of every fault the simulator reports."""


class AddressOutOfRange(SimulatorError):
    """A command touches bytes outside a memory (or names a PE that does not exist)."""


class LocalMemoryOverflow(AddressOutOfRange):
    """A command touches local memory past the PE's local memory size."""


class IndexOutOfRange(AddressOutOfRange):
    """An indexed DMA read an index outside the positions of the tensor its address points
    into (an embedding id or a cache position out of range); nothing is moved."""


class UninitializedRead(SimulatorError):
    """A command reads bytes that nothing has written (memory starts poisoned)."""


class DeadlockError(SimulatorError):
    """No command can issue but some are left; ``blocked`` lists what each PE waits on."""

    def __init__(self, message: str, blocked: list[dict]):
        super().__init__(message)
        self.blocked = blocked


class InvalidCommand(SimulatorError):
    """A command's operands make no sense (unknown opcode, zero-sized matmul, bad dtype)."""
