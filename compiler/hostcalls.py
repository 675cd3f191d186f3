"""Host calls as plain data, so a Program file can hold them.

A host call is an aten (or other registered) op the accelerator cannot run, kept for the host by
`allow_unsupported=True`. In a Program it is written as

    {"target": "aten.embedding.default", "args": [...], "kwargs": {...}}

where the argument structure is JSON with one-key objects for what JSON lacks:
`{"$tensor": i}` is the call's i-th tensor operand, `{"$dtype": "float32"}`, `{"$device": "cpu"}`,
`{"$layout": "strided"}` and `{"$memory_format": "contiguous_format"}` are torch's enums by name.
`runtime.host` reads it back.
"""
from __future__ import annotations

from typing import Any

import torch

from compiler.errors import EmberError
from compiler.importer import HostCall, _HostArg, target_name


class HostCallEncodingError(EmberError):
    """A host call whose target or arguments have no plain-data form."""


def encode_host_call(call: HostCall) -> dict[str, Any]:
    """The plain-data form of `call`; HostCallEncodingError names what cannot be written."""
    name = target_name(call.target)
    if not isinstance(call.target, torch._ops.OpOverload):
        raise HostCallEncodingError(f"host call '{name}' is not a registered torch op")

    def enc(x: Any) -> Any:
        if isinstance(x, _HostArg):
            return {"$tensor": x.index}
        if x is None or isinstance(x, (bool, int, float, str)):
            return x
        if isinstance(x, (list, tuple)):
            return [enc(a) for a in x]
        if isinstance(x, torch.dtype):
            return {"$dtype": str(x).removeprefix("torch.")}
        if isinstance(x, torch.device):
            return {"$device": str(x)}
        if isinstance(x, torch.layout):
            return {"$layout": str(x).removeprefix("torch.")}
        if isinstance(x, torch.memory_format):
            return {"$memory_format": str(x).removeprefix("torch.")}
        raise HostCallEncodingError(f"host call '{name}' has an argument of type {type(x).__name__} "
                                    f"({x!r}) that a Program file cannot hold")

    return {"target": name, "args": enc(list(call.args)), "kwargs": {k: enc(v) for k, v in call.kwargs.items()}}


def encode_host_calls(calls: dict[int, HostCall]) -> list[dict[str, Any] | str]:
    """Every call in index order; a call that cannot be encoded is replaced by the reason."""
    out: list[dict[str, Any] | str] = []
    for index in range(len(calls)):
        try:
            out.append(encode_host_call(calls[index]))
        except HostCallEncodingError as e:
            out.append(str(e))
    return out
