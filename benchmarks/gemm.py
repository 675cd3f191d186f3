"""GEMM kernel template (ops/kernels/matmul.py) on a chip: a sweep of shapes and dtypes.

For each case: the plan the search chooses, simulated time (timing-only by default), the
roofline bound (ops at peak, or each operand moved once at its memory's bandwidth), the
fraction of that bound achieved, of peak FLOPs and of DRAM bandwidth, and the cost model's
prediction against the simulation.

    .venv/bin/python benchmarks/gemm.py [--chip mtia2i] [--functional] [--quick]

Targets: 2048^3 bf16 in SRAM >= 85% of peak; int8, fp8 and MX GEMMs >= 90% of their peak on
the chips that have them (the largest compute-bound case of each dtype; `--chip mtia450` for
fp8, mxfp8 and mxfp4);
the small-M GEMM streaming weights from DRAM >= 85% of DRAM bandwidth; never faster than the
roofline; predicted within 15% of simulated. Cases in a dtype the chip lacks are listed as such.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np
from kernel_bench import measure, random_inputs
from rich.console import Console
from rich.table import Table

from ops.kernel import KernelCall, Placement
from simulator import load_chip
from simulator.isa.mx import FORMATS as MX_FORMATS


@dataclass(frozen=True)
class Case:
    op: str                      # "matmul" | "linear"
    M: int
    K: int
    N: int
    dtype: str
    space: str                   # where operands and result live: "sram" | "dram"
    batch: tuple[int, ...] = ()
    bias: bool = False
    weights: str | None = None   # another space for the weight (rhs / W), e.g. "dram"
    dequant: bool = False        # int8 / fp8 linear as the compiler makes it: fp32 out, d[N] per column
    row_scales: bool = False     # and s[M] per row (activations quantized per row)

    @property
    def name(self) -> str:
        b = "x".join(map(str, self.batch)) + "x" if self.batch else ""
        extras = [name for name, on in (("bias", self.bias), ("dequant", self.dequant),
                                         ("row scales", self.row_scales)) if on]
        return f"{self.op} {b}{self.M}x{self.K}x{self.N}" + "".join(f" +{e}" for e in extras)


CASES = [
    Case("matmul", 2048, 2048, 2048, "bf16", "sram"),
    Case("linear", 16, 8192, 8192, "bf16", "dram"),
    Case("linear", 16, 16384, 16384, "bf16", "dram"),
    Case("linear", 16, 8192, 8192, "int8", "dram"),
    Case("linear", 2048, 4096, 4096, "bf16", "sram", weights="dram"),
    Case("linear", 512, 4096, 11008, "bf16", "dram", bias=True),
    Case("matmul", 1024, 1024, 1024, "fp32", "sram"),
    Case("matmul", 2048, 2048, 2048, "int8", "sram"),
    Case("matmul", 8192, 1024, 64, "bf16", "sram"),
    Case("matmul", 64, 1024, 8192, "bf16", "sram"),
    Case("matmul", 1000, 999, 1001, "bf16", "dram"),
    Case("linear", 37, 1234, 555, "fp32", "sram", bias=True),
    Case("matmul", 128, 64, 128, "bf16", "sram", batch=(16,)),
    Case("linear", 4096, 256, 4096, "int8", "dram", bias=True),
    # int8 linears as the dtype pass emits them (int32 accumulator -> * s[m] * d[n] + b[n], fp32)
    Case("linear", 56, 64, 176, "int8", "sram", bias=True, dequant=True, row_scales=True),
    Case("linear", 176, 512, 1408, "int8", "sram", dequant=True, row_scales=True),
    Case("linear", 1, 4096, 14336, "int8", "dram", dequant=True, row_scales=True),
    Case("linear", 2048, 4096, 4096, "int8", "sram", weights="dram", dequant=True, row_scales=True),
    # fp8 (e4m3; fp32 accumulator), bare and as the dtype pass emits it
    Case("matmul", 2048, 2048, 2048, "fp8", "sram"),
    Case("matmul", 4096, 4096, 4096, "fp8", "sram"),
    Case("linear", 2048, 4096, 4096, "fp8", "sram", weights="dram", dequant=True, row_scales=True),
    Case("linear", 16, 8192, 8192, "fp8", "dram", dequant=True, row_scales=True),
    Case("matmul", 4096, 4096, 4096, "bf16", "sram"),
    Case("matmul", 4096, 4096, 4096, "int8", "sram"),
    # OCP MX block formats (A[M, K] and W[N, K] rows of 32-element blocks; fp32 accumulator)
    Case("linear", 4096, 4096, 4096, "mxfp8", "sram"),
    Case("linear", 4096, 4096, 4096, "mxfp4", "sram"),
    Case("linear", 8192, 8192, 4096, "mxfp4", "sram"),      # mxfp4 is 3x fp8: twice the work for the fill to hide
    Case("linear", 2048, 4096, 4096, "mxfp4", "sram", weights="dram"),
    Case("linear", 16, 8192, 8192, "mxfp8", "dram"),
    Case("linear", 16, 8192, 8192, "mxfp4", "dram"),
]
QUICK = [0, 1, 6, 10]


def build_call(case: Case) -> tuple[KernelCall, dict]:
    """Placements packed one after another per space; random inputs (for functional runs)."""
    mx = MX_FORMATS.get(case.dtype)
    out_dtype = ("fp32" if case.dequant or mx else "int32" if case.dtype == "int8"
                 else "bf16" if case.dtype == "fp8" else case.dtype)
    k = mx.row_bytes(case.K) if mx else case.K      # an MX row of K values is K / 32 blocks of bytes
    a_shape = (*case.batch, case.M, k)
    shapes = [a_shape, (*case.batch, case.K, case.N) if case.op == "matmul" else (case.N, k)]
    dtypes = [case.dtype, case.dtype]
    if case.op == "linear":
        shapes.append((case.N,) if case.bias else None)
        dtypes.append("fp32" if case.dequant else case.dtype)
    if case.dequant:
        shapes += [(case.N,)] + ([(*case.batch, case.M, 1)] if case.row_scales else [])
        dtypes += ["fp32", "fp32"]
    spaces = [case.space, case.weights or case.space] + [case.space] * (len(shapes) - 2)
    top = {"dram": 0, "sram": 0}
    placements = []
    for shape, space, dtype in zip(shapes, spaces, dtypes):
        if shape is None:
            placements.append(None)
            continue
        placements.append(Placement(space, top[space], shape, dtype))
        top[space] += -(-placements[-1].nbytes // 4096) * 4096
    out = Placement(case.space, top[case.space], (*case.batch, case.M, case.N), out_dtype)
    return KernelCall(case.op, tuple(placements), out), {}


def run_case(case: Case, chip, functional: bool) -> dict:
    call, _ = build_call(case)
    init = random_inputs(call, np.random.default_rng(0)) if functional else None
    r = measure(call, chip, init)
    r["case"], r["num_err"] = case, None
    if functional:       # check the numbers against a float64 / int64 reference
        xs = [None if p is None else init[(p.space, p.addr)] for p in call.inputs]
        xs = [x if x is None or p.dtype not in MX_FORMATS else MX_FORMATS[p.dtype].decode(x)
              for x, p in zip(xs, call.inputs)]
        xs = [None if x is None else x.astype(np.float64) for x in xs]
        ref = np.matmul(xs[0], xs[1]) if case.op == "matmul" else xs[0] @ xs[1].T
        if case.dequant:
            ref = ref * (xs[4] if case.row_scales else 1.0) * xs[3]
        if case.op == "linear" and xs[2] is not None:
            ref = ref + xs[2]
        r["num_err"] = float(np.abs(r["output"] - ref).max() / max(np.abs(ref).max(), 1e-30))
    dram_bytes = sum(p.nbytes for p in (*call.inputs, call.output) if p is not None and p.space == "dram")
    r["of_dram"] = dram_bytes / r["seconds"] / chip.dram_bytes_per_s if dram_bytes else None
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chip", default="mtia2i")
    ap.add_argument("--functional", action="store_true", help="compute numbers too (slow for big cases)")
    ap.add_argument("--quick", action="store_true", help="four cases only")
    args = ap.parse_args()
    chip = load_chip(args.chip)
    cases = [CASES[i] for i in QUICK] if args.quick else CASES
    console = Console(width=200)
    table = Table(title=f"GEMM kernel on {chip.name} ({'functional' if args.functional else 'timing-only'})")
    for col in ("shape", "dtype", "placement", "plan", "sim µs", "bound µs", "% bound",
                "% peak", "% DRAM BW", "predicted", "simulated", "error", "records/commands", "choose/emit/sim s"):
        table.add_column(col, justify="left" if col in ("shape", "plan", "placement") else "right")
    worst = 0.0
    for case in cases:
        if chip.dpe.macs_per_cycle.get(case.dtype) is None:
            table.add_row(case.name, case.dtype, case.space, f"{chip.name} has no {case.dtype}", *[""] * 10)
            continue
        r = run_case(case, chip, args.functional)
        worst = max(worst, abs(r["err"]))
        place = case.space + (f", W in {case.weights}" if case.weights else "")
        table.add_row(case.name, case.dtype, place, str(r["plan"]), f"{r['us']:.1f}",
                      f"{r['roof_us']:.1f}", f"{100 * r['of_bound']:.1f}", f"{100 * r['of_peak']:.1f}",
                      "-" if r["of_dram"] is None else f"{100 * r['of_dram']:.1f}",
                      str(r["pred"]), str(r["cycles"]), f"{100 * r['err']:+.1f}%",
                      f"{r['records']}/{r['commands']}",
                      f"{r['t_choose']:.2f}/{r['t_emit']:.2f}/{r['t_sim']:.2f}")
        if r["num_err"] is not None:
            console.print(f"{case.name} {case.dtype}: max relative error {r['num_err']:.2e}")
        if r["of_bound"] > 1.0:
            console.print(f"[red]{case.name}: simulated faster than its roofline bound[/red]")
    console.print(table)
    console.print(f"worst cost-model error: {100 * worst:.1f}%")


if __name__ == "__main__":
    main()
