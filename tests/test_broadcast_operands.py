"""Broadcasting binary ops on the accelerator (compared with torch): an operand that repeats over
the result's leading dims is read in place by the elementwise kernel; other broadcasts are
materialized by the materialize-broadcasts pass."""
from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
import torch

import ember
from ops.kernel import KernelCall, kernel_for
from ops.kernels.elementwise import broadcast_period
from ops.registry import TensorSpec
from simulator import ProgramBuilder, load_chip, simulate
from tests.helpers import as_module, place, rel_err


def _rotary(x, cos, sin, bias):
    half = x.shape[-1] // 2
    rot = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return (x * cos + rot * sin) + bias


def _inputs():
    return (torch.randn(1, 4, 6, 32), torch.randn(1, 1, 6, 32), torch.randn(1, 1, 6, 32), torch.randn(32))


def _ops(cm, kind):
    return [s["op"] for s in cm.program.steps if s["kind"] == kind]


@pytest.mark.parametrize("chip,dtype,tol", [("tiny", "fp32", 1e-4), ("tiny", "bf16", 2e-2), ("mtia2i", "fp32", 1e-4)])
def test_leading_broadcasts_read_in_place(chip, dtype, tol):
    """Rotary tables shared by every head and a bias row: no copy is materialized."""
    model = as_module(_rotary)
    cm = ember.compile(model, _inputs(), chip=chip, dtype=dtype, to="program")
    assert not _ops(cm, "host") and "broadcast" not in _ops(cm, "kernel")
    fresh = _inputs()
    out = cm.run(*fresh, device="sim")
    assert rel_err(out, model(*fresh)) <= tol


def test_other_broadcasts_are_materialized():
    """A per-row scale (a size-1 last dim) and a per-head one (size-1 dims between full ones)."""
    model = as_module(lambda x, rows, heads: x * rows + heads)

    def inputs():
        return torch.randn(2, 4, 6, 32), torch.randn(2, 4, 6, 1), torch.randn(1, 4, 1, 32)
    cm = ember.compile(model, inputs(), chip="tiny", dtype="fp32", to="program")
    assert not _ops(cm, "host") and _ops(cm, "kernel").count("broadcast") == 2
    fresh = inputs()
    assert rel_err(cm.run(*fresh, device="sim"), model(*fresh)) <= 1e-4


def test_a_period_without_usable_tiles_is_materialized():
    """A prime period larger than every tile size would mean one-element tiles."""
    template = kernel_for("binary")
    x, row = TensorSpec((3, 20011), "f32"), TensorSpec((20011,), "f32")
    assert not template.accepts("binary", [x, row], x, {"kind": "add"})
    y, even = TensorSpec((3, 20480), "f32"), TensorSpec((20480,), "f32")     # 4096 divides it
    assert template.accepts("binary", [y, even], y, {"kind": "add"})


@pytest.mark.parametrize("shape,result,period", [
    ((1, 1, 6, 32), (1, 4, 6, 32), 192), ((32,), (2, 4, 6, 32), 32), ((), (4, 100), 1),
    ((7, 11), (5, 7, 11), 77), ((2, 4, 6, 1), (2, 4, 6, 32), None), ((1, 4, 1, 32), (1, 4, 6, 32), None),
    ((1, 4, 6, 32), (1, 4, 6, 32), None), ((4, 6, 32), (1, 4, 6, 32), None)])
def test_broadcast_period(shape, result, period):
    assert broadcast_period(shape, result) == period


@pytest.mark.parametrize("chip", ["tiny", "mtia2i"])
@pytest.mark.parametrize("result,other,dtype", [((1, 8, 176, 64), (1, 1, 176, 64), "fp32"),
                                                ((3, 704), (704,), "fp32"), ((5, 7, 11), (7, 11), "bf16"),
                                                ((4, 100), (), "fp32")])
def test_every_plan_reads_the_broadcast_operand_right(chip, result, other, dtype):
    """Each tile size the search proposes (periods that divide tiles, tiles that divide periods,
    periods of no power of two): exactly numpy's broadcast product, rounded once."""
    chip = load_chip(chip)
    np_dtype = {"fp32": np.float32, "bf16": ml_dtypes.bfloat16}[dtype]
    pl = place([(result, dtype), (other, dtype), (result, dtype)], "sram")
    call = KernelCall("binary", (pl[0], pl[1]), pl[2], {"kind": "mul"})
    rng = np.random.default_rng(len(result))
    a = rng.standard_normal(result).astype(np_dtype)
    b = np.asarray(rng.standard_normal(other)).astype(np_dtype)
    want = (a.astype(np.float32) * b.astype(np.float32)).astype(np_dtype)
    template = kernel_for("binary")
    plans = list(template.plans(call, chip))
    assert len(plans) >= 2
    for plan in plans:
        builder = ProgramBuilder(chip)
        template.emit(call, plan, chip, builder)
        res = simulate(builder.build(), chip, memory_init={("sram", pl[0].addr): a, ("sram", pl[1].addr): b})
        np.testing.assert_array_equal(res.read("sram", pl[2].addr, result, np_dtype), want, err_msg=str(plan))
