"""Front-end timing: capture (torch.export + decompositions) and import per model.

    .venv/bin/python benchmarks/frontend.py [models:NAME ...]

Prints a table: parameters, graph-level ops, capture seconds, import seconds, peak RSS.
"""
from __future__ import annotations

import resource
import sys
import time

import torch
from ember.console import console
from rich.table import Table

import ember

DEFAULT = ("models:resnet-tiny", "models:resnet-small", "models:multimodal-tiny", "models:multimodal-tiny-decode",
           "models:multimodal-small", "models:multimodal-small-decode", "models:multimodal-7b",
           "models:multimodal-7b-decode")


def main(specs: list[str]) -> None:
    table = Table(title="Ember front end: capture and import time per model")
    for col in ("model", "params", "device", "ember ops", "capture s", "import s", "total s", "peak RSS MiB"):
        table.add_column(col, justify="right" if col != "model" else "left")
    for spec in specs:
        model, args = ember.load_model(spec)
        params = sum(p.numel() for p in model.parameters())
        device = "meta" if any(p.is_meta for p in model.parameters()) else "cpu"
        t0 = time.perf_counter()
        cm = ember.compile(model, args, chip="mtia2i", dtype="bf16", to="graph", allow_unsupported=True)
        total = time.perf_counter() - t0
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        n_ops = sum(cm.op_counts().values())
        table.add_row(spec.split(":", 1)[1], f"{params / 1e6:,.1f}M", device, str(n_ops),
                      f"{cm.timings['capture']:.2f}", f"{cm.timings['import']:.2f}", f"{total:.2f}", f"{rss:,.0f}")
        del cm, model, args
    console.print(table)
    print(f"torch {torch.__version__}; peak RSS is the process high-water mark so far")


if __name__ == "__main__":
    main(sys.argv[1:] or list(DEFAULT))
