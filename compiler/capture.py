"""Capture: an nn.Module and example inputs to an FX graph in ATen IR (torch.export).

After export, the graph is decomposed with PyTorch's default table, minus every aten target that
`ops/` lowers itself, so ops the chip runs natively (attention, norms, gelu/silu, softmax, linear)
stay whole.
"""
from __future__ import annotations

import contextlib
import functools
import warnings
from typing import Any, Iterator

import torch

from compiler.errors import CaptureError
from ops.registry import supported_targets


@functools.cache
def decomposition_table() -> dict[Any, Any]:
    """PyTorch's default decompositions, without the targets `ops/` keeps whole."""
    table = dict(torch.export.default_decompositions())
    for target in supported_targets():
        table.pop(target, None)
    return table


def check_inputs(model: Any, example_inputs: Any) -> tuple[torch.Tensor, ...]:
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"ember.compile expects a torch.nn.Module, got {type(model).__name__}")
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    if not isinstance(example_inputs, (tuple, list)):
        raise TypeError("ember.compile expects example_inputs as a tuple of tensors, "
                        f"got {type(example_inputs).__name__}")
    for i, x in enumerate(example_inputs):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"example input {i} is a {type(x).__name__}; Ember takes tensors only")
    return tuple(example_inputs)


#: while `reusing_captures` is active: (model object, input shapes and types) -> its program
_captures: dict[Any, Any] | None = None


@contextlib.contextmanager
def reusing_captures(store: dict[Any, Any]) -> Iterator[None]:
    """Within it, `capture` keeps what it captures in `store` and returns it again for the same
    model object on inputs of the same shapes, dtypes and devices: the graph does not depend on
    the chip, so a design-space sweep captures each model once per process. The model must not
    change in between (its ExportedProgram holds its weights)."""
    global _captures
    outer, _captures = _captures, store
    try:
        yield
    finally:
        _captures = outer


def capture(model: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> torch.export.ExportedProgram:
    """Export `model` on `example_inputs` and decompose it down to what `ops/` registers."""
    example_inputs = check_inputs(model, example_inputs)
    if _captures is None:
        return _capture(model, example_inputs)
    key = (id(model), tuple((tuple(x.shape), x.dtype, x.device.type) for x in example_inputs))
    if key not in _captures:
        _captures[key] = (model, _capture(model, example_inputs))    # the model kept: its id stays its own
    return _captures[key][1]


def _capture(model: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> torch.export.ExportedProgram:
    if model.training:
        model = model.eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with torch.no_grad():
                ep = torch.export.export(model, example_inputs)
                return ep.run_decompositions(decomposition_table())
    except Exception as e:  # torch raises many types here; say where it happened
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CaptureError(f"torch.export could not capture {type(model).__name__} on inputs "
                           f"{[tuple(x.shape) for x in example_inputs]}: {first}") from e
