"""Serving through the public surface: sessions (device-resident tensors) and `ember.generate`.

    .venv/bin/python benchmarks/serving.py [--chip mtia2i] [--part gemm,decode,llm,tokens] [--new-tokens 4]

Parts (all by default):
- gemm: GEMM modules run through `cm.session` with the input put first, against their floors
  (compute: FLOPs at peak; memory: the weights read once from where they live); the same module
  through one-shot `cm.run`, for its host-link share. Checks: 2048^3 bf16 >= 92% of peak;
  512x26592x2048 bf16 with the weights in DRAM >= 95% of DRAM bandwidth; int8 over bf16 on 2048^3
  between 1.5x and 2.0x; nothing faster than its floor.
- decode: the multimodal-small decode step: host-link share of `sess.run` (0) and of `cm.run`.
- llm: `ember.generate` on a Llama-2-7B-shaped Hugging Face model on the meta device (timing only,
  bf16): TTFT for a 2048-token prompt against the compute floor, TPOT at a 2048-token cache
  against the DRAM floor, and the host link's share of a decode step. Floors:
    compute floor = the prefill's FLOPs (every GEMM, attention over the causal half) at peak;
    DRAM floor   = (weights the step reads whole that live in DRAM + one embedding row per
                    sequence + the KV cache that lives in DRAM) / DRAM bandwidth (the part of the
                    cache the memory plan keeps in SRAM is read at SRAM bandwidth, at the same
                    time, and bounds nothing here).
- tokens: `ember.generate` on a random-weight Llama from a config against transformers' own greedy
  `generate`: fp32 at batch 1 and 2, and bf16 (how many tokens agree).
Each line is a measured ratio; PASS/FAIL marks the issue's bar where there is one.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ember  # noqa: E402
from runtime.host_cost import step_flops  # noqa: E402

ITEM = {"fp32": 4, "bf16": 2, "int8": 1}


def _mark(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


class Chain(torch.nn.Module):
    """x -> (up: K -> N, down: N -> K) x layers: the up projections are the M x N x K GEMM
    measured. Two layers' weights exceed the chip's SRAM, so the second layer's stream from DRAM,
    as a large model's weights do."""

    def __init__(self, k: int, n: int, layers: int = 2):
        super().__init__()
        self.ups = torch.nn.ModuleList(torch.nn.Linear(k, n, bias=False) for _ in range(layers))
        self.downs = torch.nn.ModuleList(torch.nn.Linear(n, k, bias=False) for _ in range(layers))

    def forward(self, x):
        for up, down in zip(self.ups, self.downs):
            x = down(up(x))
        return x


def _session_run(cm, x):
    with cm.session("sim") as sess:
        xd = sess.put(x)
        sess.run(xd, timing_only=True)
        return sess.last_run


def part_gemm(chip) -> list[bool]:
    print(f"\n## GEMMs through cm.session on {chip.name} (input put first; timing only)")
    print(f"{'case':40s} {'sess.run ms':>11s} {'floor ms':>9s} {'bound':>7s} {'% peak':>7s} {'% DRAM':>7s} "
          f"{'cm.run ms':>10s} {'link share':>10s}")
    checks = []
    peak = {d: chip.peak_ops_per_s(d) for d in ("bf16", "int8")}
    times = {}
    for dtype in ("bf16", "int8"):
        x = torch.randn(2048, 2048, device="meta")
        with torch.device("meta"):
            lin = torch.nn.Linear(2048, 2048, bias=False).eval()
        cm = ember.compile(lin, (x,), chip=chip, dtype=dtype)
        run = _session_run(cm, x)
        flops = 2 * 2048 ** 3
        floor = flops / peak[dtype]
        cm.run(x, device="sim", timing_only=True)
        one = cm.last_run
        times[dtype] = run.seconds
        of_peak = flops / run.seconds / peak[dtype]
        print(f"{'matmul 2048^3 ' + dtype:40s} {run.seconds * 1e3:11.4f} {floor * 1e3:9.4f} {'compute':>7s} "
              f"{100 * of_peak:7.1f} {'':>7s} {one.seconds * 1e3:10.4f} {one.breakdown['host_link'] / one.seconds:10.1%}")
        checks.append(run.seconds >= floor)
        if dtype == "bf16":
            checks.append(of_peak >= 0.92)
            print(f"  2048^3 bf16 >= 92% of peak: {_mark(of_peak >= 0.92)}")
    ratio = times["bf16"] / times["int8"]
    print(f"  int8 over bf16 on 2048^3: {ratio:.2f}x (1.5x..2.0x): {_mark(1.5 <= ratio <= 2.0)}")
    checks.append(1.5 <= ratio <= 2.0)

    m, n, k = 512, 26592, 2048
    with torch.device("meta"):
        chain = Chain(k, n).eval()
    x = torch.randn(m, k, device="meta")
    cm = ember.compile(chain, (x,), chip=chip, dtype="bf16")
    tensors = cm.program.tensors
    kernels = [s for s in cm.program.steps if s["kind"] == "kernel"]
    ups = [i for i, s in enumerate(kernels) if s["op"] == "linear" and tensors[s["operands"][1]]["shape"] == [n, k]]
    in_dram = [i for i in ups if tensors[kernels[i]["operands"][1]]["space"] == "dram"]
    nth = (in_dram or ups)[0]
    w_space = tensors[kernels[nth]["operands"][1]]["space"]
    run = _session_run(cm, x)
    step = [s for s in run.steps if s.kind == "kernel"][nth]
    seconds = step.cycles / chip.clock_hz
    w_bytes = n * k * 2
    dram_floor = w_bytes / chip.dram_bytes_per_s
    compute_floor = 2 * m * n * k / peak["bf16"]
    of_dram = w_bytes / seconds / chip.dram_bytes_per_s
    print(f"{f'linear {m}x{n}x{k} bf16, W in {w_space}':40s} {seconds * 1e3:11.4f} {max(dram_floor, compute_floor) * 1e3:9.4f} "
          f"{'DRAM':>7s} {100 * 2 * m * n * k / seconds / peak['bf16']:7.1f} {100 * of_dram:7.1f}")
    print(f"  (one GEMM step of sess.run; the whole run, {len(kernels)} GEMMs: {run.seconds * 1e3:.4f} ms, "
          f"host link {run.breakdown['host_link'] * 1e3:.4f} ms)")
    ok = w_space == "dram" and of_dram >= 0.95 and seconds >= max(dram_floor, compute_floor)
    print(f"  512x26592x2048 bf16, W from DRAM, >= 95% of DRAM bandwidth: {_mark(ok)}")
    checks.append(ok)
    below = [s for s in run.steps if s.roofline_cycles and s.cycles < s.roofline_cycles]
    print(f"  kernels below their roofline floor: {len(below)}: {_mark(not below)}")
    checks.append(not below)
    return checks


def part_decode(chip) -> list[bool]:
    print(f"\n## multimodal-small decode step on {chip.name}, bf16")
    model, inputs = ember.load_model("models:multimodal-small-decode")
    cm = ember.compile(model, inputs, chip=chip, dtype="bf16")
    with cm.session("sim") as sess:
        held = [sess.put(x) for x in inputs]
        sess.run(*held)
        run = sess.last_run
    host_ops = sorted({s.op for s in run.steps if s.kind == "host"})
    share = run.breakdown["host_link"] / run.seconds
    print(f"sess.run: {run.seconds * 1e6:9.1f} us, host link {run.breakdown['host_link'] * 1e6:.1f} us "
          f"({share:.1%}), host {run.breakdown['host'] * 1e6:.1f} us; host steps: {', '.join(host_ops) or 'none'}")
    cm.run(*inputs, device="sim")
    one = cm.last_run
    print(f"cm.run:   {one.seconds * 1e6:9.1f} us, host link {one.breakdown['host_link'] * 1e6:.1f} us "
          f"({one.breakdown['host_link'] / one.seconds:.1%}): every cache up and down")
    print(f"  host-link share of sess.run is 0: {_mark(share == 0)}")
    return [share == 0]


def expert_shares(program, routing=None) -> dict[int, float]:
    """The share of each grouped matmul's expert weights a run reads under `routing`: the
    experts that get rows (runtime/routing.py), over all of them."""
    from runtime.routing import group_sizes
    from runtime.sized_kernels import group_caps
    caps = group_caps(program)
    shares = {}
    for s in program.steps:
        if s["op"] == "grouped_matmul":
            rows, experts = (program.tensors[t]["shape"][0] for t in s["operands"][:2])
            sizes = group_sizes(routing, rows, experts, caps.get(s["operands"][2]) or None)
            shares[s["operands"][1]] = sum(1 for n in sizes if n) / experts
    return shares


def decode_floor(cm, batch: int, routing=None) -> tuple[float, dict[str, float]]:
    """The decode step's memory floor (see the module docstring), and its parts in bytes: what
    the step reads once from DRAM at DRAM bandwidth, beside what it reads from SRAM at SRAM
    bandwidth (the levels work at the same time). Of a mixture-of-experts layer's experts, only
    those that get rows under `routing` are read."""
    program = cm.program
    chip = cm.chip
    shares = expert_shares(program, routing)
    gathered = {s["operands"][0] for s in program.steps if s["op"] == "embedding"}
    state = {program.inputs[i] for i in program.mutated_inputs}
    parts = {"weights in DRAM": 0, "embedding rows": 0, "KV cache in DRAM": 0, "KV cache in SRAM": 0,
             "weights in SRAM": 0}
    for t, e in program.tensors.items():
        if "space" not in e:
            continue
        nbytes = math.prod(e["shape"]) * ITEM.get(e.get("isa_dtype", ""), 4)
        if t in state:
            parts[f"KV cache in {e['space'].upper()}"] += nbytes
        elif "weight" in e:
            if t in gathered:
                parts["embedding rows"] += batch * e["shape"][-1] * ITEM.get(e.get("isa_dtype", ""), 4)
            else:
                parts[f"weights in {e['space'].upper()}"] += nbytes * shares.get(t, 1.0)
    dram = parts["weights in DRAM"] + parts["embedding rows"] + parts["KV cache in DRAM"]
    sram = parts["weights in SRAM"] + parts["KV cache in SRAM"]
    return max(dram / chip.dram_bytes_per_s, sram / chip.sram.bytes_per_s), parts


def part_llm(chip, new_tokens: int) -> list[bool]:
    from models.llama_meta import llama_2_7b
    print(f"\n## Llama-2-7B-shaped LlamaForCausalLM on meta, timing only, bf16, {chip.name}")
    model, (ids,) = llama_2_7b(prompt_len=2048)
    t0 = time.perf_counter()
    g = ember.generate(model, ids, max_new_tokens=new_tokens, chip=chip, dtype="bf16", timing_only=True,
                       max_cache_len=2048 + new_tokens)
    wall = time.perf_counter() - t0
    flops = sum(step_flops(g.prefill.program, s) for s in g.prefill.program.steps)
    compute_floor = flops / chip.peak_ops_per_s("bf16")
    dram_floor, parts = decode_floor(g.decode, 1)
    step = g.breakdown["step"]
    link = step["host_link"] / g.tpot_s
    print(f"(compile + simulate {wall:.0f} s; cache of {g.max_cache_len} positions)")
    print(f"TTFT {g.ttft_s * 1e3:9.2f} ms; compute floor {compute_floor * 1e3:8.2f} ms ({flops / 1e12:.2f} TFLOP at "
          f"{chip.peak_ops_per_s('bf16') / 1e12:.0f} TFLOPS): {g.ttft_s / compute_floor:.3f}x")
    print("  prefill: " + ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in g.breakdown["prefill"].items()))
    print(f"TPOT {g.tpot_s * 1e3:9.2f} ms; DRAM floor {dram_floor * 1e3:8.2f} ms (" +
          " + ".join(f"{k} {v / 1e9:.3f} GB" for k, v in parts.items() if "DRAM" in k or "rows" in k) +
          f" at {chip.dram_bytes_per_s / 1e9:.1f} GB/s; beside it, " +
          " + ".join(f"{k} {v / 1e9:.3f} GB" for k, v in parts.items() if "SRAM" in k) +
          f" at {chip.sram.bytes_per_s / 1e12:.1f} TB/s): {g.tpot_s / dram_floor:.3f}x")
    print("  step: " + ", ".join(f"{k} {v * 1e3:.3f} ms" for k, v in step.items()))
    print(f"host link {link:.3%} of a decode step; {g.tokens_per_s:.1f} tokens/s")
    checks = [g.ttft_s < 0.6, g.ttft_s <= 1.3 * compute_floor, g.tpot_s <= 1.1 * dram_floor, link < 0.01,
              g.ttft_s >= compute_floor, g.tpot_s >= dram_floor]
    for name, ok in zip(("TTFT < 600 ms", "TTFT within 1.3x of the compute floor", "TPOT within 1.1x of the DRAM floor",
                         "host link < 1% of a decode step", "TTFT above its floor", "TPOT above its floor"), checks):
        print(f"  {name}: {_mark(ok)}")
    return checks


def part_tokens(chip) -> list[bool]:
    import transformers as T
    from models.huggingface import TEXT
    print(f"\n## ember.generate against transformers' greedy generate (random-weight Llama, {chip.name})")
    torch.manual_seed(0)
    model = T.LlamaForCausalLM(T.LlamaConfig(**TEXT, num_key_value_heads=2)).eval()
    checks = []
    for batch, dtype in ((1, "fp32"), (2, "fp32"), (1, "bf16"), (2, "bf16")):
        ids = torch.randint(0, TEXT["vocab_size"], (batch, 8))
        g = ember.generate(model, ids, max_new_tokens=16, chip=chip, dtype=dtype)
        with torch.no_grad():
            ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16,
                                 do_sample=False)[:, ids.shape[1]:]
        same = int((g.tokens == ref).sum())
        prefix = min(int((g.tokens[b] != ref[b]).nonzero()[0]) if (g.tokens[b] != ref[b]).any() else 16
                     for b in range(batch))
        print(f"batch {batch} {dtype}: {same}/{ref.numel()} tokens agree (first {prefix} of every row); "
              f"TTFT {g.ttft_s * 1e6:.1f} us, TPOT {g.tpot_s * 1e6:.1f} us")
        if dtype == "fp32":
            checks.append(same == ref.numel())
    return checks


PARTS = {"gemm": part_gemm, "decode": part_decode, "llm": part_llm, "tokens": part_tokens}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chip", default="mtia2i")
    ap.add_argument("--part", default=",".join(PARTS))
    ap.add_argument("--new-tokens", type=int, default=4)
    args = ap.parse_args(argv)
    chip = ember.load_chip(args.chip)
    checks = []
    for name in args.part.split(","):
        checks += PARTS[name](chip, args.new_tokens) if name == "llm" else PARTS[name](chip)
    print(f"\n{sum(checks)}/{len(checks)} checks pass")
    return 0 if all(checks) else 1


if __name__ == "__main__":
    sys.exit(main())
