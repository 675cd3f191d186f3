"""The generic op test: every sample of every op family, end to end on the reference device.

For each sample: export and import (the importer checks each op's inferred types against
torch's), the IR re-parses and verifies in a fresh context, and the reference run matches
PyTorch eager on fresh random inputs.
"""
from __future__ import annotations

import pytest
import torch
from torch_mlir import ir

import ember
from ops.registry import all_ops, all_samples, supported_targets
from tests.helpers import as_module, rel_err

SAMPLES = [(family, s) for family, items in sorted(all_samples().items()) for s in items]


@pytest.mark.parametrize("family,sample", SAMPLES, ids=[f"{f}:{s.name}" for f, s in SAMPLES])
def test_sample_matches_torch(family, sample):
    model = as_module(sample.fn)
    args = sample.args()
    with torch.no_grad():
        ref = model(*args)
    cm = ember.compile(model, args, chip="tiny", dtype="fp32", to="graph")
    with ember.mlir_context():
        assert ir.Module.parse(cm.ir("graph")).operation.verify()
    fresh = sample.args()   # new random values, same shapes
    with torch.no_grad():
        ref = model(*fresh)
    out = cm.run(*fresh, device="reference")
    err = rel_err(out, ref)
    assert err <= sample.rtol, f"{family}:{sample.name} relative error {err:.2e} > {sample.rtol:g}"


def test_every_family_has_samples():
    families = {op.family for op in all_ops().values()}
    missing = families - set(all_samples())
    assert not missing, f"op families without samples: {sorted(missing)}"


def test_registry_is_keyed_by_aten_target():
    targets = supported_targets()
    assert len(targets) == len(set(targets))
    assert torch.ops.aten.linear.default in targets
