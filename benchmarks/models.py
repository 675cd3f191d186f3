"""Whole models on the simulated chip: every `models:hf-*` model (Hugging Face transformers, tiny
configs) and the tiny reference models, compiled to a Program and simulated on fresh inputs.

    .venv/bin/python benchmarks/models.py [--chip tiny] [--dtype fp32|bf16|int8] [--draws N]
                                          [--device sim|cpu] [--int8-activations per-row|per-tensor]
                                          [--only NAME ...] [--json FILE]

One row per model: ops on the chip and on the host (host ops named, most frequent first), the
relative error against PyTorch eager and whether it is within the dtype's tolerance (fp32 1e-4,
bf16 2e-2; int8: the argmax of the logits agrees with eager's on >= 99% of positions), simulated
cycles and microseconds, compile and simulation wall time. The logits are the model's first
output, one position per vector along its last dim; `--draws` runs that many fresh inputs
(the error is the largest, the agreement pooled over all their positions); `--device cpu` runs
the same Program's steps through PyTorch (the chip's numbers, no cycles), fast enough for
hundreds of draws. Ops Ember lacks run
on the host (`allow_unsupported=True`). A model that fails to load, capture, compile or run
becomes a row with the reason; the run goes on.
"""
from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.markup import escape  # noqa: E402
from rich.table import Table  # noqa: E402

import ember  # noqa: E402
from ember.demo import max_relative_error  # noqa: E402
from models import list_models  # noqa: E402
from ops.kernel import kernel_for  # noqa: E402
from ops.registry import FLOAT_DTYPES  # noqa: E402

#: Relative error bounds per compile dtype; None for the quantized ones, which are judged by the
#: share of positions whose argmax agrees with eager's (ARGMAX_MIN)
TOLERANCE = {"fp32": 1e-4, "bf16": 2e-2, "int8": None, "fp8": None, "mxfp8": None, "mxfp4": None}
ARGMAX_MIN = 0.99
REFERENCE_MODELS = ["multimodal-tiny", "multimodal-tiny-decode", "resnet-tiny"]


@dataclass
class Row:
    """What one model did on the chip (or where it stopped, in `failure`)."""

    name: str
    kind: str
    on_chip: int = 0
    on_host: dict[str, int] = field(default_factory=dict)    # op (kind) -> count, most frequent first
    error: float | None = None
    within: bool | None = None
    agree: float | None = None          # argmax agreement over `positions`
    sqnr_db: float | None = None        # of the logits against eager's, pooled over the draws
    positions: int = 0
    flip_margin: float | None = None    # the largest eager margin (see argmax_agreement) at a flip
    near_ties: float | None = None      # the share of positions with a margin at most that
    cycles: int | None = None
    us: float | None = None
    compile_s: float | None = None
    simulate_s: float | None = None
    failure: str | None = None
    note: str | None = None


def all_models() -> list[str]:
    """Registry names: the hf-* models in their registration order, then the reference models."""
    try:
        from models.huggingface import MODELS, PREFIX
        hf = [PREFIX + name for name in MODELS]
    except ImportError:     # transformers not installed: the reference models only
        hf = []
    return hf + REFERENCE_MODELS


def model_names(only: list[str] | None) -> list[str]:
    """The models to run (`--only`, else all), with transformers' own warnings quieted."""
    try:
        import transformers
        transformers.logging.set_verbosity_error()
    except ImportError:
        pass
    return resolve(only) if only else all_models()


def model_kind(name: str) -> str:
    if name.startswith("hf-"):
        from models.huggingface import HF_MODELS
        return HF_MODELS[name[3:]]
    return "reference"


def resolve(names: list[str]) -> list[str]:
    """`--only` names as registry names: `hf-llama`, `llama` and `models:hf-llama` all name one model."""
    known, out = set(list_models()), []
    for name in names:
        name = name.removeprefix("models:")
        if name not in known and f"hf-{name}" in known:
            name = f"hf-{name}"
        if name not in known:
            raise SystemExit(f"unknown model {name!r}; known: {', '.join(all_models())}")
        out.append(name)
    return out


def host_op_name(step: dict, tensors: dict) -> str:
    """A host step as `op:kind` (`unary:cos`) or `op`, marked with why it is not on the chip:
    `[int]` integer or boolean tensors (indices, masks: kernels compute in float), `[no kernel]`
    no kernel template for the op, `[declined]` the template does not take this kind, shape or
    attribute; `host:<aten op>` is an aten op Ember lacks."""
    if step["op"].startswith("host:"):
        return step["op"]
    kind = step.get("attrs", {}).get("kind")
    name = f"{step['op']}:{kind}" if kind else step["op"]
    values = [t for t in (*step["operands"], *step["results"]) if t is not None]
    if any(tensors[t]["dtype"] not in FLOAT_DTYPES for t in values):
        return name + "[int]"
    template = kernel_for(step["op"])
    if template is None:
        return name + "[no kernel]"
    return name + "[declined]"


def _reason(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:300]


class Timeout(Exception):
    pass


def _on_alarm(signum, frame):
    raise Timeout("the model ran past --timeout")


def _logits(out) -> torch.Tensor:
    return torch.utils._pytree.tree_flatten(out)[0][0].float()


def energies(out, ref) -> tuple[float, float]:
    """(sum of eager's logits squared, sum of the error squared), in float64."""
    o, r = _logits(out).double(), _logits(ref).double()
    return float((r * r).sum()), float(((o - r) ** 2).sum())


def sqnr_db(signal_energy: float, noise_energy: float) -> float:
    """Signal-to-quantization-noise ratio: 10 log10(signal / noise); inf for an exact result."""
    if noise_energy == 0:
        return float("inf")
    return 10 * math.log10(signal_energy / noise_energy) if signal_energy else float("-inf")


def argmax_agreement(out, ref) -> tuple[torch.Tensor, torch.Tensor]:
    """Per position of the first output (flattened): whether the argmax over the last dim
    agrees with eager's, and eager's margin there: the gap between its two largest logits, in
    standard deviations of that position's logits (how near a tie eager's own answer is)."""
    o, r = _logits(out), _logits(ref)
    if r.shape[-1] < 2:         # one value per position: no tie possible
        margin = torch.full(r.shape[:-1], float("inf"))
    else:
        top2 = r.topk(2, dim=-1).values
        margin = (top2[..., 0] - top2[..., 1]) / r.std(-1).clamp_min(1e-30)
    return (o.argmax(-1) == r.argmax(-1)).flatten(), margin.flatten()


def run_model(name: str, chip: str, dtype: str, draws: int = 1, device: str = "sim",
              int8_activations: str = "per-row", seed: int | None = None) -> Row:
    """Compile `models:NAME` to a Program, simulate it on fresh inputs (seeded draws where `seed`
    is given), compare with eager."""
    row = Row(name, model_kind(name))
    spec = f"models:{name}"
    phase = "load"
    try:
        model, example = ember.load_model(spec)
        phase = "compile"
        t0 = time.perf_counter()
        cm = ember.compile(model, example, chip=chip, dtype=dtype, to="program", allow_unsupported=True,
                           int8_activations=int8_activations)
        row.compile_s = time.perf_counter() - t0
        steps = [s for s in cm.program.steps if s["kind"] != "view"]
        row.on_chip = sum(s["kind"] == "kernel" for s in steps)
        row.on_host = dict(Counter(host_op_name(s, cm.program.tensors) for s in steps
                                   if s["kind"] == "host").most_common())
        agree, margins = [], []
        signal_energy = noise_energy = 0.0
        row.simulate_s = 0.0
        for draw in range(draws):
            phase = "eager"
            if seed is not None:                      # the same draws on every run
                torch.manual_seed(seed + draw)
            _, fresh = ember.load_model(spec)        # same seeded weights, fresh random inputs
            with torch.no_grad():                    # (on clones: a decode step updates its caches in place)
                ref = model(*(x.clone() for x in fresh))
            phase = "simulate"
            t0 = time.perf_counter()
            out = cm.run(*fresh, device=device)
            row.simulate_s += time.perf_counter() - t0
            if device == "sim":
                row.cycles, row.us = cm.last_run.cycles, cm.last_run.seconds * 1e6
            row.error = max(row.error or 0.0, max_relative_error(out, ref))
            signal_energy, noise_energy = (a + b for a, b in zip((signal_energy, noise_energy), energies(out, ref)))
            same, margin = argmax_agreement(out, ref)
            agree.append(same)
            margins.append(margin)
        row.sqnr_db = sqnr_db(signal_energy, noise_energy)
        agree, margins = torch.cat(agree), torch.cat(margins)
        row.positions = agree.numel()
        row.agree = agree.float().mean().item()
        if not agree.all():
            row.flip_margin = margins[~agree].max().item()
            row.near_ties = (margins <= row.flip_margin).float().mean().item()
        quantized = TOLERANCE.get(dtype) is None          # int8, fp8, MX: judged by the argmax
        row.within = row.agree >= ARGMAX_MIN if quantized else row.error <= TOLERANCE[dtype]
        if not row.within and not quantized:
            phase = "torch.export check"
            with torch.no_grad():
                drift = max_relative_error(torch.export.export(model, fresh).module()(*fresh), ref)
            if drift > TOLERANCE["fp32"]:
                row.note = f"torch.export's own program differs from eager by {drift:.1e}: not Ember's error"
    except Exception as exc:  # noqa: BLE001  (a failing model is a row, never the end of the run)
        row.failure = f"{phase}: {_reason(exc)}"
    return row


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def argmax_cell(r: Row) -> str:
    """Agreement, and where the flips are: at eager margins up to `flip_margin` standard
    deviations, which that share of all positions have."""
    if r.agree is None:
        return "-"
    cell = f"{r.agree:.1%} of {r.positions}"
    if r.flip_margin is not None:
        cell += f"; flips at gaps <= {r.flip_margin:.2f} sd ({r.near_ties:.1%} of positions)"
    return cell


def table(rows: list[Row], chip: str, dtype: str) -> Table:
    ok = f"argmax agreement >= {ARGMAX_MIN:.0%}" if TOLERANCE.get(dtype) is None else f"tolerance {TOLERANCE[dtype]:g}"
    t = Table(title=f"models on the simulated '{chip}' chip, {dtype} ({ok} vs eager)")
    for col in ("model", "kind", "chip ops", "host ops", "host ops by name", "rel err", "SQNR dB", "argmax", "ok",
                "cycles", "sim µs", "compile s", "run s"):
        t.add_column(col, justify="left" if col in ("model", "kind", "host ops by name") else "right",
                     overflow="fold")
    for r in rows:
        if r.failure and r.error is None:
            t.add_row(r.name, r.kind, str(r.on_chip) if r.compile_s else "-",
                      str(sum(r.on_host.values())) if r.compile_s else "-",
                      escape(", ".join(f"{op} x{n}" for op, n in r.on_host.items())), "-", "-", "-",
                      "[red]FAIL[/red]", "-", "-", _fmt(r.compile_s, ".1f"), "-")
            t.add_row("", "", "", "", f"[red]{escape(r.failure)}[/red]", "", "", "", "", "", "", "", "")
            continue
        t.add_row(r.name, r.kind, str(r.on_chip), str(sum(r.on_host.values())),
                  escape(", ".join(f"{op} x{n}" for op, n in r.on_host.items()) or "-"),
                  f"{r.error:.2e}", _fmt(r.sqnr_db, ".1f"), argmax_cell(r), "yes" if r.within else "[red]NO[/red]",
                  _fmt(r.cycles, "d"), _fmt(r.us, ".1f"), f"{r.compile_s:.1f}", f"{r.simulate_s:.1f}")
        if r.note or r.failure:
            t.add_row("", "", "", "", f"[yellow]{escape(r.note or r.failure)}[/yellow]", "", "", "", "", "", "", "", "")
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chip", default="tiny", help="a chip name (simulator/chips/) or a YAML file")
    ap.add_argument("--dtype", default="fp32", choices=sorted(TOLERANCE))
    ap.add_argument("--device", default="sim", choices=("sim", "cpu"),
                    help="sim: the simulated chip; cpu: the Program's steps through PyTorch (numbers only)")
    ap.add_argument("--int8-activations", default="per-row", choices=("per-row", "per-tensor"))
    ap.add_argument("--draws", type=int, default=1, help="fresh inputs per model (errors and argmax pooled)")
    ap.add_argument("--seed", type=int, default=None, help="seed the draws (the same inputs on every run)")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="these models only (hf-llama, llama, resnet-tiny, ...)")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per model before it becomes a failure row")
    ap.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    args = ap.parse_args()
    names = model_names(args.only)
    console = Console(width=220)
    signal.signal(signal.SIGALRM, _on_alarm)
    rows = []
    for i, name in enumerate(names):
        signal.setitimer(signal.ITIMER_REAL, args.timeout)
        try:
            row = run_model(name, args.chip, args.dtype, args.draws, args.device, args.int8_activations, args.seed)
        except Timeout as exc:
            row = Row(name, model_kind(name), failure=_reason(exc))
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        rows.append(row)
        status = row.failure or f"rel err {row.error:.2e}, argmax {argmax_cell(row)}, {_fmt(row.cycles, 'd')} cycles"
        console.print(escape(f"[{i + 1}/{len(names)}] {name}: {status}"), highlight=False)
    console.print(table(rows, args.chip, args.dtype))
    ran = [r for r in rows if r.error is not None]
    drifting = sum(not r.within and r.note is not None for r in ran)
    what = "meet the argmax target" if args.dtype == "int8" else "within tolerance"
    console.print(f"{sum(r.within for r in ran)} of {len(rows)} {what}, "
                  f"{sum(not r.within for r in ran)} do not"
                  + (f" ({drifting} where torch.export itself differs from eager)" if drifting else "")
                  + f", {len(rows) - len(ran)} failed")
    host_ops: Counter = Counter()
    for r in rows:
        host_ops.update({op: 1 for op in r.on_host})
    if host_ops:
        console.print(escape("host ops, by how many models they keep on the host: "
                             + ", ".join(f"{op} ({n})" for op, n in host_ops.most_common())), highlight=False)
    if args.json:
        Path(args.json).write_text(json.dumps({"chip": args.chip, "dtype": args.dtype,
                                               "rows": [asdict(r) for r in rows]}, indent=1))


if __name__ == "__main__":
    main()
