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
    """`aten.embedding.default` -> torch.ops.aten.embedding.default. Only a registered torch op
    overload resolves: a Program file is data, and loading one runs nothing else it names."""
    namespace, _, rest = name.partition(".") if isinstance(name, str) else ("", "", "")
    op_name, _, overload = rest.rpartition(".")
    if not (namespace and op_name and overload):
        raise HostCallError(f"the Program calls {name!r} on the host, which is not a torch op overload "
                            "('namespace.op.overload')")
    try:
        target = getattr(getattr(getattr(torch.ops, namespace), op_name), overload)
    except (AttributeError, RuntimeError) as e:
        raise HostCallError(f"the Program calls '{name}' on the host, which is not a registered torch op in "
                            f"this process (is the library that defines it imported?)") from e
    if not isinstance(target, torch._ops.OpOverload):
        raise HostCallError(f"the Program calls '{name}' on the host, which is not a torch op overload")
    return target


#: Tags of a host call's non-tensor arguments, and the torch type each must resolve to.
_TAGGED = {"$dtype": torch.dtype, "$layout": torch.layout, "$memory_format": torch.memory_format}


def _torch_constant(tag: str, value: Any, target: str, where: str) -> Any:
    """`torch.<value>` if it is a `torch.dtype` / `torch.layout` / `torch.memory_format` as `tag`
    says; anything else (a function, a module) is refused."""
    kind = _TAGGED[tag]
    found = getattr(torch, value, None) if isinstance(value, str) and value.isidentifier() else None
    if not isinstance(found, kind):
        raise HostCallError(f"{where}: host call '{target}' has {tag} {value!r}, which is not a "
                            f"torch.{kind.__name__}")
    return found


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
            if tag in _TAGGED:
                return _torch_constant(tag, value, data["target"], where)
            if tag == "$device":
                try:
                    return torch.device(value)
                except (RuntimeError, TypeError) as e:
                    raise HostCallError(f"{where}: host call '{data['target']}' has $device {value!r}, "
                                        f"which is not a torch device") from e
            raise HostCallError(f"{where}: unknown tag {tag!r} in host call '{data['target']}'")
        if x is not None and not isinstance(x, (bool, int, float, str)):
            raise HostCallError(f"{where}: host call '{data['target']}' has an argument of type "
                                f"{type(x).__name__}")
        return x

    if not isinstance(data, dict) or not {"target", "args", "kwargs"} <= set(data):
        raise HostCallError(f"{where}: a host call is not a record of target, args and kwargs")
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
