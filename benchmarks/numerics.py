"""Numerics: the SQNR (dB) of every model's logits on the simulated chip against fp32 eager, per
dtype, on the models of benchmarks/models.py (seeded fresh inputs, several draws pooled), with
the bars quantization toolkits hold small models to: int8 at least 30 dB, bf16 at least 40 dB.

    .venv/bin/python benchmarks/numerics.py [--chip tiny] [--dtypes bf16 int8] [--draws 2]
                                            [--seed 7] [--only NAME ...] [--json FILE]

SQNR = 10 log10(sum ref² / sum (out - ref)²) over the first output's logits. Models below a bar
are listed with what they run on the host, their argmax agreement and eager's nearest ties.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console  # noqa: E402
from rich.markup import escape  # noqa: E402
from rich.table import Table  # noqa: E402

# benchmarks/models.py (its name is the models package's): what runs one model and compares it
_spec = importlib.util.spec_from_file_location("bench_models", Path(__file__).with_name("models.py"))
bench = sys.modules["bench_models"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)
argmax_cell, model_names, run_model = bench.argmax_cell, bench.model_names, bench.run_model

BAR_DB = {"fp32": 100.0, "bf16": 40.0, "int8": 30.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chip", default="tiny")
    ap.add_argument("--dtypes", nargs="+", default=["bf16", "int8"], choices=sorted(BAR_DB))
    ap.add_argument("--draws", type=int, default=2)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--only", nargs="+", metavar="NAME")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    names = model_names(args.only)
    console = Console(width=200)
    rows = {d: {} for d in args.dtypes}
    for dtype in args.dtypes:
        for i, name in enumerate(names):
            row = run_model(name, args.chip, dtype, args.draws, "sim", seed=args.seed)
            rows[dtype][name] = row
            what = row.failure or f"SQNR {row.sqnr_db:.1f} dB, argmax {argmax_cell(row)}"
            console.print(escape(f"[{dtype} {i + 1}/{len(names)}] {name}: {what}"), highlight=False)
    t = Table(title=f"SQNR of the logits against fp32 eager on '{args.chip}' "
                    f"({', '.join(f'{d} >= {BAR_DB[d]:g} dB' for d in args.dtypes)})")
    t.add_column("model")
    for d in args.dtypes:
        t.add_column(f"{d} dB", justify="right")
        t.add_column(f"{d} argmax", justify="right")
    below = {d: [] for d in args.dtypes}
    for name in names:
        cells = []
        for d in args.dtypes:
            r = rows[d][name]
            if r.sqnr_db is None:
                cells += ["[red]fail[/red]", escape((r.failure or "")[:40])]
                continue
            ok = r.sqnr_db >= BAR_DB[d]
            if not ok:
                below[d].append(r)
            cells += [f"{r.sqnr_db:.1f}" if ok else f"[red]{r.sqnr_db:.1f}[/red]", argmax_cell(r)]
        t.add_row(name, *cells)
    console.print(t)
    for d in args.dtypes:
        ran = [r for r in rows[d].values() if r.sqnr_db is not None]
        console.print(f"{d}: {len(ran) - len(below[d])} of {len(ran)} models at or above {BAR_DB[d]:g} dB"
                      + (f"; below: {', '.join(f'{r.name} ({r.sqnr_db:.1f} dB)' for r in below[d])}" if below[d] else ""))
    if args.json:
        Path(args.json).write_text(json.dumps({d: {n: asdict(r) for n, r in rs.items()} for d, rs in rows.items()},
                                              indent=1, default=str))


if __name__ == "__main__":
    main()
