"""Kernel relocation (compiler/codegen.py) and the timing-only cache (simulator/simulate.py).

Identical ops emit their kernel once; the others are relocated copies. A relocated kernel must
be exactly what a fresh emission gives (commands, loops, strides), give the same outputs and
cycles on the simulator, and survive a Program file round trip. The timing cache must answer
only programs whose timing really is the same.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import compiler.pipeline as pipeline
import ember
from compiler.codegen import address_slots
from compiler.passes.emit_program import EmitProgram
from ops.kernel import Placement
from simulator import ProgramBuilder, load_chip, simulate
from simulator.isa import ChipProgram, RelocatedProgram
from simulator.isa.artifact import Program
from simulator.simulate import TimingCache
from tests.helpers import rel_err


class Block(torch.nn.Module):
    """A residual block of the decoder's shape: norm, two linears, an activation, a residual."""

    def __init__(self, d: int, f: int):
        super().__init__()
        self.norm = torch.nn.RMSNorm(d, eps=1e-5)
        self.up = torch.nn.Linear(d, f)
        self.down = torch.nn.Linear(f, d)

    def forward(self, x):
        return x + self.down(torch.nn.functional.silu(self.up(self.norm(x))))


class Stack(torch.nn.Module):
    def __init__(self, layers: int = 3, d: int = 32, f: int = 64):
        super().__init__()
        self.blocks = torch.nn.ModuleList(Block(d, f) for _ in range(layers))

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return x


def _compile(model, inputs, monkeypatch, dtype="fp32", **codegen):
    """Compile with the codegen pass given these options (`compiler.passes.emit_program`)."""
    passes = tuple((phase, tuple(EmitProgram(**codegen) if p.name == "codegen" else p for p in ps))
                   for phase, ps in pipeline.PIPELINE)
    monkeypatch.setattr(pipeline, "PIPELINE", passes)
    return ember.compile(model, inputs, chip="tiny", dtype=dtype, to="program")


def test_relocated_kernels_match_fresh_emission(monkeypatch):
    torch.manual_seed(0)
    model = Stack().eval()
    x = torch.randn(2, 8, 32)
    # every relocated kernel is also emitted afresh and compared, command for command
    cm = _compile(model, (x,), monkeypatch, verify_relocation=True)
    relocated = [k for k in cm.program.kernels if isinstance(k, RelocatedProgram)]
    assert cm.program.meta["relocated_kernels"] == len(relocated) > 0
    fresh = _compile(model, (x,), monkeypatch, relocate=False)
    assert not any(isinstance(k, RelocatedProgram) for k in fresh.program.kernels)
    for a, b in zip(cm.program.kernels, fresh.program.kernels):
        assert np.array_equal(a.commands, b.commands)

    xs = torch.randn(2, 8, 32)          # fresh inputs
    with torch.no_grad():
        ref = model(xs)
    out = cm.run(xs, device="sim")
    out_fresh = fresh.run(xs, device="sim")
    assert rel_err(out, ref) <= 1e-4
    assert torch.equal(out, out_fresh)
    assert [s.cycles for s in cm.last_run.steps] == [s.cycles for s in fresh.last_run.steps]
    # timing-only (cached) gives the functional run's cycles
    cm.run(xs, device="sim", timing_only=True)
    assert [s.cycles for s in cm.last_run.steps] == [s.cycles for s in fresh.last_run.steps]


def test_relocated_kernels_with_two_results(monkeypatch):
    """int8 per-row quantization writes its int8 rows and their scales: its repeated kernels
    are relocated (every store lies inside one of its results) and match a fresh emission."""
    torch.manual_seed(2)
    model = Stack().eval()
    x = torch.randn(2, 8, 32)
    cm = _compile(model, (x,), monkeypatch, dtype="int8", verify_relocation=True)
    fresh = _compile(model, (x,), monkeypatch, dtype="int8", relocate=False)
    steps = [s for s in cm.program.steps if s["op"] == "quantize_rows"]
    assert len(steps) == 6 and all(len(s["results"]) == 2 for s in steps)
    relocated = [s for s in steps if isinstance(cm.program.kernels[s["kernel"]], RelocatedProgram)]
    assert len(relocated) == 4                # each of the two shapes emitted once
    xs = torch.randn(2, 8, 32)
    assert torch.equal(cm.run(xs, device="sim"), fresh.run(xs, device="sim"))
    assert [s.cycles for s in cm.last_run.steps] == [s.cycles for s in fresh.last_run.steps]


def test_relocated_decoder_matches_eager(monkeypatch):
    model, _ = ember.load_model("models:multimodal-tiny-decode")
    _, fresh = ember.load_model("models:multimodal-tiny-decode")
    cm = _compile(model, fresh, monkeypatch, verify_relocation=True)
    assert cm.program.meta["relocated_kernels"] > 0
    _, inputs = ember.load_model("models:multimodal-tiny-decode")
    with torch.no_grad():
        ref = model(*inputs)
    out = cm.run(*inputs, device="sim")
    assert rel_err(out, ref) <= 1e-4


def test_program_file_keeps_relocated_kernels(tmp_path, monkeypatch):
    torch.manual_seed(1)
    model = Stack(layers=2).eval()
    x = torch.randn(4, 32)
    cm = _compile(model, (x,), monkeypatch)
    path = str(tmp_path / "p.ember")
    cm.program.save(path)
    loaded = Program.load(path)
    assert [type(k) for k in loaded.kernels] == [type(k) for k in cm.program.kernels]
    for a, b in zip(loaded.kernels, cm.program.kernels):
        assert np.array_equal(a.commands, b.commands) and a.name == b.name


def _dma_program(src_addr: int, nbytes: int = 4096):
    b = ProgramBuilder("tiny")
    b.pe(0).dma("dram", src_addr, "local", 0, nbytes=nbytes)
    return b.build()


def test_address_slots_refuse_what_is_not_provable():
    prog = _dma_program(0x1000, 512)
    a = Placement("dram", 0x1000, (128,), "fp32")
    b = Placement("dram", 0x2000, (128,), "fp32")
    assert address_slots(prog, [a, b]).tolist()[0] == [0, -1]
    # the address lies in no operand
    assert address_slots(prog, [b]) is None
    # two distinct operands overlap: the address could belong to either
    c = Placement("dram", 0x1100, (128,), "fp32")
    assert address_slots(prog, [a, c]) is None
    # one buffer passed twice is fine (both names move together)
    assert address_slots(prog, [a, a]).tolist()[0] == [0, -1]
    # a DMA running past the end of its operand is not inside it
    assert address_slots(_dma_program(0x1000, 1024), [a, b]) is None


def test_timing_cache_key_follows_the_timing_model():
    chip = load_chip("tiny")
    cache = TimingCache()
    period = cache.period(chip)
    k0 = cache.key(_dma_program(0), chip)
    assert cache.key(_dma_program(period * 3), chip) == k0          # same channels
    assert cache.key(_dma_program(chip.dram.interleave_bytes), chip) != k0   # another first channel
    # local addresses do not pick a server
    b = ProgramBuilder(chip)
    b.pe(0).dma("dram", 0, "local", 0x400, nbytes=4096)
    assert cache.key(b.build(), chip) == k0
    # a cached answer is the run's own timing
    prog = _dma_program(chip.dram.interleave_bytes * 3)
    first = simulate(prog, chip, timing_only=True, cache=cache)
    again = simulate(_dma_program(chip.dram.interleave_bytes * 3 + period), chip, timing_only=True, cache=cache)
    assert again is first and cache.hits == 1
    assert first.cycles == simulate(prog, chip, timing_only=True).cycles


def test_timing_cache_relocated_key():
    chip = load_chip("tiny")
    cache = TimingCache()
    base = _dma_program(0)
    base.addr_slots = np.array([[0, -1]], np.int16)
    period = cache.period(chip)
    same = RelocatedProgram(base, [period * 5])
    other = RelocatedProgram(base, [chip.dram.interleave_bytes])
    assert cache.key(same, chip) == cache.key(RelocatedProgram(base, [0]), chip)
    assert cache.key(same, chip) != cache.key(other, chip)
    assert simulate(same, chip, timing_only=True, cache=cache).cycles == simulate(base, chip, timing_only=True).cycles
    plain = ChipProgram(other.commands, other.num_pes, other.name, other.loops, other.strides)
    assert simulate(other, chip, timing_only=True, cache=cache).cycles == simulate(plain, chip, timing_only=True).cycles
