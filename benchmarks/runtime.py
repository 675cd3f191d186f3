"""Compiled graphs on the `cpu` device against PyTorch eager on the same machine.

    .venv/bin/python benchmarks/runtime.py [SPEC ...] [--runs N] [--dtype fp32|bf16] [--threads N]

Each model is compiled to the graph phase, run once on each side to warm up, then alternately
`--runs` times; the table shows the median wall time of each, their ratio (target: cpu <= 1.5x
eager) and the relative error of the compiled run.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402
from rich.table import Table  # noqa: E402

import ember  # noqa: E402
from ember.console import console  # noqa: E402
from ember.demo import max_relative_error  # noqa: E402

DEFAULT = ("models:multimodal-small", "models:multimodal-small-decode", "models:multimodal-tiny",
           "models:resnet-small")


def measure(spec: str, runs: int, dtype: str) -> tuple[float, float, float, int]:
    model, args = ember.load_model(spec)
    cm = ember.compile(model, args, chip="mtia2i", dtype=dtype, to="graph", allow_unsupported=True)
    _, fresh = ember.load_model(spec)
    eager_t, cpu_t = [], []
    with torch.no_grad():
        ref = model(*fresh)
        out = cm.run(*fresh, device="cpu")
        for _ in range(runs):          # alternate, so both see the same machine load
            t0 = time.perf_counter()
            model(*fresh)
            t1 = time.perf_counter()
            cm.run(*fresh, device="cpu")
            t2 = time.perf_counter()
            eager_t.append(t1 - t0)
            cpu_t.append(t2 - t1)
    ops = sum(cm.op_counts().values())
    return statistics.median(eager_t), statistics.median(cpu_t), max_relative_error(out, ref), ops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("specs", nargs="*", default=DEFAULT)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch intra-op threads (0: torch's default); 1 gives steadier numbers on a busy machine")
    a = parser.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    table = Table(title=f"device 'cpu' vs eager ({torch.get_num_threads()} threads, median of {a.runs})")
    for col in ("model", "ops", "eager ms", "cpu ms", "cpu / eager", "rel. error"):
        table.add_column(col, justify="right")
    for spec in a.specs:
        eager, cpu, err, ops = measure(spec, a.runs, a.dtype)
        table.add_row(spec, str(ops), f"{eager * 1e3:.2f}", f"{cpu * 1e3:.2f}", f"{cpu / eager:.2f}x", f"{err:.1e}")
    console.print(table)


if __name__ == "__main__":
    main()
