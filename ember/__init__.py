"""Ember: compile PyTorch models for an MTIA-style accelerator, simulate them, run them.

The public surface (see DESIGN.md) is this module and the `ember` command line:

    chip = ember.load_chip("mtia2i")
    cm = ember.compile(model, example_inputs, chip=chip, dtype="bf16", to="graph")
    out = cm.run(*inputs, device="reference")
"""
from __future__ import annotations

from typing import Any

import torch

from compiler.errors import EmberError, UnsupportedOpsError
from compiler.pipeline import CompileOptions, compile_model
from ember.check import CheckReport, check
from ember.compiled import CompiledModel

__all__ = ["check", "compile", "load", "load_chip", "load_model", "mlir_context", "torch_compile_report", "CheckReport", "CompiledModel", "EmberError",
           "UnsupportedOpsError"]


def load_chip(chip: Any):
    """A ChipSpec from a name under simulator/chips/, a path to a YAML file, or a ChipSpec."""
    from simulator.spec import load_chip as _load_chip
    return _load_chip(chip)


def load_model(spec: str):
    """`(model, example_inputs)` for a SPEC: `models:NAME` or `path/to/file.py:factory`."""
    from models import load_model as _load_model
    return _load_model(spec)


def mlir_context():
    """A new MLIR Context with every Ember dialect loaded."""
    from compiler.dialect import mlir_context as _mlir_context
    return _mlir_context()


def compile(model: torch.nn.Module, example_inputs: Any, *, chip: Any = "mtia2i", dtype: str = "bf16",
            to: str = "program", allow_unsupported: bool = False,
            print_ir_after_all: bool = False, cache: Any = None, fuse: bool | None = None,
            int8_activations: str = "per-row") -> CompiledModel:
    """Compile `model` for `chip`, computing in `dtype`, up to phase `to` ("graph" | "tiled" | "program").

    `cache`: True for the compile cache in `$EMBER_CACHE_DIR` (else `~/.cache/ember`), a folder, or
    a `runtime.cache.CompileCache`; a Program compiled before from the same graph, weights, options
    and chip is loaded instead of rebuilt. `fuse=False` keeps elementwise epilogues out of the
    contractions (default: on, unless the environment sets EMBER_FUSE=0). `int8_activations`
    (dtype="int8"): "per-row" scales each row of a GEMM's input at run time; "per-tensor" uses
    one scale per input, calibrated on `example_inputs`.
    """
    from runtime.cache import as_cache
    spec = load_chip(chip)
    chip_key = chip if isinstance(chip, str) and "/" not in chip and not chip.endswith((".yaml", ".yml")) \
        else spec.fingerprint()
    options = CompileOptions(chip=chip_key, dtype=dtype, to=to, allow_unsupported=allow_unsupported,
                             print_ir_after_all=print_ir_after_all, int8_activations=int8_activations,
                             **({} if fuse is None else {"fuse": fuse}))
    return CompiledModel(compile_model(model, example_inputs, options, spec, cache=as_cache(cache)), chip=spec)


def torch_compile_report(reset: bool = False):
    """What `torch.compile(..., backend="ember")` compiled in this process: per subgraph, the ops on
    the device and on the host, runs, and the simulated cycles of the last run."""
    from runtime.dynamo import report
    return report(reset)


def load(path: str) -> CompiledModel:
    """A compiled model from a Program file written by `cm.save` (refused if its format version
    or checksum does not match)."""
    return CompiledModel.load(path)
