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

__all__ = ["check", "compile", "generate", "load", "load_chip", "load_model", "mlir_context", "torch_compile_report",
           "CheckReport", "CompiledModel", "EmberError", "UnsupportedOpsError"]


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
            int8_activations: str = "per-row", share: CompiledModel | None = None) -> CompiledModel:
    """Compile `model` for `chip`, computing in `dtype`, up to phase `to` ("graph" | "tiled" | "program").

    `cache`: True for the compile cache in `$EMBER_CACHE_DIR` (else `~/.cache/ember`), a folder, or
    a `runtime.cache.CompileCache`; a Program compiled before from the same graph, weights, options
    and chip is loaded instead of rebuilt. `fuse=False` keeps elementwise epilogues out of the
    contractions (default: on, unless the environment sets EMBER_FUSE=0). `int8_activations`
    (dtype="int8"): "per-row" scales each row of a GEMM's input at run time; "per-tensor" uses
    one scale per input, calibrated on `example_inputs`. `share`: a compiled model this one is
    served with in one session (a prefill for this decode): the weights and device state the two
    have in common (by weight name and input name) take `share`'s places in device memory.
    """
    from compiler.pipeline import layout_digest, resident_layout
    from runtime.cache import as_cache
    spec = load_chip(chip)
    chip_key = chip if isinstance(chip, str) and "/" not in chip and not chip.endswith((".yaml", ".yml")) \
        else spec.fingerprint()
    resident = None
    if share is not None:
        if share.program is None:
            raise EmberError("share= takes a model compiled to a Program (to='program')")
        if share.chip != spec:
            raise EmberError(f"share= takes a model compiled for the same chip ({share.chip.name}, not {spec.name})")
        resident = resident_layout(share.program, share.input_names)
    options = CompileOptions(chip=chip_key, dtype=dtype, to=to, allow_unsupported=allow_unsupported,
                             print_ir_after_all=print_ir_after_all, int8_activations=int8_activations,
                             share=layout_digest(resident), **({} if fuse is None else {"fuse": fuse}))
    return CompiledModel(compile_model(model, example_inputs, options, spec, cache=as_cache(cache), resident=resident),
                         chip=spec)


def generate(model: torch.nn.Module, input_ids: Any, max_new_tokens: int = 16, *, chip: Any = "mtia2i",
             dtype: str = "bf16", device: str = "sim", timing_only: bool = False, max_cache_len: int | None = None,
             cache: Any = None):
    """Greedy generation on `device`: prefill, then `max_new_tokens - 1` decode steps, with the KV
    cache kept in device memory and only token ids (and the last position's logits, for sampling
    on the host) crossing the host link. `model`: a transformers `*ForCausalLM`, or the reference
    multimodal model (`input_ids` is then its prompt, `(text_ids, image, audio, video)`).
    Returns a `runtime.generate.Generation`: `tokens` (batch, max_new_tokens), `ttft_s`,
    `tpot_s`, `step_s`, `tokens_per_s`, `breakdown`."""
    from runtime.generate import generate as _generate
    return _generate(model, input_ids, max_new_tokens, chip=load_chip(chip), dtype=dtype, device=device,
                     timing_only=timing_only, max_cache_len=max_cache_len, cache=cache)


def torch_compile_report(reset: bool = False):
    """What `torch.compile(..., backend="ember")` compiled in this process: per subgraph, the ops on
    the device and on the host, runs, and the simulated cycles of the last run."""
    from runtime.dynamo import report
    return report(reset)


def load(path: str) -> CompiledModel:
    """A compiled model from a Program file written by `cm.save` (refused if its format version
    or checksum does not match)."""
    return CompiledModel.load(path)
