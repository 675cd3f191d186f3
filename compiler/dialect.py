"""The `ember` MLIR dialect, defined in Python on IRDL (`torch_mlir.dialects.ext`).

Every op comes from an `OpDef` in the `ops/` registry: the op's operands, attributes and result
count become an IRDL operation, and a verifier of ours checks attribute kinds and that the result
types are what the op's inference says. `ember` ops are leaf ops; structure comes from `func`
(and, at lower levels, `scf`).
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import numpy as np
from torch_mlir import ir
from torch_mlir.dialects.ext import Dialect, Operand, Pure, Result, attribute, operand, result

from ops.registry import Attr, OpDef, TensorSpec, all_ops


class Ember(Dialect, name="ember"):
    """Ops of the Ember accelerator compiler: tensor-level (graph) ops, and lowered per-PE commands
    (`compiler.lowered_dialect`)."""


_ATTR_CONSTRAINT = {Attr.INT: ir.IntegerAttr, Attr.FLOAT: ir.FloatAttr, Attr.STR: ir.StringAttr,
                    Attr.BOOL: Any, Attr.INTS: Any, Attr.FLOATS: Any, Attr.DENSE: Any}


# ----------------------------------------------------------------------------- types

def element_type(dtype: str) -> ir.Type:
    if dtype == "f32":
        return ir.F32Type.get()
    if dtype == "f64":
        return ir.F64Type.get()
    if dtype == "f16":
        return ir.F16Type.get()
    if dtype == "bf16":
        return ir.BF16Type.get()
    if dtype == "f8E4M3FN":
        return ir.Float8E4M3FNType.get()
    if dtype == "ui8":
        return ir.IntegerType.get_unsigned(8)
    if dtype.startswith("i"):
        return ir.IntegerType.get_signless(int(dtype[1:]))
    raise ValueError(f"unknown element type {dtype}")


def tensor_type(spec: TensorSpec) -> ir.RankedTensorType:
    return ir.RankedTensorType.get(list(spec.shape), element_type(spec.dtype))


def spec_of(t: ir.Type) -> TensorSpec:
    rt = ir.RankedTensorType(t)
    return TensorSpec(tuple(int(s) for s in rt.shape), str(rt.element_type))


# ----------------------------------------------------------------------------- attributes

def encode_attr(kind: Attr, value: Any) -> ir.Attribute:
    if kind is Attr.INT:
        return ir.IntegerAttr.get(ir.IntegerType.get_signless(64), int(value))
    if kind is Attr.FLOAT:
        return ir.FloatAttr.get(ir.F64Type.get(), float(value))
    if kind is Attr.BOOL:
        return ir.BoolAttr.get(bool(value))
    if kind is Attr.STR:
        return ir.StringAttr.get(value)
    if kind is Attr.INTS:
        return ir.DenseI64ArrayAttr.get([int(v) for v in value])
    if kind is Attr.FLOATS:
        return ir.DenseF64ArrayAttr.get([float(v) for v in value])
    if kind is Attr.DENSE:
        from ops.registry import dtype_of_numpy
        arr = np.array(value, order="C")
        return ir.DenseElementsAttr.get(arr, type=tensor_type(TensorSpec(arr.shape, dtype_of_numpy(arr.dtype))))
    raise TypeError(kind)


def decode_attr(attr: ir.Attribute) -> Any:
    """The Python form of a builtin attribute (the inverse of `encode_attr`)."""
    if isinstance(attr, ir.BoolAttr):
        return bool(attr.value)
    if isinstance(attr, ir.IntegerAttr):
        return int(attr.value)
    if isinstance(attr, ir.FloatAttr):
        return float(attr.value)
    if isinstance(attr, ir.StringAttr):
        return attr.value
    if isinstance(attr, (ir.DenseI64ArrayAttr, ir.DenseF64ArrayAttr)):
        return tuple(attr)
    if isinstance(attr, ir.DenseElementsAttr):
        return dense_to_numpy(attr)
    if isinstance(attr, ir.DictAttr):
        return {attr[i].name: decode_attr(attr[i].attr) for i in range(len(attr))}
    return attr


def dense_to_numpy(attr: ir.DenseElementsAttr) -> np.ndarray:
    spec = spec_of(attr.type)
    if attr.is_splat:
        value = attr.get_splat_value()
        scalar = value.value if hasattr(value, "value") else value
        from ops.registry import numpy_dtype
        return np.full(spec.shape, scalar, dtype=numpy_dtype(spec.dtype))
    return np.array(attr)


def op_attrs(operation: ir.Operation, opdef: OpDef) -> dict[str, Any]:
    return {name: decode_attr(operation.attributes[name]) for name in opdef.attrs}


def operand_segments(operation: ir.Operation) -> list[int] | None:
    if "operandSegmentSizes" in operation.attributes:
        return list(operation.attributes["operandSegmentSizes"])
    return None


# ----------------------------------------------------------------------------- op classes

def _make_verifier(opdef: OpDef):
    def verify_invariants(self) -> bool:
        operation = self.operation
        try:
            attrs = opdef.check_attrs(op_attrs(operation, opdef))
            if opdef.infer is None:
                return True
            flat = [spec_of(v.type) for v in operation.operands]
            specs = opdef.group_operands(flat, operand_segments(operation))
            expected = opdef.infer_specs(specs, attrs)
            got = tuple(spec_of(r.type) for r in operation.results)
            if expected != got:
                raise ValueError(f"result types {', '.join(map(str, got))} differ from the inferred "
                                 f"{', '.join(map(str, expected))}")
        except (ValueError, TypeError, KeyError, IndexError) as e:
            operation.location.emit_error(f"ember.{opdef.name}: {e}")
            return False
        return True
    return verify_invariants


def _operand_annotation(name: str):
    if name.endswith("*"):
        return name[:-1], Sequence[Operand[Any]]
    if name.endswith("?"):
        return name[:-1], Operand[Any] | None
    return name, Operand[Any]


def _define_op_class(opdef: OpDef) -> type:
    annotations: dict[str, Any] = {}
    namespace: dict[str, Any] = {"__module__": __name__, "__doc__": opdef.doc or f"ember.{opdef.name}",
                                 "verify_invariants": _make_verifier(opdef)}
    # Every field is keyword-only: ops are built by name (`build_op`), never by position.
    for declared in opdef.operands:
        name, ann = _operand_annotation(declared)
        annotations[name] = ann
        namespace[name] = None if declared.endswith("?") else operand(kw_only=True)
    for name, kind in opdef.attrs.items():
        annotations[name] = _ATTR_CONSTRAINT[kind]
        namespace[name] = attribute(kw_only=True)
    if opdef.num_results == 1:
        annotations["result"] = Result[Any]
        namespace["result"] = result(kw_only=True)
    elif opdef.num_results > 1:
        # One field per result, so each gets its own IRDL constraint (results may differ in type).
        for i in range(opdef.num_results):
            annotations[f"result_{i}"] = Result[Any]
            namespace[f"result_{i}"] = result(kw_only=True)
    elif opdef.num_results == -1:
        annotations["results_"] = Sequence[Result[Any]]
        namespace["results_"] = result(kw_only=True)
    namespace["__annotations__"] = annotations
    class_name = "".join(p.capitalize() for p in opdef.name.split("_")) + "Op"
    return type(class_name, (Ember.Operation,), namespace, name=opdef.name, traits=[Pure])


@functools.cache
def op_classes() -> dict[str, type]:
    """The Python op class of every registered `ember` op (defined once per process)."""
    return {name: _define_op_class(opdef) for name, opdef in sorted(all_ops().items())}


def build_op(opdef: OpDef, operands: Sequence[Any], attrs: dict[str, Any],
             result_specs: Sequence[TensorSpec], loc: ir.Location | None = None) -> ir.Operation:
    """Create an `ember` op at the current insertion point.

    `operands` has one entry per declared operand: an ir.Value, None (absent optional) or a list
    (variadic). Built generically (`Operation.create`) with the segment sizes IRDL expects."""
    op_classes()
    attributes = {name: encode_attr(kind, attrs[name]) for name, kind in opdef.attrs.items()}
    flat: list[ir.Value] = []
    segments: list[int] = []
    for declared, value in zip(opdef.operands, operands, strict=True):
        group = list(value) if declared.endswith("*") else ([] if value is None else [value])
        flat.extend(group)
        segments.append(len(group))
    if any(d.endswith(("?", "*")) for d in opdef.operands):
        attributes["operandSegmentSizes"] = ir.DenseI32ArrayAttr.get(segments)
    if opdef.num_results == -1:
        attributes["resultSegmentSizes"] = ir.DenseI32ArrayAttr.get([len(result_specs)])
    return ir.Operation.create(f"ember.{opdef.name}", results=[tensor_type(s) for s in result_specs],
                               operands=flat, attributes=attributes, loc=loc)
