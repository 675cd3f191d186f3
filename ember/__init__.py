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
from ember.check import CheckReport, check
from ember.compiled import CompiledModel, compile
from ops.data_dependent import DataSizeError

__all__ = ["check", "compile", "generate", "load", "load_chip", "load_model", "mlir_context", "sweep",
           "torch_compile_report", "CheckReport", "CompiledModel", "DataSizeError", "EmberError",
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
    from compiler.context import mlir_context as _mlir_context
    return _mlir_context()


def generate(model: torch.nn.Module, input_ids: Any, max_new_tokens: int = 16, *, chip: Any = "mtia2i",
             dtype: str = "bf16", device: str = "sim", timing_only: bool = False, max_cache_len: int | None = None,
             cache: Any = None, routing: Any = None):
    """Greedy generation on `device`: prefill, then `max_new_tokens - 1` decode steps, with the KV
    cache kept in device memory and only token ids (and the last position's logits, for sampling
    on the host) crossing the host link. `model`: a transformers `*ForCausalLM`, or the reference
    multimodal model (`input_ids` is then its prompt, `(text_ids, image, audio, video)`).
    Returns a `ember.generation.Generation`: `tokens` (batch, max_new_tokens), `ttft_s`,
    `tpot_s`, `step_s`, `tokens_per_s`, `breakdown`. `routing`: what a timing-only run assumes
    for a mixture-of-experts layer's experts: "uniform" (default), "skewed", or one weight per
    expert (runtime/routing.py); runs with numbers read the router's choices."""
    from ember.generation import generate as _generate
    return _generate(model, input_ids, max_new_tokens, chip=load_chip(chip), dtype=dtype, device=device,
                     timing_only=timing_only, max_cache_len=max_cache_len, cache=cache, routing=routing)


def sweep(path: Any, workers: int | None = None, ray: str | None = None, out: Any = None, progress: bool = True):
    """Run the design-space sweep file `path` (see `ember.dse.spec`; or its content as a dict):
    every chip variant of its grid compiled for and run device-resident on each workload, on a
    local process pool of `workers` (default: one per core; 1: serial) or on Ray (`ray="local"`
    or a cluster address). Finished points are stored in `out` (default `<file stem>-sweep` beside
    the file), so a sweep run again resumes; results.csv, pareto.png, sensitivity.png and
    summary.md are written there. Returns the rows (dicts: the varied fields, `fits`, `reason`,
    cycles, seconds, energy_j, avg_power_w, area_mm2, per-engine utilization, bytes per memory
    level)."""
    from ember.dse.runner import run_sweep
    return run_sweep(path, out=out, workers=workers, ray=ray, progress=progress)


def torch_compile_report(reset: bool = False):
    """What `torch.compile(..., backend="ember")` compiled in this process: per subgraph, the ops on
    the device and on the host, runs, and the simulated cycles of the last run."""
    from ember.torch_backend import report
    return report(reset)


def load(path: str) -> CompiledModel:
    """A compiled model from a Program file written by `cm.save` (refused if its format version
    or checksum does not match)."""
    return CompiledModel.load(path)
