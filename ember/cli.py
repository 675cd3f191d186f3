"""The `ember` command line. Command groups with their own module are added here."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer
from ember.cli_chips import chips_app
from ember.console import console

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Compile PyTorch models for an MTIA-style accelerator and simulate them.")
app.add_typer(chips_app, name="chips")


def _fail(message: str) -> None:
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(1)


@app.command()
def dialect(irdl: Path = typer.Option(..., "--irdl", help="write the IRDL definition of `ember` to this file")) -> None:
    """Write the `ember` dialect's IRDL definition (graph-level and lowered ops), for
    `torch-mlir-opt --irdl-file=FILE`."""
    from compiler.context import irdl_text
    irdl.write_text(irdl_text())
    console.print(f"wrote {irdl}")


@app.command()
def compile(spec: str = typer.Argument(..., help="models:NAME or path/to/file.py:factory"),
            chip: str = typer.Option("mtia2i", help="chip name or YAML path"),
            dtype: str = typer.Option("bf16", help="fp32 | bf16 | int8 | fp8 | mxfp8 | mxfp4 (the last three on chips that list them)"),
            to: str = typer.Option("graph", help="graph | tiled | program"),
            output: Optional[Path] = typer.Option(None, "-o", "--output", help="write the IR (or Program) here"),
            print_ir_after_all: bool = typer.Option(False, "--print-ir-after-all", help="dump the IR after every pass"),
            print_ir_after: list[str] = typer.Option([], "--print-ir-after", help="dump the IR after this pass "
                                                                                  "(repeatable; `ember passes`)"),
            disable_pass: list[str] = typer.Option([], "--disable-pass", help="skip this pass (repeatable)"),
            allow_unsupported: bool = typer.Option(False, "--allow-unsupported", help="keep unsupported ops on the host"),
            int8_activations: str = typer.Option("per-row", help="int8: per-row (at run time) | per-tensor "
                                                                 "(calibrated on the example inputs)"),
            quantize_head: bool = typer.Option(False, "--quantize-head", help="quantized dtypes: quantize the "
                                               "GEMMs producing model outputs (LM head) too")) -> None:
    """Compile a model and print a summary of what came out."""
    import ember
    from ember.report import op_summary_table, unsupported_table
    try:
        model, args = ember.load_model(spec)
        t0 = time.perf_counter()
        cm = ember.compile(model, args, chip=chip, dtype=dtype, to=to, allow_unsupported=allow_unsupported,
                           print_ir_after_all=print_ir_after_all, print_ir_after=print_ir_after,
                           disable_passes=disable_pass, int8_activations=int8_activations,
                           quantize_head=quantize_head)
    except (ValueError, TypeError, ember.EmberError, NotImplementedError) as e:
        _fail(str(e))
    seconds = time.perf_counter() - t0
    console.print(op_summary_table(cm.op_counts(), f"{spec}: graph-level ember ops"))
    if cm.unsupported:
        console.print(unsupported_table(cm.unsupported))
    console.print(f"compiled to '{to}' in {seconds:.2f} s "
                  f"(capture {cm.timings.get('capture', 0):.2f} s, import {cm.timings.get('import', 0):.2f} s)")
    if output is not None:
        if to == "program":
            cm.save(str(output))
        else:
            output.write_text(cm.ir(to))
        console.print(f"wrote {output}")


@app.command()
def passes() -> None:
    """The compile pipeline: every pass by name, its phase, and what it does."""
    from rich.table import Table

    from compiler.pipeline import passes as pipeline_passes
    table = Table(title="Ember's passes, in the order they run")
    for col in ("phase", "pass", "what it does", "can be disabled"):
        table.add_column(col)
    for phase, p in pipeline_passes():
        paragraph = " ".join((type(p).__doc__ or "").strip().split("\n\n")[0].split())
        doc = paragraph.split(". ")[0].rstrip(".") + "."
        reason = getattr(p, "required_by", "")
        when = " (when the compile needs it)" if reason and hasattr(p, "enabled") else ""
        table.add_row(phase, p.name, doc, f"no: {reason}{when}" if reason else "yes")
    console.print(table)


@app.command()
def simulate(program: Path = typer.Argument(..., help="a Program file written by `ember compile --to program -o`"),
             timing_only: bool = typer.Option(False, "--timing-only", help="time the run, compute no numbers"),
             trace: Optional[Path] = typer.Option(None, "--trace", help="write a Chrome/Perfetto trace here"),
             per_op: bool = typer.Option(False, "--per-op", help="list every accelerator op: predicted, simulated "
                                                                  "and roofline cycles"),
             asm: bool = typer.Option(False, "--asm", help="print the RVV assembly of every vector-core kernel "
                                                           "the Program runs")) -> None:
    """Run a Program on the simulator (random inputs) and show where the time goes."""
    import torch

    import ember
    from ember.report import per_op_table, run_summary_tables
    from ops.registry import DTYPE_TO_TORCH
    try:
        cm = ember.load(str(program))
    except (ValueError, OSError) as e:
        _fail(str(e))
    if asm:
        _print_vector_asm(cm.program)
    gen = torch.Generator().manual_seed(0)
    inputs = []
    for spec in cm.input_specs:
        dtype = DTYPE_TO_TORCH[spec.dtype]
        if timing_only:
            inputs.append(torch.empty(spec.shape, dtype=dtype, device="meta"))
        elif dtype.is_floating_point:
            inputs.append(torch.randn(spec.shape, generator=gen).to(dtype))
        else:
            inputs.append(torch.randint(0, 2, spec.shape, generator=gen).to(dtype))
    t0 = time.perf_counter()
    cm.run(*inputs, device="sim", timing_only=timing_only)
    wall = time.perf_counter() - t0
    for table in run_summary_tables(cm.last_run):
        console.print(table)
    if per_op:
        console.print(per_op_table(cm.last_run))
    console.print(f"simulated in {wall:.2f} s of wall time")
    if trace is not None:
        cm.last_run.write_trace(str(trace))
        console.print(f"trace: {trace}")


def _print_vector_asm(program) -> None:
    """The RVV assembly of the vector-core kernels of each kernel step, once per Program kernel."""
    from compiler.errors import source_of
    done = set()
    for step in program.steps:
        k = step.get("kernel")
        if step.get("kind") != "kernel" or k is None or k in done or not program.kernels[k].vector_kernels:
            continue
        done.add(k)
        print(f"# ember.{step['op']} at {source_of(step.get('location')) or '?'}: kernel {k}")
        print(program.kernels[k].asm())
    if not done:
        print("# no vector-core kernels in this Program")


@app.command()
def run(spec: str = typer.Argument(..., help="models:NAME or path/to/file.py:factory"),
        device: str = typer.Option("reference", help="reference | sim | cpu | cuda"),
        chip: str = typer.Option("tiny", help="chip name or YAML path"),
        dtype: str = typer.Option("fp32", help="fp32 | bf16 | int8 | fp8 | mxfp8 | mxfp4 (the last three on chips that list them)")) -> None:
    """Compile a model, run it on fresh random inputs, and compare with PyTorch."""
    import ember
    from ember.demo import compare_with_torch
    try:
        compare_with_torch(spec, device=device, chip=chip, dtype=dtype, console=console)
    except (ValueError, TypeError, NotImplementedError, RuntimeError, ember.EmberError) as e:
        _fail(str(e))


@app.command()
def generate(spec: str = typer.Argument(..., help="models:NAME or path/to/file.py:factory (a decoder)"),
             chip: str = typer.Option("mtia2i", help="chip name or YAML path"),
             dtype: str = typer.Option("bf16", help="fp32 | bf16 | int8 | fp8 | mxfp8 | mxfp4 (the last three on chips that list them)"),
             prompt_len: Optional[int] = typer.Option(None, "--prompt-len", help="text tokens of the random prompt"),
             new_tokens: int = typer.Option(16, "--new-tokens", help="tokens to generate"),
             batch: Optional[int] = typer.Option(None, "--batch", help="sequences generated together"),
             timing_only: bool = typer.Option(False, "--timing-only", help="time it, compute no numbers "
                                                                            "(meta-device models)")) -> None:
    """Greedy generation on the simulated chip with the KV cache on the device: TTFT, TPOT, tokens."""
    import ember
    from ember.report import generation_tables
    from models.serving import random_prompt
    try:
        model, _ = ember.load_model(spec)
        prompt = random_prompt(model, prompt_len, batch)
        t0 = time.perf_counter()
        gen = ember.generate(model, prompt, max_new_tokens=new_tokens, chip=chip, dtype=dtype,
                             timing_only=timing_only or any(p.is_meta for p in model.parameters()))
    except (ValueError, TypeError, MemoryError, ember.EmberError) as e:
        _fail(str(e))
    for table in generation_tables(gen, f"{spec} on {chip}, {dtype}"):
        console.print(table)
    if gen.tokens is not None:
        console.print(f"tokens: {gen.tokens.tolist()}")
    console.print(f"compiled and simulated in {time.perf_counter() - t0:.1f} s of wall time")


@app.command()
def sweep(path: Path = typer.Argument(..., help="a sweep file (YAML: base, vary, workloads)"),
          output: Optional[Path] = typer.Option(None, "-o", "--output", help="the results folder "
                                                "(default: <file stem>-sweep beside the file)"),
          workers: Optional[int] = typer.Option(None, "--workers", help="local worker processes (default: one "
                                                "per core; 1: serial)"),
          ray: Optional[str] = typer.Option(None, "--ray", help="run the points on Ray: 'local' or a cluster address")
          ) -> None:
    """A design-space sweep: a table of the best points, results.csv, pareto.png, sensitivity.png."""
    import ember
    try:
        rows = ember.sweep(path, workers=workers, ray=ray, out=output)
    except KeyboardInterrupt:
        raise typer.Exit(130)
    except (ValueError, ember.EmberError, RuntimeError) as e:
        _fail(str(e))
    console.print(f"{rows.computed} points computed, {rows.reused} reused, in {rows.wall_s:.1f} s ({rows.mode})")


@app.command()
def check(spec: str = typer.Argument(..., help="models:NAME or path/to/file.py:factory"),
          chip: str = typer.Option("mtia2i", help="chip name or YAML path"),
          dtype: str = typer.Option("bf16", help="fp32 | bf16 | int8 | fp8 | mxfp8 | mxfp4 (the last three on chips that list them)"),
          format: str = typer.Option("text", "--format", help="text | json | html"),
          simulate: bool = typer.Option(True, help="also run on the simulated chip (error and latency)")) -> None:
    """Compatibility report: what runs on the accelerator, the error against PyTorch, latency, memory fit."""
    import ember
    if format not in ("text", "json", "html"):
        _fail(f"--format must be text, json or html, got {format!r}")
    try:
        model, args = ember.load_model(spec)
        report = ember.check(model, args, chip=chip, dtype=dtype, simulate=simulate)
    except (ValueError, TypeError, ember.EmberError) as e:
        _fail(str(e))
    if format == "text":
        console.print(str(report), markup=False, highlight=False)
    else:
        print(report.to_json() if format == "json" else report.to_html())


@app.command()
def demo(spec: str = typer.Option("models:multimodal-small", help="the model to show")) -> None:
    """The main job: compile the multimodal model, check it against PyTorch, simulate it on mtia2i."""
    from ember.demo import compare_with_torch
    compare_with_torch(spec, device="reference", chip="mtia2i", dtype="fp32", console=console, show_ops=True)
    compare_with_torch(spec, device="sim", chip="mtia2i", dtype="bf16", console=console,
                       trace="build/demo-trace.json")
    from ember.demo import show_generation
    show_generation(spec, chip="mtia2i", dtype="bf16", console=console)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
