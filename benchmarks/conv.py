"""Convolution kernel template (ops/kernels/conv.py) on a chip: a sweep of ResNet-like layers,
and the ResNet pools (ops/kernels/pooling.py).

For each case: the plan the search chooses, simulated time (timing-only by default), the
roofline bound (MACs at peak, or each operand moved once at its memory's bandwidth), the
fraction of that bound achieved and of peak FLOPs, and the cost model's prediction against
the simulation.

    .venv/bin/python benchmarks/conv.py [--chip mtia2i] [--dtype bf16] [--functional] [--quick]

--dtype int8 (or fp8, on chips that list it) times the quantized convolution the compiler makes:
int8 input and weight, fp32 bias and per-channel dequantization vector, bf16 output.

Targets: never faster than the roofline; predicted within 15% of simulated.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np
import torch
from kernel_bench import measure, random_inputs
from rich.console import Console
from rich.table import Table

from ops.kernel import KernelCall, Placement
from ops.pooling import _pool_reference
from simulator import load_chip

DTYPES = ("bf16", "fp16", "fp32", "int8", "fp8")
#: Operand dtypes whose convolution is quantized: fp32 bias and dequantization vector, bf16 output.
QUANTIZED = ("int8", "fp8")


@dataclass(frozen=True)
class Case:
    name: str
    N: int
    C: int
    H: int
    O: int
    k: int
    stride: int = 1
    pad: int = 0
    groups: int = 1
    bias: bool = False
    space: str = "sram"
    pool: str | None = None      # a pool of this kind ("max" | "avg") instead of a convolution

    @property
    def out(self) -> int:
        return (self.H + 2 * self.pad - self.k) // self.stride + 1


CASES = [
    Case("stem 7x7/2", 1, 3, 224, 64, 7, 2, 3),
    Case("conv2 1x1 reduce", 1, 256, 56, 64, 1),
    Case("conv2 3x3", 1, 64, 56, 64, 3, 1, 1),
    Case("conv2 1x1 expand", 1, 64, 56, 256, 1),
    Case("conv3 3x3/2", 1, 128, 56, 128, 3, 2, 1),
    Case("conv3 downsample 1x1/2", 1, 256, 56, 512, 1, 2),
    Case("conv3 3x3", 1, 128, 28, 128, 3, 1, 1),
    Case("conv4 3x3", 1, 256, 14, 256, 3, 1, 1),
    Case("conv4 1x1 expand", 1, 256, 14, 1024, 1),
    Case("conv5 3x3", 1, 512, 7, 512, 3, 1, 1),
    Case("conv5 1x1 expand", 1, 512, 7, 2048, 1),
    Case("conv4 3x3 batch 8", 8, 256, 14, 256, 3, 1, 1),
    Case("conv2 3x3 +bias, DRAM", 1, 64, 56, 64, 3, 1, 1, bias=True, space="dram"),
    Case("depthwise 3x3", 1, 128, 28, 128, 3, 1, 1, groups=128),
    Case("max pool 3x3/2", 1, 64, 112, 64, 3, 2, 1, pool="max"),
    Case("global avg pool", 8, 2048, 7, 2048, 7, 7, pool="avg"),
]
QUICK = [0, 2, 4, 9]


def build_call(case: Case, dtype: str) -> KernelCall:
    """Placements packed one after another in the case's space (a pool beside quantized
    convolutions: bf16, as the compiler holds their results)."""
    if case.pool:
        dtype = "bf16" if dtype in QUANTIZED else dtype
        x = Placement(case.space, 0, (case.N, case.C, case.H, case.H), dtype)
        out = Placement(case.space, -(-x.nbytes // 4096) * 4096, (case.N, case.C, case.out, case.out), dtype)
        return KernelCall("pool", (x,), out, {"kind": case.pool, "kernel": [case.k] * 2, "stride": [case.stride] * 2,
                                              "padding": [case.pad] * 2, "dilation": [1, 1], "ceil_mode": False,
                                              "count_include_pad": True, "divisor": 0})
    quantized = dtype in QUANTIZED
    shapes = [((case.N, case.C, case.H, case.H), dtype), ((case.O, case.C // case.groups, case.k, case.k), dtype),
              ((case.O,), "fp32" if quantized else dtype) if case.bias else None] + [((case.O,), "fp32")] * quantized
    top, placements = 0, []
    for spec in shapes:
        if spec is None:
            placements.append(None)
            continue
        placements.append(Placement(case.space, top, *spec))
        top += -(-placements[-1].nbytes // 4096) * 4096
    out = Placement(case.space, top, (case.N, case.O, case.out, case.out), "bf16" if quantized else dtype)
    attrs = {"stride": [case.stride] * 2, "padding": [case.pad] * 2, "dilation": [1, 1], "groups": case.groups}
    return KernelCall("conv", tuple(placements), out, attrs)


def run_case(case: Case, chip, dtype: str, functional: bool) -> dict:
    call = build_call(case, dtype)
    init = random_inputs(call, np.random.default_rng(0)) if functional else None
    r = measure(call, chip, init)
    r["num_err"] = None
    if functional:       # against torch in float64
        xs = [None if p is None else torch.from_numpy(init[(p.space, p.addr)].astype(np.float64))
              for p in call.inputs]
        if case.pool:
            ref = _pool_reference(xs[0].numpy(), case.pool, [case.k] * 2, [case.stride] * 2, [case.pad] * 2,
                                  [1, 1], False, True, 0)
        else:
            ref = torch.nn.functional.conv2d(xs[0], xs[1], None, case.stride, case.pad, 1, case.groups)
            if dtype in QUANTIZED:       # acc * d[o] (+ b[o])
                ref = ref * xs[3].reshape(1, -1, 1, 1)
            ref = (ref if xs[2] is None else ref + xs[2].reshape(1, -1, 1, 1)).numpy()
        r["num_err"] = float(np.abs(r["output"] - ref).max() / np.abs(ref).max())
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chip", default="mtia2i")
    ap.add_argument("--dtype", default="bf16", choices=DTYPES)
    ap.add_argument("--functional", action="store_true", help="compute numbers too (slow for big cases)")
    ap.add_argument("--quick", action="store_true", help="four cases only")
    args = ap.parse_args()
    chip = load_chip(args.chip)
    cases = [CASES[i] for i in QUICK] if args.quick else CASES
    console = Console(width=200)
    table = Table(title=f"conv kernel on {chip.name}, {args.dtype} "
                        f"({'functional' if args.functional else 'timing-only'})")
    for col in ("layer", "N,C,HxW -> O", "placement", "plan", "sim µs", "bound µs", "% bound", "% peak",
                "predicted", "simulated", "error", "records/commands", "choose/emit/sim s"):
        table.add_column(col, justify="left" if col in ("layer", "N,C,HxW -> O", "plan", "placement") else "right")
    worst = 0.0
    for case in cases:
        r = run_case(case, chip, args.dtype, args.functional)
        worst = max(worst, abs(r["err"]))
        shape = (f"{case.N},{case.C},{case.H}x{case.H} -> {case.pool or case.O} "
                 f"k{case.k}/{case.stride}" + (f" g{case.groups}" if case.groups > 1 else ""))
        table.add_row(case.name, shape, case.space, str(r["plan"]), f"{r['us']:.2f}", f"{r['roof_us']:.2f}",
                      f"{100 * r['of_bound']:.1f}", f"{100 * r['of_peak']:.1f}", str(r["pred"]), str(r["cycles"]),
                      f"{100 * r['err']:+.1f}%", f"{r['records']}/{r['commands']}",
                      f"{r['t_choose']:.2f}/{r['t_emit']:.2f}/{r['t_sim']:.2f}")
        if r["num_err"] is not None:
            console.print(f"{case.name}: max relative error {r['num_err']:.2e}")
        if r["of_bound"] > 1.0:
            console.print(f"[red]{case.name}: simulated faster than its roofline bound[/red]")
    console.print(table)
    console.print(f"worst cost-model error: {100 * worst:.1f}%")


if __name__ == "__main__":
    main()
