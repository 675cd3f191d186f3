"""Numerics: the SQNR (dB) of every model's logits on the simulated chip against fp32 eager, per
dtype, on the models of benchmarks/models.py (seeded fresh inputs, several draws pooled), with
the bars quantization toolkits hold small models to: int8 at least 30 dB, bf16 at least 40 dB;
and for the trained reference model (`models:trained-lm`), the measures trained models are
judged by, on held-out text: top-1 agreement, mean KL divergence and perplexity.

    .venv/bin/python benchmarks/numerics.py [--chip tiny] [--dtypes bf16 int8] [--draws 2]
                                            [--seed 7] [--only NAME ...] [--lm-positions 2048]
                                            [--lm-batch 4] [--json FILE]

SQNR = 10 log10(sum ref² / sum (out - ref)²) over the first output's logits. Models below a bar
are listed with what they run on the host, their argmax agreement and eager's nearest ties.

The held-out measures run `--lm-positions` next-byte predictions (windows of the model's
context from the held-out files, `models.trained_lm.held_out_windows`, always the same) through
one Program compiled per dtype, `--lm-batch` windows a run, against fp32 eager on the same
windows: top-1 agreement (the share of positions whose argmax is eager's), mean
KL(p_eager || p_chip) in nats per position, and each side's perplexity on the text's next
bytes and their ratio. Bars: top-1 >= 98.5%, KL <= 1e-3, perplexity within 2% of eager's.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.markup import escape  # noqa: E402
from rich.table import Table  # noqa: E402

import ember  # noqa: E402
from compiler.pipeline import DTYPES  # noqa: E402

# benchmarks/models.py (its name is the models package's): what runs one model and compares it
_spec = importlib.util.spec_from_file_location("bench_models", Path(__file__).with_name("models.py"))
bench = sys.modules["bench_models"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)
argmax_cell, model_names, run_model, reason = bench.argmax_cell, bench.model_names, bench.run_model, bench._reason

#: SQNR bars (dB); a dtype without one is measured and not judged
BAR_DB = {"fp32": 100.0, "bf16": 40.0, "int8": 30.0}
#: models with held-out text, judged by top-1 agreement, KL and perplexity
LM_MODELS = ("trained-lm",)
TOP1_MIN = 0.985
KL_MAX = 1e-3
PPL_WITHIN = 0.02


@dataclass
class HeldOutRow:
    """A language model on held-out text against fp32 eager (or where it stopped, in `failure`)."""

    name: str
    dtype: str
    chip: str
    positions: int = 0
    top1: float | None = None           # share of positions whose argmax is eager's
    kl: float | None = None             # mean KL(p_eager || p_chip), nats per position
    ppl_eager: float | None = None
    ppl_chip: float | None = None
    compile_s: float | None = None
    simulate_s: float | None = None
    failure: str | None = None

    @property
    def ppl_ratio(self) -> float | None:
        return None if self.ppl_chip is None else self.ppl_chip / self.ppl_eager

    def meets(self) -> dict[str, bool]:
        """Each bar: whether this row meets it."""
        return {"top1": self.top1 >= TOP1_MIN, "kl": self.kl <= KL_MAX,
                "ppl": abs(self.ppl_ratio - 1) <= PPL_WITHIN}


@dataclass
class HeldOutSums:
    """Per-position sums over batches, pooled into a `HeldOutRow`'s measures."""

    positions: int = 0
    agree: int = 0
    kl: float = 0.0
    nll_eager: float = 0.0
    nll_chip: float = 0.0

    def add(self, out: torch.Tensor, ref: torch.Tensor, targets: torch.Tensor) -> None:
        """Pool one batch: `out`, `ref` logits (..., vocab), `targets` the next tokens (...)."""
        logp_out = torch.log_softmax(out.double(), -1).flatten(0, -2)
        logp_ref = torch.log_softmax(ref.double(), -1).flatten(0, -2)
        t = targets.flatten()
        self.positions += t.numel()
        self.agree += int((logp_out.argmax(-1) == logp_ref.argmax(-1)).sum())
        self.kl += float((logp_ref.exp() * (logp_ref - logp_out)).sum())
        self.nll_eager -= float(logp_ref.gather(1, t[:, None]).sum())
        self.nll_chip -= float(logp_out.gather(1, t[:, None]).sum())

    def fill(self, row: HeldOutRow) -> None:
        row.positions = self.positions
        row.top1 = self.agree / self.positions
        row.kl = self.kl / self.positions
        row.ppl_eager = math.exp(self.nll_eager / self.positions)
        row.ppl_chip = math.exp(self.nll_chip / self.positions)


def held_out_metrics(name: str, chip: str, dtype: str, positions: int, batch: int,
                     device: str = "sim") -> HeldOutRow:
    """Compile `models:NAME` once for `batch` windows of its context, run at least `positions`
    held-out next-byte predictions through it, and pool them against fp32 eager."""
    from models.trained_lm import held_out_windows

    row = HeldOutRow(name, dtype, chip)
    phase = "load"
    try:
        model, (example,) = ember.load_model(f"models:{name}")
        length = example.shape[1]
        n = -(-positions // (length * batch)) * batch          # whole batches
        windows = held_out_windows(n, length)
        phase = "compile"
        t0 = time.perf_counter()
        cm = ember.compile(model, (windows[:batch, :-1],), chip=chip, dtype=dtype, to="program",
                           allow_unsupported=True)
        row.compile_s = time.perf_counter() - t0
        sums = HeldOutSums()
        row.simulate_s = 0.0
        for chunk in windows.split(batch):
            ids, targets = chunk[:, :-1], chunk[:, 1:]
            phase = "eager"
            with torch.no_grad():
                ref = model(ids)
            phase = "simulate"
            t0 = time.perf_counter()
            out = cm.run(ids, device=device)
            row.simulate_s += time.perf_counter() - t0
            sums.add(out, ref, targets)
        sums.fill(row)
    except Exception as exc:  # noqa: BLE001  (a failing model is a row, never the end of the run)
        row.failure = f"{phase}: {reason(exc)}"
    return row


def held_out_table(rows: list[HeldOutRow], chip: str) -> Table:
    t = Table(title=f"held-out text on '{chip}' against fp32 eager (top-1 >= {TOP1_MIN:.1%}, "
                    f"KL <= {KL_MAX:g} nats, perplexity within {PPL_WITHIN:.0%})")
    for col in ("model", "dtype", "positions", "top-1", "KL nats", "ppl eager", "ppl chip", "ratio", "ok",
                "compile s", "run s"):
        t.add_column(col, justify="left" if col in ("model", "dtype") else "right")
    for r in rows:
        if r.failure:
            t.add_row(r.name, r.dtype, "-", f"[red]{escape(r.failure[:80])}[/red]", *["-"] * 7)
            continue
        meets = r.meets()

        def mark(ok: bool, text: str) -> str:
            return text if ok else f"[red]{text}[/red]"

        t.add_row(r.name, r.dtype, str(r.positions), mark(meets["top1"], f"{r.top1:.2%}"),
                  mark(meets["kl"], f"{r.kl:.2e}"), f"{r.ppl_eager:.4f}", f"{r.ppl_chip:.4f}",
                  mark(meets["ppl"], f"{r.ppl_ratio:.4f}"), "yes" if all(meets.values()) else "[red]NO[/red]",
                  f"{r.compile_s:.1f}", f"{r.simulate_s:.1f}")
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chip", default="tiny")
    ap.add_argument("--dtypes", nargs="+", default=["bf16", "int8"], choices=DTYPES)
    ap.add_argument("--draws", type=int, default=2)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--only", nargs="+", metavar="NAME")
    ap.add_argument("--lm-positions", type=int, default=2048,
                    help="held-out positions for the language models' top-1, KL and perplexity (0: none)")
    ap.add_argument("--lm-batch", type=int, default=4, help="held-out windows per simulated run")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    names = model_names(args.only)
    if not args.only:       # the trained models too, SQNR and held-out measures both
        names += [n for n in LM_MODELS if n not in names]
    lm_names = [n for n in names if n in LM_MODELS] if args.lm_positions else []
    console = Console(width=200)
    rows = {d: {} for d in args.dtypes}
    for dtype in args.dtypes:
        for i, name in enumerate(names):
            row = run_model(name, args.chip, dtype, args.draws, "sim", seed=args.seed)
            rows[dtype][name] = row
            what = row.failure or f"SQNR {row.sqnr_db:.1f} dB, argmax {argmax_cell(row)}"
            console.print(escape(f"[{dtype} {i + 1}/{len(names)}] {name}: {what}"), highlight=False)
    held_out = []
    for dtype in args.dtypes:
        for name in lm_names:
            r = held_out_metrics(name, args.chip, dtype, args.lm_positions, args.lm_batch)
            held_out.append(r)
            what = r.failure or (f"top-1 {r.top1:.2%}, KL {r.kl:.2e}, perplexity {r.ppl_chip:.4f} "
                                 f"(eager {r.ppl_eager:.4f}) over {r.positions} positions")
            console.print(escape(f"[{dtype} held-out] {name}: {what}"), highlight=False)

    bars = ", ".join(f"{d} >= {BAR_DB[d]:g} dB" for d in args.dtypes if d in BAR_DB)
    t = Table(title=f"SQNR of the logits against fp32 eager on '{args.chip}'" + (f" ({bars})" if bars else ""))
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
            ok = r.sqnr_db >= BAR_DB.get(d, -math.inf)
            if not ok:
                below[d].append(r)
            cells += [f"{r.sqnr_db:.1f}" if ok else f"[red]{r.sqnr_db:.1f}[/red]", argmax_cell(r)]
        t.add_row(name, *cells)
    console.print(t)
    for d in args.dtypes:
        if d not in BAR_DB:
            continue
        ran = [r for r in rows[d].values() if r.sqnr_db is not None]
        console.print(f"{d}: {len(ran) - len(below[d])} of {len(ran)} models at or above {BAR_DB[d]:g} dB"
                      + (f"; below: {', '.join(f'{r.name} ({r.sqnr_db:.1f} dB)' for r in below[d])}" if below[d] else ""))
    if held_out:
        console.print(held_out_table(held_out, args.chip))
    if args.json:
        doc = {d: {n: asdict(r) for n, r in rs.items()} for d, rs in rows.items()}
        doc["held_out"] = [dict(asdict(r), ppl_ratio=r.ppl_ratio) for r in held_out]
        Path(args.json).write_text(json.dumps(doc, indent=1, default=str))


if __name__ == "__main__":
    main()
