"""What a sweep leaves in its folder: `results.csv` (every row), `pareto.png` (latency against
energy per inference, and against perf/mm², per workload, Pareto front marked), `sensitivity.png`
(per varied field, latency relative to the base chip with the other fields at the base's
values), `summary.md`; and a table of the best points per workload on the console.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from ember.dse.point import METRICS


def columns(result: Any) -> list[str]:
    return ["workload", "phase", *result.sweep.fields, "fits", "reason", *METRICS, "chip"]


def write_csv(result: Any, path: Path) -> None:
    cols = columns(result)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=cols)
        writer.writeheader()
        for row in result:
            writer.writerow({c: "" if row.get(c) is None else row.get(c) for c in cols})


def _groups(result: Any) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for row in result:
        label = row["workload"] + ("" if row["phase"] == "run" else f" {row['phase']}")
        out.setdefault(label, []).append(row)
    return out


def pareto_front(rows: list[dict[str, Any]], x: str = "seconds", y: str = "energy_j") -> list[dict[str, Any]]:
    """The rows no other row beats on both `x` and `y` (both lower is better), by `x`."""
    ok = sorted((r for r in rows if r["fits"]), key=lambda r: (r[x], r[y]))
    front, best = [], math.inf
    for r in ok:
        if r[y] < best:
            front.append(r)
            best = r[y]
    return front


def _fmt_point(row: dict[str, Any], fields: list[str]) -> str:
    return ", ".join(f"{f}={_with_unit(f, row[f])}" for f in fields) or "base"


def _with_unit(field: str, value: Any) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return str(value)
    scale, unit = _axis(field, [value])
    return f"{value / scale:g} {unit}" if unit else _short(value)


def _short(v: Any) -> str:
    if isinstance(v, float) and v >= 1e6:
        return f"{v:.4g}"
    if isinstance(v, int) and not isinstance(v, bool) and v >= 1 << 10:
        for shift, unit in ((30, "GiB"), (20, "MiB"), (10, "KiB")):
            if v >= 1 << shift and v % (1 << (shift - 10 if shift > 10 else 0)) == 0:
                return f"{v / (1 << shift):g} {unit}"
    return str(v)


def _axis(field: str, values: list[Any]) -> tuple[float, str]:
    """How to show a chip field on an axis: (divisor, unit) from its name and values."""
    if field.endswith("bytes_per_s"):
        return 1e9, "GB/s"
    if field.endswith("bytes") and values and min(values) >= 1 << 10:
        return (1 << 20, "MiB") if min(values) >= 1 << 20 else (1 << 10, "KiB")
    if field.endswith("_hz"):
        return 1e9, "GHz"
    return 1.0, ""


def table(result: Any) -> Table:
    fields = result.sweep.fields
    t = Table(title=f"best points per workload ({result.sweep.source})")
    for c in ("workload", "best for", "point", "latency", "energy", "avg power", "area", "perf/mm²"):
        t.add_column(c)
    for label, rows in _groups(result).items():
        ok = [r for r in rows if r["fits"]]
        if not ok:
            t.add_row(label, "-", f"no point runs: {rows[0]['reason'][:60]}", "", "", "", "", "")
            continue
        picks = {"latency": min(ok, key=lambda r: r["seconds"]), "energy": min(ok, key=lambda r: r["energy_j"]),
                 "perf/mm²": max(ok, key=lambda r: r["per_s_per_mm2"])}
        for what, r in picks.items():
            t.add_row(label, what, _fmt_point(r, fields), f"{r['seconds'] * 1e3:.4f} ms", f"{r['energy_j'] * 1e3:.4f} mJ",
                      f"{r['avg_power_w']:.1f} W", f"{r['area_mm2']:.0f} mm²", f"{r['per_s_per_mm2']:.2f} /s/mm²")
            label = ""
    return t


def _plots(result: Any, out: Path) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = {k: v for k, v in _groups(result).items() if any(r["fits"] for r in v)}
    if not groups:
        return []
    base = result.sweep.base_values()
    fields = result.sweep.fields
    written = []
    # pareto.png: one row of two panels per workload
    fig, axes = plt.subplots(len(groups), 2, figsize=(11, 4 * len(groups)), squeeze=False)
    for (label, rows), (ax_e, ax_a) in zip(groups.items(), axes):
        ok = [r for r in rows if r["fits"]]
        lat = [r["seconds"] * 1e3 for r in ok]
        sc = ax_e.scatter(lat, [r["energy_j"] * 1e3 for r in ok], c=[r["area_mm2"] for r in ok], cmap="viridis", s=28)
        fig.colorbar(sc, ax=ax_e, label="area (mm²)")
        front = pareto_front(ok)
        ax_e.plot([r["seconds"] * 1e3 for r in front], [r["energy_j"] * 1e3 for r in front], "r-o", mfc="none",
                  ms=9, label="Pareto front")
        is_base = [r for r in ok if all(r[f] == base[f] for f in fields)]
        for r in is_base:
            ax_e.plot(r["seconds"] * 1e3, r["energy_j"] * 1e3, "k*", ms=14, label="base chip")
        ax_e.set(xlabel="latency (ms)", ylabel="energy per inference (mJ)", title=f"{label}: latency vs energy")
        ax_a.scatter(lat, [r["per_s_per_mm2"] for r in ok], c=[r["avg_power_w"] for r in ok], cmap="plasma", s=28)
        fig.colorbar(ax_a.collections[0], ax=ax_a, label="average power (W)")
        front_a = pareto_front([{**r, "neg": -r["per_s_per_mm2"]} for r in ok], "seconds", "neg")
        ax_a.plot([r["seconds"] * 1e3 for r in front_a], [r["per_s_per_mm2"] for r in front_a], "r-o", mfc="none",
                  ms=9, label="Pareto front")
        for r in is_base:
            ax_a.plot(r["seconds"] * 1e3, r["per_s_per_mm2"], "k*", ms=14, label="base chip")
        ax_a.set(xlabel="latency (ms)", ylabel="inferences / s / mm²", title=f"{label}: latency vs perf/mm²")
        for ax in (ax_e, ax_a):
            _log_if_wide(ax, lat, "x")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
        _log_if_wide(ax_e, [r["energy_j"] for r in ok], "y")
    fig.tight_layout()
    fig.savefig(out / "pareto.png", dpi=110)
    plt.close(fig)
    written.append("pareto.png")
    # sensitivity.png: one panel per varied field
    if fields:
        fig, axes = plt.subplots(1, len(fields), figsize=(4.6 * len(fields), 3.8), squeeze=False)
        for field, ax in zip(fields, axes[0]):
            others = [f for f in fields if f != field]
            values = [r[field] for r in result if isinstance(r[field], (int, float))]
            scale, unit = _axis(field, values)
            refused = []
            for label, rows in groups.items():
                anchor = [r for r in rows if r["fits"] and all(r[f] == base[f] for f in fields)]
                line = sorted((r for r in rows if r["fits"] and all(r[f] == base[f] for f in others)),
                              key=lambda r: r[field])
                refused += [r[field] / scale for r in rows if not r["fits"] and isinstance(r[field], (int, float))
                            and all(r[f] == base[f] for f in others)]
                if not anchor or not line:
                    continue
                ref = anchor[0]["seconds"]
                ax.plot([r[field] / scale for r in line], [r["seconds"] / ref for r in line], "-o", label=label)
            if refused:      # points that do not run: marked on the axis
                ax.plot(sorted(set(refused)), [0.03] * len(set(refused)), "rx", ms=9, mew=2,
                        transform=ax.get_xaxis_transform(), label="does not run")
            ax.axhline(1.0, color="grey", lw=0.8)
            ax.axvline(base[field] / scale, color="grey", lw=0.8, ls="--", label="base chip")
            ax.set(xlabel=f"{field}" + (f" ({unit})" if unit else "") + f", base {base[field] / scale:g}",
                   ylabel="latency / base chip's", title=field)
            ticks = sorted({v / scale for v in values})
            _log_if_wide(ax, ticks, "x", at=8)
            ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
            ax.minorticks_off()
            ax.grid(True, which="both", alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
        fig.suptitle("sensitivity: each field alone, the others at the base chip's values")
        fig.tight_layout()
        fig.savefig(out / "sensitivity.png", dpi=110)
        plt.close(fig)
        written.append("sensitivity.png")
    return written


def _log_if_wide(ax: Any, values: list[float], axis: str, at: float = 20) -> None:
    """A log axis where the values span `at` times or more."""
    pos = [v for v in values if isinstance(v, (int, float)) and v > 0]
    if pos and max(pos) / min(pos) >= at:
        (ax.set_xscale if axis == "x" else ax.set_yscale)("log")


def summary(result: Any, plots: list[str]) -> str:
    fields = result.sweep.fields
    points = len(result.sweep.points())
    lines = [f"# Sweep {result.sweep.source}", "",
             f"- base chip: {result.sweep.base.name}; varied: {', '.join(fields) or 'nothing'}",
             f"- {points} points ({len(result.sweep.grid())} chip variants x {len(result.sweep.file.workloads)} "
             f"workloads), {len(result)} rows, {result.failed} that do not run",
             f"- this run: {result.computed} computed, {result.reused} reused from the folder, "
             f"{result.wall_s:.1f} s ({result.mode})", "", "## Best per workload", ""]
    for label, rows in _groups(result).items():
        ok = [r for r in rows if r["fits"]]
        if not ok:
            lines.append(f"- {label}: no point runs ({rows[0]['reason']})")
            continue
        fast = min(ok, key=lambda r: r["seconds"])
        lean = min(ok, key=lambda r: r["energy_j"])
        dense = max(ok, key=lambda r: r["per_s_per_mm2"])
        lines.append(f"- {label}: fastest {fast['seconds'] * 1e3:.4f} ms at {_fmt_point(fast, fields)}; "
                     f"least energy {lean['energy_j'] * 1e3:.4f} mJ at {_fmt_point(lean, fields)}; "
                     f"best perf/mm² {dense['per_s_per_mm2']:.2f} at {_fmt_point(dense, fields)}")
    refused = [r for r in result if not r["fits"]]
    if refused:
        lines += ["", "## Points that do not run", ""]
        lines += [f"- {r['workload']} {r['phase']}, {_fmt_point(r, fields)}: {r['reason']}" for r in refused[:40]]
    lines += ["", "## Files", "", "- results.csv: every row"] + [f"- {p}" for p in plots]
    return "\n".join(lines) + "\n"


def write_report(result: Any, console: Console | None = None) -> None:
    out = Path(result.out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(result, out / "results.csv")
    plots = _plots(result, out)
    (out / "summary.md").write_text(summary(result, plots))
    if console is not None:
        console.print(table(result))
        console.print(f"{len(result)} rows in {out / 'results.csv'}; {', '.join(plots)} and summary.md beside it")
