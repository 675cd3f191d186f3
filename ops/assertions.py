"""Runtime assertions torch.export leaves in graphs: checked at capture time, nothing to run."""
from __future__ import annotations

import torch

from ops.registry import lowers

aten = torch.ops.aten


@lowers(aten._assert_tensor_metadata, aten._assert_scalar, aten._assert_async, aten.sym_constrain_range_for_size,
        aten.sym_constrain_range)
def _assertion(b, *args, **kwargs):
    return None
