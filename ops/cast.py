"""Element type conversion."""
from __future__ import annotations

import numpy as np
import torch

from ops.registry import (
    DTYPE_TO_TORCH,
    Attr,
    Sample,
    define_op,
    lowers,
    numpy_dtype,
    samples,
)

aten = torch.ops.aten


def _cast_reference(x, dtype):
    target = numpy_dtype(dtype)
    if target == np.bool_:
        return x != 0
    if np.issubdtype(target, np.integer) and np.issubdtype(x.dtype, np.floating):
        x = np.trunc(x)   # torch truncates toward zero
    return x.astype(target)


cast = define_op(
    "cast", operands=("input",), attrs={"dtype": Attr.STR},
    infer=lambda x, dtype: x.with_(dtype=dtype),
    reference=_cast_reference,
    torch_impl=lambda x, dtype: x.to(DTYPE_TO_TORCH[dtype]),   # torch also truncates and tests != 0
    doc="Convert every element to element type `dtype` (float to int truncates toward zero).")


@lowers(aten._to_copy, aten.to, aten.type_as)
def _to(b, x, *args, **kwargs):
    dtype = b.result_spec().dtype
    return b.cast(x, dtype)


samples(
    Sample("to-int-and-back", lambda x: (x * 4).to(torch.int32).to(torch.float32) + x, lambda: (torch.randn(3, 7),)),
    Sample("to-bool", lambda x: (x > 0).float() * x, lambda: (torch.randn(5, 4),)),
)
