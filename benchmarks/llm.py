"""Large-model benchmark: compile a SPEC to a Program, simulate it timing-only, and set the
simulated latency against hand limits.

    .venv/bin/python benchmarks/llm.py models:multimodal-7b [--chip mtia2i] [--dtype bf16] [--top 15]

Prints the compile time by phase, the simulation's wall time, the simulated latency, and two
bounds no schedule can beat: compute-bound (the graph's FLOPs at the chip's peak for the dtype)
and DRAM-bound (every weight read once from DRAM at the DRAM bandwidth); then where simulated
time goes, by op and by step (kernels, host ops, host-link transfers).
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ember  # noqa: E402
from ops.kernel import ISA_ITEMSIZE  # noqa: E402
from runtime.host_cost import step_flops  # noqa: E402

ITEMSIZE = {"fp32": 4, "bf16": 2, "int8": 1}


def weight_bytes(program, dtype: str) -> int:
    """Bytes of every value the graph reads that no step or input produces (weights, literals),
    float weights at the compute dtype's width."""
    produced = {t for s in program.steps for t in s["results"]} | set(program.inputs)
    read = {t for s in program.steps for t in s["operands"] if t is not None}
    total = 0
    for t in read - produced:
        entry = program.tensors[t]
        size = ITEMSIZE[dtype] if entry["dtype"] in ("f32", "bf16", "f16", "f64") else \
            ISA_ITEMSIZE.get(entry.get("isa_dtype", "int32"), 4)
        total += math.prod(entry["shape"]) * size
    return total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("spec")
    ap.add_argument("--chip", default="mtia2i")
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--top", type=int, default=15)
    args = ap.parse_args(argv)

    chip = ember.load_chip(args.chip)
    t0 = time.perf_counter()
    model, inputs = ember.load_model(args.spec)
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    cm = ember.compile(model, inputs, chip=chip, dtype=args.dtype, to="program")
    t_compile = time.perf_counter() - t0
    program = cm.program
    print(f"# {args.spec} on {chip.name}, {args.dtype}")
    print(f"model load            {t_load:8.1f} s")
    print(f"compile               {t_compile:8.1f} s   " +
          ", ".join(f"{k} {v:.1f} s" for k, v in cm.timings.items()))
    records = sum(len(k) for k in program.kernels)
    commands = sum(k.num_commands for k in program.kernels)
    print(f"program               {len(program.kernels)} kernels, {records:,} stored records, "
          f"{commands:,} commands; {program.meta.get('relocated_kernels', 0)} kernels relocated")

    fresh = defaultdict(int)
    for st in program.steps:
        if st["kind"] == "kernel" and not st.get("elided") and \
                type(program.kernels[st["kernel"]]).__name__ != "RelocatedProgram":
            fresh[st["op"]] += 1
    print("emitted afresh        " + ", ".join(f"{k} {v}" for k, v in sorted(fresh.items(), key=lambda kv: -kv[1])))
    placed = defaultdict(int)
    produced = {t for st in program.steps for t in st["results"]} | set(program.inputs)
    for t, entry in program.tensors.items():
        if "space" in entry:
            kind = "activations" if t in produced else "weights"
            placed[(kind, entry["space"])] += math.prod(entry["shape"]) * ISA_ITEMSIZE[entry["isa_dtype"]]
    print("placed                " + ", ".join(f"{k} in {sp} {b / 1e9:.2f} GB" for (k, sp), b in sorted(placed.items())))

    t0 = time.perf_counter()
    cm.run(*inputs, device="sim", timing_only=True)
    t_sim = time.perf_counter() - t0
    run = cm.last_run
    import resource
    print(f"simulate (timing)     {t_sim:8.1f} s   (peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.1f} GB)")

    flops = sum(step_flops(program, s) for s in program.steps)
    wbytes = weight_bytes(program, args.dtype)
    compute_s = flops / chip.peak_ops_per_s(args.dtype)
    dram_s = wbytes / chip.dram_bytes_per_s
    bound = max(compute_s, dram_s)
    print(f"simulated latency     {run.seconds * 1e3:10.2f} ms  ({run.cycles:,} cycles)")
    print(f"compute-bound         {compute_s * 1e3:10.2f} ms  ({flops / 1e12:.2f} TFLOP at "
          f"{chip.peak_ops_per_s(args.dtype) / 1e12:.0f} TFLOPS)")
    print(f"DRAM-bound (weights)  {dram_s * 1e3:10.2f} ms  ({wbytes / 1e9:.2f} GB at "
          f"{chip.dram_bytes_per_s / 1e9:.1f} GB/s)")
    print(f"simulated / bound     {run.seconds / bound:10.2f} x")

    by_op: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for s in run.steps:
        name = s.op if s.kind != "transfer" else s.op
        by_op[(s.kind, name)][0] += s.cycles
        by_op[(s.kind, name)][1] += 1
    total = max(run.cycles, 1)
    print(f"\n{'kind':9s} {'op':28s} {'count':>6s} {'ms':>10s} {'share':>7s}")
    for (kind, name), (cyc, n) in sorted(by_op.items(), key=lambda kv: -kv[1][0])[:args.top]:
        print(f"{kind:9s} {name[:28]:28s} {n:6d} {cyc / chip.clock_hz * 1e3:10.3f} {cyc / total:7.1%}")
    host = [s for s in run.steps if s.kind == "host"]
    if host:
        names = defaultdict(int)
        for s in host:
            names[s.op] += 1
        print("\nhost steps: " + ", ".join(f"{k} x{v}" for k, v in sorted(names.items(), key=lambda kv: -kv[1])))
    print(f"\n{'top steps':9s} {'op':28s} {'ms':>10s} {'pred ms':>10s} {'roof ms':>10s}  location")
    for s in sorted(run.steps, key=lambda s: -s.cycles)[:args.top]:
        pred = f"{s.predicted_cycles / chip.clock_hz * 1e3:10.3f}" if s.predicted_cycles else f"{'':>10s}"
        roof = f"{s.roofline_cycles / chip.clock_hz * 1e3:10.3f}" if s.roofline_cycles else f"{'':>10s}"
        print(f"{s.kind:9s} {s.op[:28]:28s} {s.cycles / chip.clock_hz * 1e3:10.3f} {pred} {roof}  "
              f"{s.location[-60:]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
