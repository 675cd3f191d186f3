"""memory-plan: no kernel overwrites a buffer whose value is still to be read, and when weights
and activations do not fit on die together, activations keep SRAM."""
from __future__ import annotations

import torch

import ember
from tests.helpers import rel_err
from tests.test_relocation import Stack


def assert_no_clobber(program) -> None:
    """Walk the steps: every write (a kernel's result, a host value uploaded for a kernel)
    must not overlap the buffer of a value some later step (or the output) still reads."""
    tensors, steps = program.tensors, program.steps
    root: dict[int, int] = {}
    for s in steps:
        if s["kind"] == "view":
            root[s["results"][0]] = root.get(s["operands"][0], s["operands"][0])
    last: dict[int, int] = {}
    for i, s in enumerate(steps):
        for t in s.get("reads", s["operands"]):
            if t is not None:
                last[root.get(t, t)] = i
    for t in program.outputs:
        last[root.get(t, t)] = len(steps)
    produced = {t for s in steps for t in s["results"]}

    def extent(t):
        e = tensors[t]
        size = max(1, int(torch.tensor(e["shape"]).prod())) * {"fp32": 4, "bf16": 2, "fp16": 2, "int8": 1, "int32": 4}[e["isa_dtype"]]
        return e["space"], e["addr"], e["addr"] + size

    live = {root.get(t, t): extent(t) for t in tensors if "space" in tensors[t] and t not in produced
            and t not in program.inputs}
    for i, s in enumerate(steps):
        if s["kind"] != "kernel" or s.get("elided"):
            continue
        reads = {root.get(t, t) for t in s.get("reads", s["operands"]) if t is not None}
        writes = [t for t in s.get("reads", s["operands"])
                  if t is not None and root.get(t, t) not in live and "space" in tensors[t]]
        writes += list(s["results"])
        for w in writes:
            space, lo, hi = extent(w)
            for t, (sp, a, b) in live.items():
                if t != root.get(w, w) and sp == space and a < hi and lo < b and last.get(t, -1) >= i:
                    if t in s["results"] or (t in reads and w in s["results"] and lo <= a and b <= hi):
                        continue      # a concat input already in its slot of the result
                    raise AssertionError(f"step {i} ({s['op']}) writes value {w} over value {t}, read at step {last[t]}")
            live[root.get(w, w)] = (space, lo, hi)


def test_activations_keep_sram_when_weights_overflow():
    torch.manual_seed(3)
    model = Stack(layers=4, d=64, f=256).eval()      # 4 * 2 * 64 * 256 * 4 B ~ 0.5 MiB of weights
    x = torch.randn(16, 64)
    chip = ember.load_chip("tiny").with_(sram__bytes=136 * 1024)
    cm = ember.compile(model, (x,), chip=chip, dtype="fp32", to="program")
    tensors = cm.program.tensors
    produced = {t for s in cm.program.steps for t in s["results"]}
    acts = [tensors[t] for s in cm.program.steps if s["kind"] == "kernel" for t in s["results"]]
    weights = [e for t, e in tensors.items() if t not in produced and t not in cm.program.inputs and "space" in e]
    assert all(e["space"] == "sram" for e in acts)
    assert any(e["space"] == "dram" for e in weights)
    assert_no_clobber(cm.program)
    xs = torch.randn(16, 64)
    with torch.no_grad():
        ref = model(xs)
    assert rel_err(cm.run(xs, device="sim"), ref) <= 1e-4


def test_decoder_plans_never_clobber():
    for name, sram in (("multimodal-tiny", None), ("multimodal-tiny-decode", 48 * 1024)):
        model, inputs = ember.load_model(f"models:{name}")
        chip = ember.load_chip("tiny")
        if sram:
            chip = chip.with_(sram__bytes=sram)
        cm = ember.compile(model, inputs, chip=chip, dtype="fp32", to="program")
        assert_no_clobber(cm.program)
        if sram:
            assert any(e.get("space") == "dram" for e in cm.program.tensors.values())
            _, fresh = ember.load_model(f"models:{name}")
            with torch.no_grad():
                ref = model(*fresh)
            assert rel_err(cm.run(*fresh, device="sim"), ref) <= 1e-4
