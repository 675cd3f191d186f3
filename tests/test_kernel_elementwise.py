"""Unary ops the SIMD engine computes as a few passes (clamp, abs, pow 2-4, leaky_relu,
hardsigmoid, hardswish): on the chip, not the host, and equal to eager on fresh inputs."""
from __future__ import annotations

import pytest
import torch

import ember
from tests.helpers import rel_err

F = torch.nn.functional
KINDS = {
    "relu6": F.relu6,
    "clamp-min": lambda x: x.clamp(min=-0.3),
    "clamp-max": lambda x: x.clamp(max=0.4),
    "abs": torch.abs,
    "pow2": lambda x: x.pow(2),
    "pow3": lambda x: x.pow(3),
    "leaky-relu": lambda x: F.leaky_relu(x, 0.1),
    "hardsigmoid": F.hardsigmoid,
    "hardswish": F.hardswish,
}


class ThenLinear(torch.nn.Module):
    """The op, then a layer: under bf16 the op's result is a GEMM operand (held in bf16) while its
    input stays fp32, so the passes run in one dtype and write another."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn
        self.linear = torch.nn.Linear(64, 32)

    def forward(self, x):
        return self.linear(self.fn(x))


@pytest.mark.parametrize("chip,dtype", [("tiny", "fp32"), ("mtia2i", "bf16")])
@pytest.mark.parametrize("name", sorted(KINDS))
def test_multi_pass_unary_runs_on_chip(name, chip, dtype):
    torch.manual_seed(0)
    model = ThenLinear(KINDS[name]).eval()
    cm = ember.compile(model, (3 * torch.randn(4, 40, 64),), chip=chip, dtype=dtype)
    unary = [s for s in cm.program.steps if s["op"] == "unary"]
    assert unary and all(s["kind"] == "kernel" for s in unary)
    x = 3 * torch.randn(4, 40, 64)
    with torch.no_grad():
        ref = model(x)
    err = rel_err(cm.run(x, device="sim"), ref)
    assert err <= {"fp32": 1e-4, "bf16": 2e-2}[dtype], f"{name} on {chip} {dtype}: {err:.2e}"


def test_pow_other_than_two_stays_on_the_host():
    model = ThenLinear(lambda x: x.abs().pow(1.5)).eval()
    cm = ember.compile(model, (torch.randn(2, 8, 64),), chip="tiny", dtype="fp32")
    (pow_step,) = [s for s in cm.program.steps if s["op"] == "unary" and s["attrs"]["kind"] == "pow"]
    assert pow_step["kind"] == "host"
