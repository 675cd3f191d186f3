"""Attention kernel (ops/kernels/attention*.py) on a chip: 7B-class decode and prefill shapes.

Each case is one `ember.attention` KernelCall measured with benchmarks/kernel_bench.py's
`measure` (the plan the search chooses, emitted and simulated timing-only), its operands placed
as the multimodal-7b Programs place them: the query and the output in SRAM, the keys and values
(a served model's KV cache) and the decode mask in DRAM. The decode mask is an i1 mask (held as
int32 0/1), (B, 1, 1, S), as a static-cache decode step builds it from its position.

Per case: simulated cycles and time; the compute floor (the op's FLOPs, the causal half for
causal attention, at the chip's peak for the dtype); the memory floor (each level's bytes,
operands read once and the result written once, at that level's bandwidth: the slowest level);
simulated / max(floors); the share of the DRAM bandwidth the K/V bytes got; and the cost model's
prediction over the simulated cycles.

    .venv/bin/python benchmarks/attention.py [--chip mtia2i] [--quick]

Targets: decode within 1/0.9 of reading K and V once at the DRAM bandwidth; prefill as close to
its compute floor as the DPE and SIMD engines allow; predictions within 15%.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

from kernel_bench import measure
from rich.console import Console
from rich.table import Table

from ops.kernel import KernelCall, Placement, kernel_for
from simulator import load_chip


@dataclass(frozen=True)
class Case:
    name: str
    query: tuple[int, ...]
    kv: tuple[int, ...]
    causal: bool
    mask: tuple[int, ...] | None = None
    dtype: str = "bf16"


CASES = [
    Case("decode MHA, mask", (1, 32, 1, 128), (1, 32, 2064, 128), False, (1, 1, 1, 2064)),
    Case("decode GQA 32/8, mask", (1, 32, 1, 128), (1, 8, 2064, 128), False, (1, 1, 1, 2064)),
    Case("decode MHA", (1, 32, 1, 128), (1, 32, 2064, 128), False),
    Case("decode GQA 32/8", (1, 32, 1, 128), (1, 8, 2064, 128), False),
    Case("prefill MHA causal", (1, 32, 2048, 128), (1, 32, 2048, 128), True),
    Case("prefill GQA 32/8 causal", (1, 32, 2048, 128), (1, 8, 2048, 128), True),
]
QUICK = [0, 1]


def build_call(case: Case) -> KernelCall:
    """Q and the output in SRAM; K, V and the mask in DRAM, one after another."""
    top = {"dram": 0, "sram": 0}

    def put(space: str, shape, dtype: str) -> Placement:
        p = Placement(space, top[space], tuple(shape), dtype)
        top[space] += -(-p.nbytes // 4096) * 4096
        return p

    q = put("sram", case.query, case.dtype)
    k, v = put("dram", case.kv, case.dtype), put("dram", case.kv, case.dtype)
    mask = put("dram", case.mask, "int32") if case.mask else None
    out = put("sram", case.query, case.dtype)
    return KernelCall("attention", (q, k, v, mask), out, {"causal": case.causal, "scale": case.query[-1] ** -0.5})


def floors(call: KernelCall, chip) -> tuple[float, float]:
    """(compute floor, memory floor) in seconds."""
    template = kernel_for("attention")
    compute = template.flops(call) / chip.peak_ops_per_s(call.compute_dtype)
    bandwidth = {"dram": chip.dram_bytes_per_s, "sram": chip.sram.bytes_per_s}
    memory = max(n / bandwidth[space] for space, n in template.bytes_moved(call).items())
    return compute, memory


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chip", default="mtia2i")
    ap.add_argument("--quick", action="store_true", help="the two masked decode cases only")
    args = ap.parse_args()
    chip = load_chip(args.chip)
    cases = [CASES[i] for i in QUICK] if args.quick else CASES
    console = Console(width=220)
    table = Table(title=f"attention on {chip.name} (timing-only; Q/out in SRAM, K/V/mask in DRAM)")
    for col in ("case", "plan", "cycles", "sim µs", "compute floor µs", "memory floor µs", "sim / floor",
                "K+V % DRAM BW", "pred / sim", "choose s", "sim s"):
        table.add_column(col, justify="left" if col in ("case", "plan") else "right")
    for case in cases:
        call = build_call(case)
        r = measure(call, chip)
        compute, memory = floors(call, chip)
        kv_bytes = call.inputs[1].nbytes + call.inputs[2].nbytes
        if case.causal:     # (keys past the last query are never read)
            kv_bytes = sum(n for s, n in kernel_for("attention").bytes_moved(call).items() if s == "dram")
        table.add_row(case.name, str(r["plan"]), str(r["cycles"]), f"{r['us']:.1f}", f"{compute * 1e6:.1f}",
                      f"{memory * 1e6:.1f}", f"{r['seconds'] / max(compute, memory):.2f}",
                      f"{100 * kv_bytes / r['seconds'] / chip.dram_bytes_per_s:.1f}",
                      f"{r['pred'] / r['cycles']:.3f}", f"{r['t_choose']:.1f}", f"{r['t_sim']:.1f}")
        if r["seconds"] < max(compute, memory):
            console.print(f"[red]{case.name}: simulated faster than its floor[/red]")
    console.print(table)


if __name__ == "__main__":
    main()
