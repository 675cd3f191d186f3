"""Host calls: read back from a Program's plain-data form, and run with torch.

See `compiler/hostcalls.py` for the format. A call runs on whichever torch device its tensor
operands are on; a `device=` argument recorded at compile time is replaced by that device, so a
partitioned Program runs its host segments next to the data on `cpu` or `cuda`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch


class HostCallError(ValueError):
    """A host call in a Program that this process cannot run."""


@dataclass(frozen=True)
class HostOp:
    """A host call ready to run: `op(*args, **kwargs)` with `{"$tensor": i}` slots filled per call."""
    name: str
    op: Any
    args: Any
    kwargs: dict[str, Any]

    def __call__(self, tensors: Sequence[torch.Tensor], device: torch.device | None = None) -> list[torch.Tensor]:
        def fill(x: Any) -> Any:
            if isinstance(x, _Slot):
                return tensors[x.index]
            if isinstance(x, list):
                return [fill(a) for a in x]
            if isinstance(x, torch.device) and device is not None:
                return device
            return x

        out = self.op(*fill(self.args), **{k: fill(v) for k, v in self.kwargs.items()})
        return list(out) if isinstance(out, (tuple, list)) else [out]


@dataclass(frozen=True)
class _Slot:
    index: int


def resolve_target(name: str) -> Any:
    """`aten.embedding.default` -> torch.ops.aten.embedding.default."""
    namespace, _, rest = name.partition(".")
    op_name, _, overload = rest.rpartition(".")
    try:
        return getattr(getattr(getattr(torch.ops, namespace), op_name), overload)
    except (AttributeError, RuntimeError) as e:
        raise HostCallError(f"the Program calls '{name}' on the host, which is not a registered torch op in "
                            f"this process (is the library that defines it imported?)") from e


def decode_host_call(data: dict[str, Any] | str, where: str = "Program") -> HostOp:
    """A HostOp from `compiler.hostcalls.encode_host_call`'s output."""
    if isinstance(data, str):
        raise HostCallError(f"{where}: a host call was not written to the file: {data}")

    def dec(x: Any) -> Any:
        if isinstance(x, list):
            return [dec(a) for a in x]
        if isinstance(x, dict):
            (tag, value), = x.items()
            if tag == "$tensor":
                return _Slot(int(value))
            if tag == "$dtype":
                return getattr(torch, value)
            if tag == "$device":
                return torch.device(value)
            if tag == "$layout":
                return getattr(torch, value)
            if tag == "$memory_format":
                return getattr(torch, value)
            raise HostCallError(f"{where}: unknown tag {tag!r} in host call '{data['target']}'")
        return x

    return HostOp(data["target"], resolve_target(data["target"]), dec(data["args"]),
                  {k: dec(v) for k, v in data["kwargs"].items()})


def host_op_of(call: Any) -> HostOp:
    """A HostOp from an in-process `compiler.importer.HostCall` (any callable target)."""
    from compiler.importer import _HostArg, target_name

    def conv(x: Any) -> Any:
        if isinstance(x, _HostArg):
            return _Slot(x.index)
        if isinstance(x, (list, tuple)):
            return [conv(a) for a in x]
        return x

    return HostOp(target_name(call.target), call.target, conv(list(call.args)),
                  {k: conv(v) for k, v in call.kwargs.items()})
