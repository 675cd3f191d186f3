"""Compile a model, run it on fresh inputs and compare with PyTorch eager (`ember run`, `make demo`)."""
from __future__ import annotations

import os
import time
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

import ember
from ember.report import op_summary_table, run_summary_tables, unsupported_table
from runtime.devices import phase_for


def max_relative_error(out, ref) -> float:
    """max over outputs of ||out - ref|| / ||ref|| (float outputs; integer ones must be equal)."""
    outs, _ = torch.utils._pytree.tree_flatten(out)
    refs, _ = torch.utils._pytree.tree_flatten(ref)
    worst = 0.0
    for o, r in zip(outs, refs, strict=True):
        if not r.is_floating_point():
            worst = max(worst, 0.0 if torch.equal(o, r) else float("inf"))
            continue
        o, r = o.double(), r.double()
        worst = max(worst, float((o - r).norm() / (r.norm() or 1.0)))
    return worst


def _timed(fn, repeats: int, device: str):
    """(seconds, result): one call, or the median of `repeats` calls after a warm-up one."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    if repeats > 1:
        fn()
    times, out = [], None
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2], out


def compare_with_torch(spec: str, *, device: str, chip: str, dtype: str, console: Console,
                       show_ops: bool = False, trace: str | None = None) -> float:
    """Compile `spec`, run it on `device` on fresh inputs, print the comparison with eager (and,
    on the simulator, where the time went); returns the max relative error."""
    model, args = ember.load_model(spec)
    t0 = time.perf_counter()
    cm = ember.compile(model, args, chip=chip, dtype=dtype, to=phase_for(device, dtype), allow_unsupported=True)
    compile_s = time.perf_counter() - t0
    if show_ops:
        console.print(op_summary_table(cm.op_counts(), f"{spec}: graph-level ember ops"))
    if cm.unsupported:
        console.print(unsupported_table(cm.unsupported))
    _, fresh = ember.load_model(spec)    # same weights (seeded), fresh random inputs
    if device == "cuda":
        model, fresh = model.to("cuda"), tuple(x.to("cuda") for x in fresh)
    repeats = 1 if device in ("sim", "reference") else 5   # torch devices: warm, then the median
    with torch.no_grad():     # (on clones: a decode step updates its cache inputs in place)
        eager_s, ref = _timed(lambda: model(*(x.clone() for x in fresh)), repeats, device)
    run_s, out = _timed(lambda: cm.run(*fresh, device=device), repeats, device)
    err = max_relative_error(out, ref)
    table = Table(title=f"{spec} on device '{device}' vs PyTorch eager")
    for col in ("chip", "dtype", "compile s", f"{device} run s", "eager s", "max relative error"):
        table.add_column(col, justify="right")
    table.add_row(chip, dtype, f"{compile_s:.2f}", f"{run_s:.3f}", f"{eager_s:.3f}", f"{err:.2e}")
    console.print(table)
    if device == "sim":
        for t in run_summary_tables(cm.last_run):
            console.print(t)
        if trace:
            os.makedirs(os.path.dirname(os.path.abspath(trace)), exist_ok=True)
            cm.last_run.write_trace(trace)
            console.print(f"trace (open in Perfetto): {os.path.abspath(trace)}")
    return err


def show_generation(spec: str, *, chip: str, dtype: str, console: Console, new_tokens: int = 8) -> Any:
    """Generate from a (seeded) random prompt with the KV cache on the simulated chip; print TTFT, TPOT,
    where the time went, and the tokens (checked against greedy decoding in eager PyTorch)."""
    from ember.report import generation_tables
    from models.serving import random_prompt
    model, _ = ember.load_model(spec)
    torch.manual_seed(0)                  # the same prompt on every run: the demo's numbers repeat
    prompt = random_prompt(model)
    gen = ember.generate(model, prompt, max_new_tokens=new_tokens, chip=chip, dtype=dtype)
    for table in generation_tables(gen, f"{spec}: generation on {chip}, {dtype}, KV cache on the device"):
        console.print(table)
    eager = eager_greedy(model, prompt, new_tokens)
    agree = int((gen.tokens == eager).sum())
    console.print(f"tokens: {gen.tokens.tolist()}")
    console.print(f"greedy tokens of eager PyTorch (fp32): {eager.tolist()}; {agree}/{eager.numel()} agree")
    return gen


def eager_greedy(model: torch.nn.Module, prompt: Any, new_tokens: int) -> torch.Tensor:
    """Greedy tokens of the eager model, recomputing the whole sequence each step (no cache)."""
    from models.serving import _unwrap
    inner = _unwrap(model)
    parts = list(prompt) if isinstance(prompt, (tuple, list)) else [prompt]
    out = []
    with torch.no_grad():
        for _ in range(new_tokens):
            res = inner(*parts)
            logits = res[0] if isinstance(res, tuple) else getattr(res, "logits", res)
            token = logits[:, -1].argmax(-1, keepdim=True)
            out.append(token)
            parts[0] = torch.cat([parts[0], token], dim=1)
    return torch.cat(out, dim=1)
