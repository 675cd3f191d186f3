"""Design-space sweeps: a 27-point sweep (benchmarks/sweeps/mtia2i-27.yaml, 3 fields x 3 values on
multimodal-small and its decode) through `ember sweep` with 2 workers, serially and on a local
Ray (the same table, byte for byte); killed half-way by SIGINT and by SIGKILL and run again (no
finished point recomputed, the same table); mtia2i's area and full-load power against its
published die and TDP. Prints a table of measured figures and checks.

    .venv/bin/python benchmarks/sweep.py [--sweep FILE] [--skip-ray] [--skip-kill]
"""
from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def cli(sweep: Path, out: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "from ember.cli import main; main()", "sweep", str(sweep),
                             "-o", str(out), *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def timed(sweep: Path, out: Path, *args: str) -> float:
    t0 = time.perf_counter()
    rc = cli(sweep, out, *args).wait()
    if rc:
        raise SystemExit(f"ember sweep {' '.join(args)} failed ({rc})")
    return time.perf_counter() - t0


def killed(sweep: Path, out: Path, sig: int, total: int) -> tuple[int, float]:
    """Stop a 2-worker sweep with `sig` once half its points are stored, then run it again;
    (points stored before the stop, seconds of the second run)."""
    proc = cli(sweep, out, "--workers", "2")
    points = out / "points"
    while proc.poll() is None and len(list(points.glob("*.json")) if points.exists() else []) < total // 2:
        time.sleep(0.2)
    proc.send_signal(sig)
    proc.wait()
    stored = len(list(points.glob("*.json")))
    return stored, timed(sweep, out, "--workers", "2")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sweep", type=Path, default=ROOT / "benchmarks" / "sweeps" / "mtia2i-27.yaml")
    ap.add_argument("--skip-ray", action="store_true")
    ap.add_argument("--skip-kill", action="store_true")
    args = ap.parse_args()
    from ember.dse.point import full_load
    from ember.dse.runner import run_sweep
    from ember.dse.spec import load_sweep
    from simulator.spec import load_chip

    console = Console()
    sweep = load_sweep(args.sweep)
    total = len(sweep.points())
    work = Path(tempfile.mkdtemp(prefix="ember-sweep-"))
    rows, checks = [], []
    wall = timed(args.sweep, work / "pool", "--workers", "2")
    rows.append(("sweep, 2 workers", f"{total} points in {wall:.1f} s", f"{total / wall * 60:.1f} points/min"))
    reference = (work / "pool" / "results.csv").read_text()
    wall1 = timed(args.sweep, work / "serial", "--workers", "1")
    same = (work / "serial" / "results.csv").read_text() == reference
    rows.append(("sweep, serial", f"{wall1:.1f} s", f"{total / wall1 * 60:.1f} points/min"))
    checks.append(("--workers 1 gives the same results.csv", same))
    if not args.skip_ray:
        wall_r = timed(args.sweep, work / "ray", "--ray", "local")
        same = (work / "ray" / "results.csv").read_text() == reference
        rows.append(("sweep, --ray local", f"{wall_r:.1f} s", f"{total / wall_r * 60:.1f} points/min"))
        checks.append(("--ray local gives the same results.csv", same))
    if not args.skip_kill:
        for name, sig in (("SIGINT", signal.SIGINT), ("SIGKILL", signal.SIGKILL)):
            out = work / name
            stored, rerun = killed(args.sweep, out, sig, total)
            again = run_sweep(args.sweep, out=out, workers=1, progress=False, report=False)
            rows.append((f"killed by {name} half-way", f"{stored} of {total} stored",
                         f"rerun {rerun:.1f} s computes {total - stored}"))
            checks.append((f"{name}: the rerun's table is the same", (out / "results.csv").read_text() == reference))
            checks.append((f"{name}: nothing recomputed after", again.computed == 0))
    chip = load_chip("mtia2i")
    rows.append(("mtia2i area", f"{chip.area_mm2:.0f} mm²", f"published 421 mm²: {chip.area_mm2 / 421:.3f}x"))
    checks.append(("mtia2i area within 10% of 421 mm²", abs(chip.area_mm2 / 421 - 1) <= 0.10))
    run = full_load(chip, 2048)
    watts = run.stats["energy_j"]["total"] / run.seconds
    util = run.stats["engine_utilization"]["dpe"]
    from simulator.area import peak_power_w
    rows.append(("mtia2i full load (2048³ bf16 GEMM)", f"{watts:.1f} W at {100 * util:.1f}% DPE",
                 f"TDP {chip.tdp_w:.0f} W: {watts / chip.tdp_w:.3f}x; bound with every engine at peak "
                 f"{peak_power_w(chip)['total']:.0f} W"))
    checks.append(("mtia2i full-load power within its 90 W TDP", watts <= chip.tdp_w))
    table = Table(title=f"ember sweep: {args.sweep.name} ({work})")
    for c in ("what", "measured", "ratio / rate"):
        table.add_column(c)
    for r in rows:
        table.add_row(*r)
    console.print(table)
    for what, ok in checks:
        console.print(f"{'PASS' if ok else 'FAIL'}  {what}")
    console.print(f"{sum(ok for _, ok in checks)}/{len(checks)} checks pass; plots in {work / 'pool'}")


if __name__ == "__main__":
    main()
