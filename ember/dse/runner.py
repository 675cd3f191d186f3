"""Running a sweep: every point not already stored is evaluated, serially (`workers=1`), on a
local process pool (the default: one worker per core) or on Ray (`ray="local"` starts one on
this machine, an address joins a cluster). Each finished point is stored at once, by the
process that owns the output folder; the rows come back in the sweep's point order whatever
order the points finished in, so every mode gives the same rows.
"""
from __future__ import annotations

import os
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ember.dse.point import evaluate
from ember.dse.spec import Point, load_sweep
from ember.dse.store import PointStore, compiler_fingerprint, point_key


class SweepResult(list):
    """The rows of a sweep (a list of dicts, one per point and phase), and how they were had."""

    def __init__(self, rows: list[dict[str, Any]], sweep: Any, out: Path, computed: int, reused: int,
                 wall_s: float, mode: str):
        super().__init__(rows)
        self.sweep, self.out, self.computed, self.reused, self.wall_s, self.mode = \
            sweep, out, computed, reused, wall_s, mode

    @property
    def failed(self) -> int:
        return sum(not r["fits"] for r in self)


def _init_worker(threads: int) -> None:
    import torch
    torch.set_num_threads(threads)


def _pool(points: list[Point], workers: int) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    threads = max(1, (os.cpu_count() or 1) // workers)
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_worker,
                             initargs=(threads,)) as pool:
        futures = {pool.submit(evaluate, p): i for i, p in enumerate(points)}
        try:
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in done:
                    yield futures[f], f.result()
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def _ray(points: list[Point], address: str) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    try:
        import ray
    except ImportError:
        raise RuntimeError("--ray needs the 'ray' package: pip install 'ember[ray]'") from None
    started = not ray.is_initialized()
    if started:
        ray.init(address=None if address == "local" else address, include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
    remote = ray.remote(num_cpus=1, max_retries=0)(evaluate)
    refs = {remote.remote(p): i for i, p in enumerate(points)}
    pending = list(refs)
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                yield refs[ref], ray.get(ref)
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    finally:
        if started:                       # a Ray this sweep started ends with it
            ray.shutdown()


def _serial(points: list[Point]) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    for i, p in enumerate(points):
        yield i, evaluate(p)


def run_sweep(source: Any, out: str | os.PathLike | None = None, workers: int | None = None,
              ray: str | None = None, progress: bool = True, report: bool = True,
              console: Console | None = None, on_point: Callable[[int], None] | None = None) -> SweepResult:
    """Run the sweep file `source` (a path, or its content as a dict) into the folder `out`
    (default: `<file stem>-sweep` beside it); see `ember.sweep`. `on_point(n)` is called after
    each newly stored point (n: how many so far)."""
    sweep = load_sweep(source)
    if out is None:
        stem = Path(source).stem if not isinstance(source, dict) else "sweep"
        out = (Path(source).parent if not isinstance(source, dict) else Path.cwd()) / f"{stem}-sweep"
    out = Path(out)
    store = PointStore(out)
    fingerprint = compiler_fingerprint()
    points = sweep.points()
    keys = [point_key(p, fingerprint) for p in points]
    rows: list[list[dict[str, Any]] | None] = [store.load(k) for k in keys]
    todo = [i for i, r in enumerate(rows) if r is None]
    workers = workers or os.cpu_count() or 1
    mode = f"ray {ray}" if ray else ("serial" if workers == 1 or len(todo) <= 1 else f"{workers} workers")
    if console is None:
        console = Console(stderr=True)
        if not console.is_terminal:           # a log: wide enough for the table, no wrapped lines
            console = Console(stderr=True, width=160)
    todo_points = [points[i] for i in todo]
    if not todo:                              # every point stored: no workers, no Ray
        runs = iter(())
    elif ray:
        runs = _ray(todo_points, ray)
    elif mode == "serial":
        runs = _serial(todo_points)
    else:
        runs = _pool(todo_points, workers)
    t0 = time.perf_counter()
    failed = sum(any(not r["fits"] for r in point_rows) for point_rows in rows if point_rows is not None)
    columns = (TextColumn("[bold]sweep[/bold]"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[running]} running, {task.fields[failed]} failed"),
               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
    with Progress(*columns, console=console, disable=not progress, transient=False) as bar:
        task = bar.add_task("points", total=len(points), completed=len(points) - len(todo),
                            running=min(len(todo), 1 if mode == "serial" else workers), failed=failed)
        try:
            for n, (j, point_rows) in enumerate(runs, 1):
                i = todo[j]
                store.store(keys[i], point_rows)
                rows[i] = point_rows
                failed += any(not r["fits"] for r in point_rows)
                left = len(todo) - n
                bar.update(task, advance=1, failed=failed,
                           running=min(left, 1 if mode == "serial" else workers))
                if on_point is not None:
                    on_point(n)
        except KeyboardInterrupt:
            stored = sum(r is not None for r in rows)
            console.print(f"[yellow]sweep interrupted: {stored} of {len(points)} points are stored in "
                          f"{store.folder}; run it again to resume[/yellow]")
            raise
    flat = [r for point_rows in rows for r in point_rows]
    result = SweepResult(flat, sweep, out, len(todo), len(points) - len(todo), time.perf_counter() - t0, mode)
    if report:
        from ember.dse.report import write_report
        write_report(result, console)
    return result
