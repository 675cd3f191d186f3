"""One sweep point: compile the workload for the point's chip, run it device-resident on the
simulator (inputs already in device memory, so the host link is not in the time), and turn what
the run measured into rows. A point that cannot run (a field value the chip schema refuses, a
model that does not fit, an op the chip cannot run) is a row with `fits` False and its reason.
"""
from __future__ import annotations

import functools
import traceback
from typing import Any

import torch

from compiler.capture import reusing_captures
from compiler.errors import EmberError
from ember.dse.spec import Point
from ops.kernel import NoTilingError
from simulator.area import area_breakdown
from simulator.spec import ChipSpec, ChipSpecError

ENGINES = ("dpe", "simd", "dma", "mlu", "reduce")
#: bytes moved per memory level, from the run's stats (`bytes`): reads and writes together
LEVELS = {"dram": ("dram_read", "dram_write"), "sram": ("sram_read", "sram_write"), "local": ("local",),
          "noc_byte_hops": ("noc_byte_hops",), "host_link": ("host_link",)}
METRICS = ("cycles", "seconds", "floor_seconds", "predicted_cycles", "energy_j", "avg_power_w", "area_mm2",
           "per_s_per_mm2", "per_j",
           *(f"util_{e}" for e in ENGINES), *(f"bytes_{k}" for k in LEVELS))


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}".strip()


#: this process's captured graphs, by model and inputs (`compiler.capture.reusing_captures`)
_CAPTURES: dict[Any, Any] = {}


@functools.lru_cache(maxsize=8)
def _model(spec: str) -> tuple[Any, tuple]:
    from models import load_model
    torch.manual_seed(0)              # the same weights in every process
    return load_model(spec)


def _row(point: Point, phase: str, chip: ChipSpec | None, values: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {"workload": point.workload.name, "phase": phase, **values,
                           "fits": False, "reason": "", "chip": chip.fingerprint() if chip else ""}
    row.update({m: None for m in METRICS})
    if chip is not None:
        row["area_mm2"] = area_breakdown(chip)["total"]
    return row


def _measured(row: dict[str, Any], run: Any, program: Any, chip: ChipSpec,
              seconds: float | None = None) -> dict[str, Any]:
    """Fill `row` from a simulator RunResult of `program` (`seconds`: the latency to report, else
    the run's). `floor_seconds`: the sum of the kernels' roofline bounds (compute or memory,
    whichever is longer), below which no run can go; `predicted_cycles`: the cost model's sum
    for the plans the compiler chose."""
    stats = run.stats
    seconds = run.seconds if seconds is None else seconds
    kernels = [s for s in program.steps if s["kind"] == "kernel"]
    row["floor_seconds"] = sum(float(s.get("roofline_cycles", 0.0)) for s in kernels) / chip.clock_hz
    row["predicted_cycles"] = int(sum(int(s.get("predicted_cycles", 0)) for s in kernels))
    energy = float(stats["energy_j"].get("total", sum(v for k, v in stats["energy_j"].items())))
    row.update(fits=True, cycles=int(run.cycles), seconds=seconds, energy_j=energy,
               avg_power_w=energy / seconds if seconds else 0.0,
               per_s_per_mm2=1.0 / seconds / row["area_mm2"] if seconds else None,
               per_j=1.0 / energy if energy else None)
    util = stats.get("engine_utilization", {})
    for e in ENGINES:
        row[f"util_{e}"] = float(util.get(e, 0.0))
    moved = stats.get("bytes", {})
    for level, keys in LEVELS.items():
        row[f"bytes_{level}"] = int(sum(moved.get(k, 0) for k in keys))
    return row


def _inputs(session: Any, example: tuple, timing_only: bool) -> list:
    """The example inputs in device memory: put (functional runs), or made on the device
    (timing-only runs, meta tensors)."""
    if timing_only or any(x.is_meta for x in example):
        return [session.zeros(x.shape, x.dtype) for x in example]
    return [session.put(x) for x in example]


def _run_model(point: Point, chip: ChipSpec, rows: list[dict[str, Any]]) -> None:
    from ember.compiled import compile as ember_compile
    w = point.workload
    model, example = _model(w.spec)
    with reusing_captures(_CAPTURES):        # the graph is the same on every chip
        cm = ember_compile(model, example, chip=chip, dtype=w.dtype)
    timing_only = w.timing_only or any(x.is_meta for x in example)
    with cm.session("sim") as sess:
        sess.run(*_inputs(sess, example, timing_only), timing_only=timing_only)
        _measured(rows[0], sess.last_run, cm.program, chip)


def _run_generate(point: Point, chip: ChipSpec, rows: list[dict[str, Any]]) -> None:
    from ember.generation import generate
    from models.serving import random_prompt
    w = point.workload
    model, _ = _model(w.spec)
    torch.manual_seed(0)                  # the same prompt in every process
    prompt = random_prompt(model, w.generate.prompt_len, w.generate.batch)
    gen = generate(model, prompt, w.generate.new_tokens, chip=chip, dtype=w.dtype,
                   timing_only=w.timing_only or any(p.is_meta for p in model.parameters()))
    _measured(rows[0], gen.runs["prefill"], gen.prefill.program, chip, gen.ttft_s)
    _measured(rows[1], gen.runs["step"], gen.decode.program, chip, gen.tpot_s)


def evaluate(point: Point) -> list[dict[str, Any]]:
    """The rows of one point (one, or prefill and decode for a `generate` workload). Never
    raises: what stops a point is its rows' `reason`."""
    phases = ("prefill", "decode") if point.workload.generate else ("run",)
    try:
        chip = point.chip()
    except ChipSpecError as err:
        rows = [_row(point, ph, None, point.values) for ph in phases]
        for r in rows:
            r["reason"] = "chip: " + " ".join(str(err).split())
        return rows
    values = {path: _value(chip, path) for path in point.values}
    rows = [_row(point, ph, chip, values) for ph in phases]
    try:
        (_run_generate if point.workload.generate else _run_model)(point, chip, rows)
    except (EmberError, NoTilingError) as err:     # the chip cannot run it: a refusal
        reason = " ".join(str(err).split())
    except Exception as err:          # a bug shows as a row with its place, not a dead sweep
        where = traceback.extract_tb(err.__traceback__)[-1]
        reason = f"{_first_line(err)} (at {where.filename.rsplit('/', 1)[-1]}:{where.lineno})"
    else:
        return rows
    for r in rows:
        r.update({m: None for m in METRICS if m != "area_mm2"}, fits=False, reason=reason)
    return rows


def full_load(chip: ChipSpec, n: int = 2048, dtype: str = "bf16") -> Any:
    """The RunResult of an n x n x n GEMM in `dtype` (timing only, operands in device memory): the
    chip at full load, whose energy over its time is the chip's power at full load."""
    from ember.compiled import compile as ember_compile
    model = torch.nn.Linear(n, n, bias=False).to("meta")
    cm = ember_compile(model, (torch.empty(n, n, device="meta"),), chip=chip, dtype=dtype)
    with cm.session("sim") as sess:
        sess.run(sess.zeros((n, n), torch.float32), timing_only=True)
        return sess.last_run


def _value(chip: ChipSpec, path: str) -> Any:
    node: Any = chip
    for part in path.split("."):
        node = getattr(node, part)
    return node.value if hasattr(node, "value") else node
