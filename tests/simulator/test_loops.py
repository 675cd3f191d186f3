"""Compact loops: a repeat block is stored once and unrolls to the same commands."""
import numpy as np
import pytest

from simulator import ProgramBuilder, load_chip, simulate
from simulator.isa import ChipProgram

TINY = load_chip("tiny")


def _stream(loop: bool):
    """Exp over 8 chunks of 256 floats: load chunk i, exp, store; tokens count per iteration."""
    b = ProgramBuilder(TINY)
    t_in, t_out = b.token(), b.token()
    pe = b.pe(1, 0)
    if loop:
        with pe.repeat(8) as it:
            pe.dma("dram", it.step(0, 1024), "local", 0, nbytes=1024, signal=t_in)
            pe.simd_unary("exp", 0, 0x400, 256, wait=(t_in, it.step(1, 1)), signal=t_out)
            pe.dma("local", 0x400, "dram", it.step(0x8000, 1024), nbytes=1024,
                   wait=(t_out, it.step(1, 1)))
    else:
        for i in range(8):
            pe.dma("dram", i * 1024, "local", 0, nbytes=1024, signal=t_in)
            pe.simd_unary("exp", 0, 0x400, 256, wait=(t_in, i + 1), signal=t_out)
            pe.dma("local", 0x400, "dram", 0x8000 + i * 1024, nbytes=1024, wait=(t_out, i + 1))
    return b.build()


def test_loop_is_compact_and_unrolls_to_the_same_program(tmp_path):
    compact, flat = _stream(True), _stream(False)
    assert len(compact) == 3 and compact.num_commands == 24 == len(flat)
    np.testing.assert_array_equal(compact.expand().commands, flat.commands)
    x = np.random.default_rng(0).standard_normal(2048).astype(np.float32)
    r1 = simulate(compact, TINY, memory_init={("dram", 0): x})
    r2 = simulate(flat, TINY, memory_init={("dram", 0): x})
    assert r1.cycles == r2.cycles
    np.testing.assert_allclose(r1.read("dram", 0x8000, (2048,), np.float32), np.exp(x), rtol=1e-6)
    text = compact.dump()
    assert "loop x8 {" in text and "(+a0:1024 per iteration)" in text and "wait:1" in text
    compact.save(str(tmp_path / "p.npz"))
    back = ChipProgram.load(str(tmp_path / "p.npz"))
    np.testing.assert_array_equal(back.expand().commands, flat.commands)


def test_loop_rules():
    b = ProgramBuilder(TINY)
    pe = b.pe(0)
    with pytest.raises(ValueError, match="nested"):
        with pe.repeat(2):
            with pe.repeat(2):
                pass
    b = ProgramBuilder(TINY)
    from simulator.isa import Strided
    with pytest.raises(ValueError, match="enclosing"):
        b.pe(0).simd_unary("exp", Strided(0, 4), 0, 4)
