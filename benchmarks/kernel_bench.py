"""What the kernel benchmarks (gemm.py, conv.py) share: random operands for a call, and one
kernel measured: the plan the search chooses, emitted and simulated, against the roofline
bound, the chip's peak and the cost model's prediction."""
from __future__ import annotations

import time

import ml_dtypes
import numpy as np

from ops.kernel import KernelCall, kernel_for, roofline_cycles
from simulator import ProgramBuilder, simulate
from simulator.isa.mx import FORMATS as MX_FORMATS

NP = {"fp32": np.float32, "bf16": ml_dtypes.bfloat16, "fp16": np.float16, "int8": np.int8, "int32": np.int32,
      "fp8": ml_dtypes.float8_e4m3fn}


def random_inputs(call: KernelCall, rng) -> dict:
    """Memory contents for the call's operands: int8 uniform over its range, floats normal (an
    MX operand: normal values encoded in its format)."""
    init = {}
    for p in call.inputs:
        if p is None:
            continue
        if p.dtype in MX_FORMATS:
            fmt = MX_FORMATS[p.dtype]
            x = fmt.encode(rng.standard_normal((*p.shape[:-1], fmt.row_values(p.shape[-1]))))
        elif p.dtype == "int8":
            x = rng.integers(-128, 128, p.shape).astype(np.int8)
        else:
            x = rng.standard_normal(p.shape).astype(NP[p.dtype])
        init[(p.space, p.addr)] = x
    return init


def measure(call: KernelCall, chip, init: dict | None = None) -> dict:
    """Choose, emit and simulate `call` (with numbers when `init` is given, else timing only).
    `output` is the result read back (None for timing only); `of_bound` the roofline bound over
    the simulated cycles; `err` the cost model's relative error; `t_*` wall seconds per stage."""
    tmpl = kernel_for(call.op)
    t0 = time.perf_counter()
    plan = tmpl.choose(call, chip)
    t1 = time.perf_counter()
    b = ProgramBuilder(chip)
    tmpl.emit(call, plan, chip, b)
    prog = b.build()
    t2 = time.perf_counter()
    res = simulate(prog, chip, memory_init=init, timing_only=init is None)
    t3 = time.perf_counter()
    o = call.output
    output = None if init is None else res.read(o.space, o.addr, o.shape, NP[o.dtype]).astype(np.float64)
    pred = tmpl.predict(call, plan, chip)
    roof = roofline_cycles(call, tmpl, chip)
    return {"plan": plan, "output": output, "cycles": res.cycles, "seconds": res.seconds, "us": res.seconds * 1e6,
            "roof_us": roof / chip.clock_hz * 1e6, "of_bound": roof / res.cycles,
            "of_peak": tmpl.flops(call) / res.seconds / chip.peak_ops_per_s(call.compute_dtype),
            "pred": pred, "err": (pred - res.cycles) / res.cycles, "records": len(prog),
            "commands": prog.num_commands, "t_choose": t1 - t0, "t_emit": t2 - t1, "t_sim": t3 - t2}
