"""Integer and boolean ops on the chip (int32 there): arithmetic exactly past 2^24, comparisons
and logic giving masks, casts between integers, booleans and floats, the layout moves of
integer tensors and `where` by a data-dependent mask, each compared with eager PyTorch on
fresh random inputs, with no step left on the host."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import ember
from tests.helpers import as_module, rel_err

BIG = 2**25          # integers past fp32's exact range (they must not round through fp32)


def _ints(*shape, low=-BIG, high=BIG):
    return torch.randint(low, high, shape)


def _positions_and_mask(pos, inv_freq):
    """What a decode step computes from its cache position: the attention mask and the rotary angles."""
    mask = torch.arange(16)[None, :] <= pos[:, None]
    angles = pos[:, None].float() * inv_freq[None, :]
    return mask, torch.cat([angles, angles], -1).cos()


CASES = {
    "int-arith": (lambda i, j: (i * 3 + j - 7, torch.maximum(i, j) - torch.minimum(i, 2 * j)),
                  lambda: (_ints(4, 33), _ints(4, 33) // 4)),
    "int-broadcast": (lambda i, j: i + j, lambda: (_ints(3, 1, 8), _ints(5, 1))),
    "compare-ints": (lambda i, j: (i < j, i >= j, i == j - 1, i != 0), lambda: (_ints(6, 7, low=-3, high=3),
                                                                             _ints(7, low=-3, high=3))),
    "compare-floats": (lambda x, y: (x > y, x <= 0.25, (x > y) & (y > 0), (x > 0) | (y < 0), (x > 0) ^ (y > 0), ~(x > y)),
                       lambda: (torch.randn(5, 9), torch.randn(9))),
    "casts": (lambda i, x: (i.float() * 0.5, x.long(), (x * 3).to(torch.int32), x.bool(), (i > 0).float() + x,
                            (i * (x > 0).long()).bool().long(), i.to(torch.bfloat16).float()),
              lambda: (_ints(4, 10), 4 * torch.randn(4, 10))),
    "int-layout": (lambda i, j: (i[:, 1:5], i[:, 2], i.t().contiguous(), torch.cat([i, j], 0),
                                 i[:, :1].expand(4, 6), F.pad(i, (1, 2), value=-3), i.reshape(2, 12) + 1),
                   lambda: (_ints(4, 6), _ints(2, 6))),
    "where-by-mask": (lambda s, m, x: (s.masked_fill(~m, float("-inf")), torch.where(m, x, s), torch.where(x > 0, 1, -1)),
                      lambda: (torch.randn(2, 3, 4, 16), torch.rand(1, 1, 4, 16) > 0.5, torch.randn(2, 3, 4, 16))),
    "positions-and-mask": (_positions_and_mask, lambda: (torch.randint(0, 16, (3,)), torch.rand(4))),
}


def _compare(out, ref):
    outs = out if isinstance(out, (tuple, list)) else (out,)
    refs = ref if isinstance(ref, (tuple, list)) else (ref,)
    assert len(outs) == len(refs)
    for o, r in zip(outs, refs):
        assert o.dtype == r.dtype and o.shape == r.shape
        if r.is_floating_point():
            finite = torch.isfinite(r)
            assert torch.equal(torch.isfinite(o), finite) and torch.equal(o[~finite], r[~finite])
            assert rel_err(o[finite], r[finite]) <= 1e-6
        else:
            assert torch.equal(o, r)


@pytest.fixture(scope="module")
def compiled():
    """Each case compiled once for the tiny chip in fp32."""
    torch.manual_seed(0)
    return {name: ember.compile(as_module(fn), make(), chip="tiny", dtype="fp32") for name, (fn, make) in CASES.items()}


@pytest.mark.parametrize("name", sorted(CASES))
def test_integer_ops_run_on_the_chip(compiled, name):
    fn, make = CASES[name]
    cm = compiled[name]
    for _ in range(2):
        args = make()
        _compare(cm.run(*args, device="sim"), fn(*args))
        assert not [s.op for s in cm.last_run.steps if s.kind == "host"], f"{name}: a step ran on the host"


@pytest.mark.parametrize("name", ["positions-and-mask", "casts", "where-by-mask"])
def test_on_mtia2i_in_bf16(name):
    fn, make = CASES[name]
    cm = ember.compile(as_module(fn), make(), chip="mtia2i", dtype="bf16")
    args = make()
    _compare(cm.run(*args, device="sim"), fn(*args))
    assert not [s.op for s in cm.last_run.steps if s.kind == "host"]


def test_integer_division_runs_on_the_vector_core():
    # the SIMD engine computes in fp32, which rounds past 2^24: floor division runs on the vector core
    model = as_module(lambda i, j: i // (j.abs() + 1) + i)
    cm = ember.compile(model, (_ints(3, 5), _ints(3, 5)), chip="tiny", dtype="fp32")
    i, j = _ints(3, 5), _ints(3, 5)
    _compare(cm.run(i, j, device="sim"), model(i, j))
    assert not [s.op for s in cm.last_run.steps if s.kind == "host"]
    assert cm.last_run.stats["engine_utilization"]["vec"] > 0


def test_integer_ops_the_chip_cannot_run_stay_on_the_host():
    # an integer power has no kernel on either engine: it stays with torch on the host
    model = as_module(lambda i, j: torch.pow(i, j) + i)
    cm = ember.compile(model, (_ints(3, 5, low=-9, high=9), _ints(3, 5, low=0, high=4)), chip="tiny", dtype="fp32")
    i, j = _ints(3, 5, low=-9, high=9), _ints(3, 5, low=0, high=4)
    _compare(cm.run(i, j, device="sim"), model(i, j))
    steps = cm.last_run.steps
    assert any(s.kind == "host" and s.op == "binary" for s in steps)
    assert any(s.kind == "kernel" and s.op == "binary" for s in steps)
