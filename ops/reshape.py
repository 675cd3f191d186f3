"""Reshapes: view, reshape, flatten, squeeze, unsqueeze (free on the chip: a new view of a buffer)."""
from __future__ import annotations

import numpy as np
import torch

from ops.registry import Attr, Sample, define_op, lowers, samples

aten = torch.ops.aten


def _infer(x, shape):
    if any(s < 0 for s in shape):
        raise ValueError(f"shape {shape} has a negative size")
    if int(np.prod(shape, dtype=np.int64)) != x.numel:
        raise ValueError(f"cannot reshape {x.shape} ({x.numel} elements) to {shape}")
    return x.with_(shape=shape)


reshape = define_op(
    "reshape", operands=("input",), attrs={"shape": Attr.INTS}, infer=_infer,
    reference=lambda x, shape: np.reshape(x, shape),
    torch_impl=lambda x, shape: x.reshape(shape),
    doc="The same elements, row-major, in `shape`.")


@lowers(aten.view, aten._unsafe_view, aten.reshape, aten.flatten, aten.squeeze, aten.unsqueeze,
        aten.view_copy, aten.squeeze_copy, aten.unsqueeze_copy)
def _reshape(b, x, *args, **kwargs):
    shape = b.result_spec().shape
    return x if x.shape == shape else b.emit(reshape, x, shape=shape)


samples(
    Sample("view-flatten-squeeze", lambda x: x.view(3, 2, 4).flatten(1).unsqueeze(0).squeeze(0) * 2,
           lambda: (torch.randn(6, 4),)),
)
