"""Model registry: resolves a SPEC to `(model, example_inputs)`.

A SPEC is `models:NAME` for a model registered here with `@register_model("NAME")`, or
`path/to/file.py:factory`, where `factory()` returns `(model, example_inputs)`.
Every model comes back in eval mode; registered factories seed their weights, so two loads
give the same weights, while example inputs are drawn fresh on each load.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import Tensor, nn

ModelFactory = Callable[[], "tuple[nn.Module, tuple[Tensor, ...]]"]

REGISTRY_PREFIX = "models"


@dataclass(frozen=True)
class ModelEntry:
    """One registered model: its name, its factory, and whether it is built on `meta`."""

    name: str
    factory: ModelFactory
    meta: bool
    description: str


_MODELS: dict[str, ModelEntry] = {}


def register_model(name: str, *, meta: bool = False, description: str = "") -> Callable[[ModelFactory], ModelFactory]:
    """Decorator: register `factory` under `name` (reachable as the SPEC `models:NAME`).

    `meta=True` marks a model built on the meta device (no weights in memory; it can be
    captured and simulated for timing, not run for numbers). Registering a name twice is an error.
    """

    def decorate(factory: ModelFactory) -> ModelFactory:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered (by {_MODELS[name].factory.__qualname__})")
        doc_lines = (factory.__doc__ or "").strip().splitlines()
        _MODELS[name] = ModelEntry(name, factory, meta, description or (doc_lines[0] if doc_lines else ""))
        return factory

    return decorate


def list_models(meta: bool | None = None) -> list[str]:
    """Names of the registered models, sorted. `meta=False` leaves out meta-device models,
    `meta=True` lists only those; `None` lists all."""
    return sorted(name for name, entry in _MODELS.items() if meta is None or entry.meta == meta)


def model_entry(name: str) -> ModelEntry:
    """The registry entry of `name`; a `ValueError` that lists the known names if there is none."""
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    return _MODELS[name]


def load_model(spec: str) -> tuple[nn.Module, tuple[Tensor, ...]]:
    """Resolve SPEC (`models:NAME` or `path/to/file.py:factory`) to `(model, example_inputs)`.

    The model is returned in eval mode and `example_inputs` is always a tuple of tensors.
    """
    source, sep, target = spec.rpartition(":")
    if not sep or not source or not target:
        raise ValueError(
            f"bad model spec {spec!r}: expected 'models:NAME' (known: {', '.join(list_models())}) "
            "or 'path/to/file.py:factory'"
        )
    if source == REGISTRY_PREFIX:
        factory = model_entry(target).factory
        where = f"models:{target}"
    else:
        factory = _factory_from_file(Path(source), target)
        where = f"{source}:{target}"
    result = factory()
    return _check_result(result, where)


def _factory_from_file(path: Path, factory_name: str) -> ModelFactory:
    if path.suffix != ".py":
        raise ValueError(f"model spec file {str(path)!r} (factory {factory_name!r}) is not a .py file")
    if not path.is_file():
        raise ValueError(f"model spec file {str(path)!r} not found (looking for factory {factory_name!r})")
    resolved = path.resolve()
    # A unique module name per file, so two spec files with the same stem do not collide.
    digest = hashlib.sha1(str(resolved).encode()).hexdigest()[:12]
    module_name = f"_ember_model_spec_{resolved.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, resolved)
    if spec is None or spec.loader is None:
        raise ValueError(f"cannot import model spec file {str(path)!r} (factory {factory_name!r})")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        raise ValueError(f"importing model spec file {str(path)!r} (factory {factory_name!r}) failed: {exc!r}") from exc
    factory = getattr(module, factory_name, None)
    if factory is None or not callable(factory):
        public = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise ValueError(
            f"model spec file {str(path)!r} has no callable factory {factory_name!r}; "
            f"callables there: {', '.join(public) or '(none)'}"
        )
    return factory


def _check_result(result: object, where: str) -> tuple[nn.Module, tuple[Tensor, ...]]:
    if not (isinstance(result, tuple) and len(result) == 2):
        raise ValueError(f"factory {where} must return (model, example_inputs), got {type(result).__name__}")
    model, inputs = result
    if not isinstance(model, nn.Module):
        raise ValueError(f"factory {where} returned a {type(model).__name__} as model, not an nn.Module")
    if isinstance(inputs, Tensor):
        inputs = (inputs,)
    inputs = tuple(inputs)
    bad = [type(x).__name__ for x in inputs if not isinstance(x, Tensor)]
    if bad:
        raise ValueError(f"factory {where} returned example inputs that are not tensors: {', '.join(bad)}")
    return model.eval(), inputs


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Build weights deterministically inside this context without disturbing the caller's RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
