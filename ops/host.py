"""Host calls: ops Ember cannot run on the accelerator, kept for the host (allow_unsupported)."""
from __future__ import annotations

from ops.registry import Attr, define_op

host = define_op(
    "host", operands=("inputs*",), attrs={"target": Attr.STR, "index": Attr.INT}, infer=None,
    reference=None, num_results=-1,
    doc="An aten op `target` run on the host with torch; `index` names its call in the host-call "
        "table of the compiled model.")
