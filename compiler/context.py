"""The MLIR context Ember builds in: the whole `ember` dialect loaded, graph-level ops
(`compiler.dialect`) and lowered ones (`compiler.lowered_dialect`), and its IRDL text.
"""
from __future__ import annotations

import sys
import types

from torch_mlir import ir

from compiler.dialect import Ember, op_classes
import compiler.lowered_dialect  # noqa: F401  (importing it defines the lowered ops on `Ember`)


def _define_all_ops() -> None:
    """Define every `ember` op class: the graph-level ones and the lowered ones."""
    op_classes()
    # The bindings import `torch_mlir.dialects.<namespace>` whenever they wrap an op of a dialect
    # they have no module for, and retry on every op when there is none (a failed import per op
    # verified or printed: milliseconds per thousand ops). Our op classes are registered by
    # `Ember.load()`; an empty module by that name ends the search.
    sys.modules.setdefault("torch_mlir.dialects.ember", types.ModuleType("torch_mlir.dialects.ember"))


def mlir_context() -> ir.Context:
    """A new MLIR Context with the `ember` dialect (graph-level and lowered ops, and the upstream
    dialects) loaded."""
    _define_all_ops()
    ctx = ir.Context()
    with ctx, ir.Location.unknown():
        Ember.load()
    return ctx


def irdl_text() -> str:
    """The IRDL definition of the `ember` dialect (graph-level and lowered ops), for upstream
    tools (`--irdl-file=`)."""
    _define_all_ops()
    with ir.Context(), ir.Location.unknown():
        return str(Ember._emit_module())
