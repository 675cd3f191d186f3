"""Constants: weights held in the weight table by name, and small inline literals."""
from __future__ import annotations

import torch

from ops.registry import Attr, Sample, TensorSpec, define_op, dtype_of_numpy, lowers, samples

aten = torch.ops.aten

weight = define_op(
    "weight", operands=(), attrs={"symbol": Attr.STR}, infer=None, reference=None,
    doc="A tensor of the weight table (parameter, buffer or folded constant), named by `symbol`. "
        "Its type is given when it is built; its value lives outside the IR.")

constant = define_op(
    "constant", operands=(), attrs={"value": Attr.DENSE},
    infer=lambda value: TensorSpec(tuple(value.shape), dtype_of_numpy(value.dtype)),
    reference=lambda value: value,
    doc="A small literal tensor written in the IR.")


@lowers(aten.clone, aten.alias, aten.lift_fresh_copy, aten.detach, aten.contiguous)
def _identity(b, x, *args, **kwargs):
    return x


def _scaled_copy(x):
    return torch.ops.aten.clone(x) * 3.0


samples(
    Sample("weight-and-literal", lambda x: x * torch.tensor([1.5, -2.0, 0.5]) + 1.0, lambda: (torch.randn(4, 3),)),
    Sample("clone", _scaled_copy, lambda: (torch.randn(2, 5),)),
)
