"""Elementwise ops the SIMD engine lacks, on the vector core (ops/kernels/vector_elementwise.py),
and chains of them fused into one kernel (compiler/passes/fusion.py): compiled models on the
sim against eager PyTorch on fresh random inputs, with no step on the host.

Integer results and the rounding functions must be bit-equal to torch. sqrt is correctly
rounded on the vector core (an IEEE operation); PyTorch's CPU sqrt is not always (it can be one
unit in the last place off), so sqrt is compared with the correctly rounded value, and with
torch within 2 ulp.
"""
from __future__ import annotations

import pytest
import torch

import ember
from simulator import IndexOutOfRange
from tests.helpers import as_module

BIG = 2 ** 25           # integers past fp32's exact range: they must not round through fp32


def _ints(*shape, low=-BIG, high=BIG):
    return torch.randint(low, high, shape)


def _divisors(*shape):
    d = torch.randint(-9, 10, shape)
    return torch.where(d == 0, torch.full_like(d, 5), d)


def _sqrt_exact(x):
    """sqrt correctly rounded to x's dtype (through fp64)."""
    return x.double().sqrt().to(x.dtype)


CASES = {
    # integer division rounds as torch does: floor toward -inf, remainder with the divisor's sign
    "div-floor-remainder": (lambda a, b: (a // b, a % b, torch.div(a, b, rounding_mode="trunc")),
                            lambda: (_ints(3, 70), _divisors(3, 70))),
    "by-a-scalar": (lambda a: (a % 7, torch.remainder(a, -7), a // -3), lambda: (_ints(5, 33),)),
    "bitwise-int-unary": (lambda a, b: (a & b, a | b, a ^ b, -a, a.abs(), a.sign()), lambda: (_ints(4, 19), _ints(4, 19))),
    "rounding": (lambda x: (x.floor(), x.ceil(), x.round(), x.trunc(), x.sign()),
                 lambda: (torch.cat([torch.randn(6, 20) * 4, torch.tensor([[0.5, 1.5, 2.5, -0.5, -2.5] * 4])]),)),
    "rounding-bf16": (lambda x: (x.floor(), x.round()), lambda: ((torch.randn(3, 41) * 8).bfloat16(),)),
    "reciprocal-powers": (lambda x: (x.pow(-1.0), x.pow(-2.0)), lambda: (torch.rand(2, 300) + 0.1,)),
}
SQRT = {
    "sqrt": (lambda x: x.sqrt(), lambda: (torch.rand(4, 33) * 100,)),
    "pow-half": (lambda x: x.pow(0.5), lambda: (torch.rand(300) + 0.1,)),
    "sqrt-bf16": (lambda x: x.sqrt(), lambda: ((torch.rand(4, 33) * 100).bfloat16(),)),
}
# chains the fusion pass makes one kernel of, and the kernels they should make
CHAINS = {
    "int-chain": (lambda a: (a % 7) // 3 * 2 - 1, lambda: (_ints(3, 70),), 1),
    "float-chain": (lambda x: (x.abs().sqrt().floor() / 2).neg(), lambda: (torch.randn(4, 50) * 30,), 2),
    # bf16 in eager: the mul rounds to bf16 (casts around it), the chain holds bf16 between steps
    "chain-bf16": (lambda x: (x * 3).floor().abs() - 1, lambda: (torch.randn(4, 50).bfloat16(),), 4),
}


def _outs(y):
    return y if isinstance(y, tuple) else (y,)


@pytest.fixture(scope="module")
def compiled():
    torch.manual_seed(0)
    return {name: ember.compile(as_module(c[0]), c[1](), chip="tiny", dtype="fp32")
            for name, c in {**CASES, **SQRT, **CHAINS}.items()}


def _on_the_vector_core(cm):
    assert not [s.op for s in cm.last_run.steps if s.kind == "host"], "a step ran on the host"
    assert cm.last_run.stats["engine_utilization"]["vec"] > 0


@pytest.mark.parametrize("name", sorted(CASES))
def test_integer_and_rounding_ops_are_bit_equal(compiled, name):
    fn, make = CASES[name]
    for seed in range(2):
        torch.manual_seed(10 + seed)
        args = make()
        for out, ref in zip(_outs(compiled[name].run(*args, device="sim")), _outs(fn(*args)), strict=True):
            assert out.dtype == ref.dtype and torch.equal(out, ref), name
        _on_the_vector_core(compiled[name])


@pytest.mark.parametrize("name", sorted(SQRT))
def test_sqrt_is_correctly_rounded(compiled, name):
    fn, make = SQRT[name]
    torch.manual_seed(20)
    (x,) = make()
    out, ref = compiled[name].run(x, device="sim"), fn(x)
    assert torch.equal(out, _sqrt_exact(x))
    ulp = torch.finfo(x.dtype).eps
    torch.testing.assert_close(out, ref, rtol=2 * ulp, atol=0)
    _on_the_vector_core(compiled[name])


@pytest.mark.parametrize("name", sorted(CHAINS))
def test_a_chain_is_one_vector_kernel(compiled, name):
    fn, make, kernels = CHAINS[name]
    cm = compiled[name]
    fused = [s for s in cm.program.steps if s["kind"] == "kernel" and s["attrs"].get("epilogue")]
    assert len(fused) == 1 and len(fused[0]["attrs"]["epilogue"]) >= 2
    assert sum(s["kind"] == "kernel" for s in cm.program.steps) == kernels
    torch.manual_seed(30)
    args = make()
    ref = fn(*args)
    for device in ("sim", "cpu"):
        assert torch.equal(cm.run(*args, device=device), ref), device
    _on_the_vector_core(cm)
    # the same chain unfused gives the same numbers, in more kernels
    unfused = ember.compile(as_module(fn), args, chip="tiny", dtype="fp32", fuse=False)
    assert torch.equal(unfused.run(*args, device="sim"), ref)
    assert sum(s["kind"] == "kernel" for s in unfused.program.steps) > kernels


class _Divide(torch.nn.Module):
    def forward(self, a, b):
        return (a // b) + 1


def test_a_zero_divisor_stops_the_run_naming_the_op():
    torch.manual_seed(3)
    model = _Divide()
    a, b = _ints(2, 40), _divisors(2, 40)
    cm = ember.compile(model, (a, b), chip="tiny", dtype="fp32")
    assert torch.equal(cm.run(a, b, device="sim"), model(a, b))
    b[1, 17] = 0
    with pytest.raises(IndexOutOfRange, match=r"ember\.binary at .*test_kernel_vector_elementwise\.py:\d+.*"
                                              r"stopped at element 57 .*a zero divisor"):
        cm.run(a, b, device="sim")
    with pytest.raises(RuntimeError, match="ZeroDivision"):
        model(a, b)


def test_a_chain_rounds_a_value_held_narrow_between_steps():
    # the dtype pass holds elementwise values in fp32 today; a step whose input is held in bf16
    # rounds it first, as a separate op's bf16 store would have
    import numpy as np
    from ops.kernels.vector_elementwise import elementwise_kernel
    torch.manual_seed(5)
    x = torch.rand(3, 50) * 300
    steps = [("unary", "sqrt", 0.0, 0.0), ("unary", "floor", 0.0, 0.0, "bf16")]
    kernel = elementwise_kernel(steps, {0: "fp32"}, frozenset(), "fp32", 50, 64)
    bufs = [x.numpy().view(np.uint8).reshape(-1).copy(), np.zeros(3 * 50 * 4, np.uint8)]
    assert kernel.run(bufs, 3, 0) == -1
    out = torch.from_numpy(bufs[1].view(np.float32).reshape(3, 50).copy())
    held = _sqrt_exact(x).bfloat16().float()
    assert torch.equal(out, held.floor())
    assert not torch.equal(out, _sqrt_exact(x).floor())       # the rounding changed some results
