"""A 2026-scale mixture-of-experts decoder through `ember.generate`, timing only, against its floors.

    .venv/bin/python benchmarks/moe.py [--chip mtia2i] [--layers 48] [--runs 1x2048,16x128]
                                       [--routing uniform,skewed]

The model is Qwen3-30B-A3B-shaped (models/moe_meta.py: 48 layers, 128 experts of which each token
takes 8) on the meta device, its experts transformers' grouped_mm path: rows sorted by expert
(a counting sort), counted, one grouped matmul per projection whose group sizes a timing-only run
takes from the routing (runtime/routing.py). For each routing and batch it prints:

    TTFT against the prefill's floors: compute = the prefill's FLOPs at peak (every GEMM, the
         experts' at the rows they get, attention over the causal half); memory = every weight
         the prefill reads (a 2048-token prompt's 16384 rows reach every expert), the prompt's
         embedding rows and the KV cache it writes, once, at the bandwidth of where each lives.
         The larger is the floor.
    TPOT against the decode step's DRAM floor = (the dense weights + the weights of the experts
         that get rows under the routing + the KV cache, where they live in DRAM) / DRAM
         bandwidth, beside what lives in SRAM at SRAM bandwidth (benchmarks/serving.py).

`--runs`: batch x prompt length per run. A batch of one routes 8 rows to 8 distinct experts
whatever the routing; a larger batch shows the routing: skewed routing sends more rows to fewer
experts, and fewer experts' weights are read.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import ember  # noqa: E402
from runtime.host_cost import step_flops  # noqa: E402
from serving import decode_floor, expert_shares  # noqa: E402


def run(chip, layers: int, prompt: int, batch: int, routing: str, cache) -> dict:
    from models.moe_meta import qwen3_moe
    model, (ids,) = qwen3_moe(prompt_len=prompt, batch=batch, num_hidden_layers=layers)
    t0 = time.perf_counter()
    g = ember.generate(model, ids, max_new_tokens=3, chip=chip, dtype="bf16", timing_only=True,
                       max_cache_len=prompt + 3, cache=cache, routing=routing)
    wall = time.perf_counter() - t0
    prefill = g.prefill.program
    flops = sum(step_flops(prefill, s) for s in prefill.steps)
    compute = flops / chip.peak_ops_per_s("bf16")
    weights, _ = decode_floor(g.prefill, batch * prompt, routing)     # what the prefill reads and writes once
    tpot_floor, parts = decode_floor(g.decode, batch, routing)
    active = expert_shares(g.decode.program, routing)
    return dict(g=g, wall=wall, flops=flops, compute=compute, weights=weights, tpot_floor=tpot_floor, parts=parts,
                active=sum(active.values()) / max(len(active), 1), assumed=g.runs["step"].assumed[:1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chip", default="mtia2i")
    ap.add_argument("--layers", type=int, default=48)
    ap.add_argument("--runs", default="1x2048,16x128", help="batch x prompt length, comma-separated")
    ap.add_argument("--routing", default="uniform,skewed")
    args = ap.parse_args(argv)
    chip = ember.load_chip(args.chip)
    print(f"# Qwen3-30B-A3B-shaped MoE decoder ({args.layers} layers), bf16, {chip.name}, timing only")
    print(f"{'batch':>5s} {'prompt':>6s} {'routing':8s} {'TTFT ms':>9s} {'compute':>9s} {'memory':>9s} {'x floor':>7s} "
          f"{'TPOT ms':>9s} {'DRAM fl':>9s} {'x floor':>7s} {'experts':>7s} {'wall s':>7s}")
    ok = True
    with tempfile.TemporaryDirectory() as cache:
        for batch, prompt in (map(int, r.split("x")) for r in args.runs.split(",")):
            for routing in args.routing.split(","):
                r = run(chip, args.layers, prompt, batch, routing, cache)
                g = r["g"]
                floor = max(r["compute"], r["weights"])
                print(f"{batch:5d} {prompt:6d} {routing:8s} {g.ttft_s * 1e3:9.2f} {r['compute'] * 1e3:9.2f} {r['weights'] * 1e3:9.2f} "
                      f"{g.ttft_s / floor:7.3f} {g.tpot_s * 1e3:9.3f} {r['tpot_floor'] * 1e3:9.3f} "
                      f"{g.tpot_s / r['tpot_floor']:7.3f} {r['active']:7.1%} {r['wall']:7.0f}", flush=True)
                ok &= g.ttft_s >= floor and g.tpot_s >= r["tpot_floor"]
    print("(experts: the share of each layer's experts a decode step reads; x floor: simulated over floor; "
          f"every time above its floor: {'PASS' if ok else 'FAIL'})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
