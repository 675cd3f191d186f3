"""Every op's `torch_impl` against its numpy `reference`, op by op, on the registry's samples.

Each sample is compiled to the graph level and walked as the reference device walks it; at every
`ember` op both the reference (float64, rounded to the declared type) and the torch
implementation (in the operands' own dtype) run on the same operands, from fresh random inputs.
The torch result must have the declared shape and dtype and match within the sample's tolerance.
A second group runs the main float ops in bf16 against the fp32 reference.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import ember
from ops.registry import (
    DTYPE_TO_TORCH,
    all_ops,
    all_samples,
    dtype_of_numpy,
    to_numpy,
    to_torch,
)
from ops.registry import op as lookup_op
from runtime.devices.reference import interpret
from tests.helpers import as_module, rel_err

SAMPLES = [(family, s) for family, items in sorted(all_samples().items()) for s in items]
RUNTIME_VALUED = frozenset({"weight", "constant"})   # their values come from the runtime
_COMPILED: dict[tuple[str, str], object] = {}


def compiled(family, sample):
    """The sample compiled to the graph level (once per test session)."""
    key = (family, sample.name)
    if key not in _COMPILED:
        _COMPILED[key] = ember.compile(as_module(sample.fn), sample.args(), chip="tiny", dtype="fp32", to="graph")
    return _COMPILED[key]


def walk_ops(compiled, inputs, visit):
    """Run the graph-level module on numpy `inputs` on the reference interpreter, calling
    visit(opdef, operands, attrs, result_specs, results) at every computing `ember` op."""
    graph = compiled.graph

    def computing(opdef, args, attrs, specs, outs):
        if opdef.name not in RUNTIME_VALUED:
            visit(opdef, args, attrs, specs, outs)

    with graph.context:
        return interpret(graph.module, compiled.numpy_weights(), inputs, graph.host_calls, visit=computing)


def as_torch(operand):
    """A reference operand (array, None or list of arrays) as the torch device passes it."""
    if operand is None:
        return None
    if isinstance(operand, list):
        return [as_torch(o) for o in operand]
    return to_torch(operand, dtype_of_numpy(operand.dtype))


def check_torch_impl(opdef, args, attrs, specs, ref_outs, rtol, where=""):
    got = opdef.torch_impl(*[as_torch(a) for a in args], **attrs)
    got = list(got) if isinstance(got, (tuple, list)) else [got]
    assert len(got) == len(specs), f"{where} ember.{opdef.name}: {len(got)} results, IR says {len(specs)}"
    for i, (out, spec, ref) in enumerate(zip(got, specs, ref_outs)):
        what = f"{where} ember.{opdef.name} {attrs} result {i}"
        assert isinstance(out, torch.Tensor), f"{what}: not a tensor"
        assert tuple(out.shape) == spec.shape, f"{what}: shape {tuple(out.shape)}, IR says {spec.shape}"
        assert out.dtype == DTYPE_TO_TORCH[spec.dtype], f"{what}: dtype {out.dtype}, IR says {spec.dtype}"
        ref = to_torch(ref, spec.dtype)
        if opdef.name == "topk":
            # indices of equal elements may differ in order: compare the values they pick
            x = as_torch(args[0])
            out, ref = (x.gather(attrs["dim"], t) if x.dim() else x for t in (out, ref))
            assert torch.equal(out, ref), f"{what}: picks other values than the reference"
            continue
        err = rel_err(out, ref)
        assert err <= rtol, f"{what}: relative error {err:.2e} > {rtol:g}"


@pytest.mark.parametrize("family,sample", SAMPLES, ids=[f"{f}:{s.name}" for f, s in SAMPLES])
def test_torch_impl_matches_reference(family, sample):
    cm = compiled(family, sample)
    fresh = [to_numpy(x) for x in sample.args()]   # new random values, same shapes
    seen = []

    def visit(opdef, args, attrs, specs, outs):
        seen.append(opdef.name)
        check_torch_impl(opdef, args, attrs, specs, outs, sample.rtol, f"{family}:{sample.name}")

    walk_ops(cm, fresh, visit)
    assert seen, f"{family}:{sample.name} has no computing ember op"


def test_every_op_has_a_torch_impl():
    missing = sorted(name for name, opdef in all_ops().items()
                     if opdef.torch_impl is None and name not in RUNTIME_VALUED)
    assert not missing, f"ops without a torch_impl: {missing}"


def test_samples_reach_every_torch_impl():
    """The sample walk above covers every op that has a torch_impl."""
    reached = set()
    for family, sample in SAMPLES:
        walk_ops(compiled(family, sample), [to_numpy(x) for x in sample.args()], lambda opdef, *rest: reached.add(opdef.name))
    missed = sorted(set(all_ops()) - RUNTIME_VALUED - reached)
    assert not missed, f"no sample reaches ops {missed}"


# ----------------------------------------------------------------------------- bf16

def _rand(*shape, low=-1.5, high=1.5):
    return torch.empty(shape).uniform_(low, high).to(torch.bfloat16)


_POSITIVE = frozenset({"log", "log1p", "log2", "sqrt", "rsqrt", "reciprocal"})
_STEPS = frozenset({"floor", "ceil", "round", "trunc", "sign", "logical_not"})   # not continuous
_UNARY_PARAMS = {"leaky_relu": (0.2, 0.0), "elu": (1.0, 0.0), "clamp": (-0.5, 0.7), "softplus": (1.0, 20.0),
                 "pow": (2.0, 0.0)}


def _bf16_cases():
    from ops.unary import UNARY_KINDS
    cases = [
        ("linear", lambda: (_rand(3, 7, 64), _rand(24, 64), _rand(24)), {}),
        ("linear", lambda: (_rand(5, 32), _rand(16, 32), None), {}),
        ("matmul", lambda: (_rand(2, 5, 64), _rand(2, 64, 3)), {}),
        ("matmul", lambda: (_rand(2, 3, 5, 48), _rand(48, 4)), {}),
        ("softmax", lambda: (_rand(3, 5, 40, low=-4, high=4),), {"dim": 2, "log": False}),
        ("softmax", lambda: (_rand(6, 33, low=-4, high=4),), {"dim": 0, "log": True}),
        ("norm", lambda: (_rand(2, 6, 64) + 0.5, _rand(64, low=0.5), _rand(64)), {"kind": "layer", "axes": 1, "eps": 1e-5}),
        ("norm", lambda: (_rand(2, 4, 16), None, None), {"kind": "layer", "axes": 2, "eps": 1e-5}),
        ("norm", lambda: (_rand(2, 6, 64), _rand(64, low=0.5), None), {"kind": "rms", "axes": 1, "eps": 1e-6}),
        ("attention", lambda: (_rand(2, 4, 6, 16), _rand(2, 2, 6, 16), _rand(2, 2, 6, 16), None),
         {"causal": True, "scale": 0.25}),
        ("attention", lambda: (_rand(1, 2, 5, 16), _rand(1, 2, 7, 16), _rand(1, 2, 7, 8), _rand(5, 7)),
         {"causal": False, "scale": 0.25}),
        ("attention", lambda: (_rand(1, 2, 5, 16), _rand(1, 2, 7, 16), _rand(1, 2, 7, 8),
                               torch.ones(5, 7, dtype=torch.bool).tril(2)), {"causal": True, "scale": 0.3}),
    ]
    for kind in ("add", "sub", "mul", "div", "max", "min", "pow", "atan2"):
        low = 0.5 if kind in ("div", "pow") else -1.5
        cases.append(("binary", lambda low=low: (_rand(4, 1, 6, low=low), _rand(3, 1, low=low)), {"kind": kind}))
    for kind in sorted(set(UNARY_KINDS) - _STEPS):
        alpha, beta = _UNARY_PARAMS.get(kind, (0.0, 0.0))
        low = 0.5 if kind in _POSITIVE else -1.5
        cases.append(("unary", lambda low=low: (_rand(6, 33, low=low),), {"kind": kind, "alpha": alpha, "beta": beta}))
    return cases


BF16_CASES = _bf16_cases()


@pytest.mark.parametrize("name,make,attrs", BF16_CASES,
                         ids=[f"{n}-{a.get('kind', i)}" for i, (n, _, a) in enumerate(BF16_CASES)])
def test_torch_impl_bf16(name, make, attrs):
    opdef = lookup_op(name)
    operands = make()
    wide = [None if t is None else t.float() if t.is_floating_point() else t for t in operands]
    ref = opdef.reference(*[None if t is None else t.numpy() for t in wide], **attrs)
    got = opdef.torch_impl(*operands, **attrs)
    assert got.dtype == torch.bfloat16, f"ember.{name} {attrs}: bf16 in, {got.dtype} out"
    ref = torch.from_numpy(np.asarray(ref, dtype=np.float32))
    assert tuple(got.shape) == tuple(ref.shape)
    err = rel_err(got.float(), ref)
    assert err <= 2e-2, f"ember.{name} {attrs}: bf16 relative error {err:.2e} > 2e-2"
