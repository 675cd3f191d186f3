"""The op registry: `ember` op definitions and the aten targets that lower to them.

An op family module (one file under `ops/`) declares, in one place:
- `OpDef`s: the `ember` dialect ops it owns, with their operands, attributes, shape/dtype
  inference on plain numbers, and a numpy reference;
- lowering rules (`@lowers(aten.x, ...)`): how an FX node of those aten targets becomes `ember`
  ops, written against a small builder interface (`b.emit(...)`, `b.constant(...)`);
- `SAMPLES`: small torch programs that exercise the family, run by the generic test.

The importer and the reference interpreter only look things up here; they never switch on names.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

# ----------------------------------------------------------------------------- dtypes

#: torch dtype -> the element type name used in `ember` IR (as MLIR spells it).
TORCH_TO_DTYPE = {
    torch.float32: "f32", torch.float64: "f64", torch.float16: "f16", torch.bfloat16: "bf16",
    torch.int64: "i64", torch.int32: "i32", torch.int16: "i16", torch.int8: "i8",
    torch.uint8: "ui8", torch.bool: "i1", torch.float8_e4m3fn: "f8E4M3FN",
}
DTYPE_TO_TORCH = {v: k for k, v in TORCH_TO_DTYPE.items()}
FLOAT_DTYPES = frozenset({"f32", "f64", "f16", "bf16"})


def dtype_of_numpy(dt: np.dtype) -> str:
    """The `ember` element type name of a numpy dtype."""
    for name in ("f32", "f64", "f16", "bf16", "i64", "i32", "i16", "i8", "ui8", "i1", "f8E4M3FN"):
        if numpy_dtype(name) == dt:
            return name
    raise TypeError(f"numpy dtype {dt} has no ember element type")


def numpy_dtype(dtype: str) -> np.dtype:
    """The numpy dtype that holds `ember` element type `dtype` (bf16 and fp8 through ml_dtypes)."""
    if dtype in ("bf16", "f8E4M3FN"):
        import ml_dtypes
        return np.dtype(ml_dtypes.bfloat16 if dtype == "bf16" else ml_dtypes.float8_e4m3fn)
    return {"f32": np.dtype(np.float32), "f64": np.dtype(np.float64), "f16": np.dtype(np.float16),
            "i64": np.dtype(np.int64), "i32": np.dtype(np.int32), "i16": np.dtype(np.int16),
            "i8": np.dtype(np.int8), "ui8": np.dtype(np.uint8), "i1": np.dtype(np.bool_)}[dtype]


@dataclass(frozen=True)
class TensorSpec:
    """Shape and element type of a tensor value, on plain numbers."""
    shape: tuple[int, ...]
    dtype: str

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_DTYPES

    def with_(self, shape: Sequence[int] | None = None, dtype: str | None = None) -> "TensorSpec":
        return TensorSpec(tuple(self.shape if shape is None else shape), self.dtype if dtype is None else dtype)

    @classmethod
    def of(cls, t: torch.Tensor) -> "TensorSpec":
        if t.dtype not in TORCH_TO_DTYPE:
            raise TypeError(f"tensor dtype {t.dtype} is not supported by Ember "
                            f"(supported: {', '.join(str(d) for d in TORCH_TO_DTYPE)})")
        return cls(tuple(int(s) for s in t.shape), TORCH_TO_DTYPE[t.dtype])

    def __str__(self) -> str:
        return f"tensor<{'x'.join(map(str, self.shape))}{'x' if self.shape else ''}{self.dtype}>"


# ----------------------------------------------------------------------------- attributes

class Attr(enum.Enum):
    """Kinds of op attributes. Each maps to one builtin MLIR attribute kind."""
    INT = "int"        # IntegerAttr i64
    FLOAT = "float"    # FloatAttr f64
    BOOL = "bool"      # BoolAttr
    STR = "str"        # StringAttr
    INTS = "ints"      # DenseI64ArrayAttr
    FLOATS = "floats"  # DenseF64ArrayAttr
    DENSE = "dense"    # DenseElementsAttr; a numpy array in Python

    def check(self, op: str, name: str, value: Any) -> Any:
        """Normalize `value` to this kind's Python form, or raise naming the op and attribute."""
        ok = {
            Attr.INT: lambda v: isinstance(v, (int, np.integer)) and not isinstance(v, bool),
            Attr.FLOAT: lambda v: isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool),
            Attr.BOOL: lambda v: isinstance(v, (bool, np.bool_)),
            Attr.STR: lambda v: isinstance(v, str),
            Attr.INTS: lambda v: isinstance(v, (list, tuple)) and all(
                isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in v),
            Attr.FLOATS: lambda v: isinstance(v, (list, tuple)) and all(isinstance(x, (int, float)) for x in v),
            Attr.DENSE: lambda v: isinstance(v, np.ndarray),
        }[self](value)
        if not ok:
            raise TypeError(f"ember.{op}: attribute '{name}' must be {self.value}, got {value!r}")
        return {Attr.INT: int, Attr.FLOAT: float, Attr.BOOL: bool, Attr.STR: str,
                Attr.INTS: lambda v: tuple(int(x) for x in v),
                Attr.FLOATS: lambda v: tuple(float(x) for x in v),
                Attr.DENSE: lambda v: v}[self](value)


# ----------------------------------------------------------------------------- op definitions

InferFn = Callable[..., "TensorSpec | tuple[TensorSpec, ...]"]
ReferenceFn = Callable[..., "np.ndarray | tuple[np.ndarray, ...]"]
TorchFn = Callable[..., "torch.Tensor | tuple[torch.Tensor, ...]"]


@dataclass(frozen=True)
class OpDef:
    """One `ember` dialect op.

    operands: names; a trailing `?` marks an optional operand, a trailing `*` a variadic one
        (whose elements must share one type: IRDL binds a constraint to the first type it sees).
    attrs: attribute name -> kind; every attribute is required (use a neutral value when unused).
    infer(*specs, **attrs): result TensorSpec(s); raises ValueError on invalid input, which the
        verifier reports on the op. `None` for ops whose result types are given when they are built
        (weights, host calls).
    reference(*arrays, **attrs): the op's meaning in numpy; `None` stands for an absent optional
        operand, a variadic operand arrives as a list.
    torch_impl(*tensors, **attrs): the same op in PyTorch, as the cpu/cuda devices run it; called
        as `reference` is, with torch tensors. It computes in the operands' dtype as eager PyTorch
        does (no float64 widening), keeps the tensors on their device, and returns the declared
        result dtype(s). `None` only for ops whose values the runtime supplies (weight, constant).
    effects: the op checks the data (`expect`): it stays in the graph when its result is unused.
    """
    name: str
    operands: tuple[str, ...]
    attrs: dict[str, Attr]
    infer: InferFn | None
    reference: ReferenceFn | None
    doc: str = ""
    num_results: int = 1   # -1: variadic
    family: str = ""
    torch_impl: TorchFn | None = None
    effects: bool = False

    def check_attrs(self, attrs: dict[str, Any]) -> dict[str, Any]:
        missing = set(self.attrs) - set(attrs)
        extra = set(attrs) - set(self.attrs)
        if missing or extra:
            raise TypeError(f"ember.{self.name}: missing attributes {sorted(missing)}, unknown {sorted(extra)}")
        return {k: kind.check(self.name, k, attrs[k]) for k, kind in self.attrs.items()}

    def group_operands(self, flat: Sequence[Any], segments: Sequence[int] | None) -> list[Any]:
        """Split a flat operand list into one entry per declared operand (None, value or list)."""
        if segments is None:
            segments = [1] * len(self.operands)
        out, i = [], 0
        for name, n in zip(self.operands, segments):
            chunk = list(flat[i:i + n])
            i += n
            out.append(chunk if name.endswith("*") else (chunk[0] if chunk else None))
        return out

    def infer_specs(self, specs: Sequence[Any], attrs: dict[str, Any]) -> tuple[TensorSpec, ...]:
        res = self.infer(*specs, **attrs)
        return res if isinstance(res, tuple) else (res,)


_OPS: dict[str, OpDef] = {}
_RESERVED_FIELDS = frozenset({"name", "result", "results", "results_", "operands", "attributes", "location",
                              "context", "parent", "operation", "regions", "successors", "loc", "ip"})
_RULES: dict[Any, "LoweringRule"] = {}
_SAMPLES: dict[str, list["Sample"]] = {}


def define_op(name: str, *, operands: Sequence[str], attrs: dict[str, Attr] | None = None,
              infer: InferFn | None, reference: ReferenceFn | None, torch_impl: TorchFn | None = None,
              doc: str = "", num_results: int = 1, effects: bool = False) -> OpDef:
    """Register an `ember` op. Defining the same op name twice is an error."""
    clash = {n.rstrip("?*") for n in operands} | set(attrs or {})
    if clash & _RESERVED_FIELDS:
        raise ValueError(f"ember.{name}: field names {sorted(clash & _RESERVED_FIELDS)} are reserved by MLIR's OpView")
    if name in _OPS:
        raise ValueError(f"ember.{name} is defined twice (in {_OPS[name].family} and {_caller_family()})")
    op = OpDef(name, tuple(operands), dict(attrs or {}), infer, reference, doc, num_results, _caller_family(),
               torch_impl, effects)
    _OPS[name] = op
    return op


@dataclass(frozen=True)
class LoweringRule:
    """How FX nodes of some aten targets become `ember` ops."""
    targets: tuple[Any, ...]
    fn: Callable[..., Any]
    family: str


def lowers(*targets: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register `fn(b, *args, **kwargs)` as the lowering of aten `targets`.

    A target may be an OpOverload (`aten.add.Tensor`) or an OpOverloadPacket (`aten.add`), which
    stands for all of its overloads. `fn` receives the builder and the node's arguments, with FX
    nodes replaced by builder values; it returns a value, or a tuple of values for multi-result
    nodes. Registering a target twice is an error.
    """
    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        family = fn.__module__.rsplit(".", 1)[-1]
        rule = LoweringRule(tuple(targets), fn, family)
        for target in _expand_targets(targets):
            if target in _RULES:
                raise ValueError(f"aten target {target} is registered twice "
                                 f"(ops/{_RULES[target].family}.py and ops/{family}.py)")
            _RULES[target] = rule
        return fn
    return register


def _expand_targets(targets: Iterable[Any]) -> list[Any]:
    out = []
    for t in targets:
        if isinstance(t, torch._ops.OpOverloadPacket):
            out.extend(getattr(t, name) for name in t.overloads())
        else:
            out.append(t)
    return out


class Unsupported(Exception):
    """Raised by a lowering rule for a variant of its op that Ember cannot run (says why)."""


@dataclass(frozen=True)
class Sample:
    """A small torch program exercising an op family: `fn(*args)` is exported and compared."""
    name: str
    fn: Callable[..., Any]
    args: Callable[[], tuple[torch.Tensor, ...]]
    rtol: float = 1e-4


def samples(*items: Sample) -> None:
    """Register the calling family's samples for the generic registry test."""
    _SAMPLES.setdefault(_caller_family(), []).extend(items)


def _caller_family() -> str:
    import inspect
    frame = inspect.currentframe()
    while frame is not None:
        mod = frame.f_globals.get("__name__", "")
        if mod.startswith("ops.") and mod != __name__:
            return mod.rsplit(".", 1)[-1]
        frame = frame.f_back
    return "?"


# ----------------------------------------------------------------------------- lookups

def _load_all() -> None:
    from ops import families  # noqa: F401  (imports every family module once)


def op(name: str) -> OpDef:
    """The OpDef of `ember.<name>`."""
    _load_all()
    return _OPS[name]


def all_ops() -> dict[str, OpDef]:
    _load_all()
    return dict(_OPS)


def rule_for(target: Any) -> LoweringRule | None:
    """The lowering rule of an aten target, or None when Ember has none."""
    _load_all()
    return _RULES.get(target)


def supported_targets() -> list[Any]:
    _load_all()
    return list(_RULES)


def all_samples() -> dict[str, list[Sample]]:
    _load_all()
    return {k: list(v) for k, v in _SAMPLES.items()}


# ----------------------------------------------------------------------------- small shared helpers

def norm_dim(dim: int, rank: int) -> int:
    """A dimension index in [0, rank), accepting negative dims as torch does."""
    if not -max(rank, 1) <= dim < max(rank, 1):
        raise ValueError(f"dimension {dim} is out of range for rank {rank}")
    return dim % max(rank, 1)


def broadcast_shapes(*shapes: Sequence[int]) -> tuple[int, ...]:
    try:
        return tuple(int(s) for s in np.broadcast_shapes(*[tuple(s) for s in shapes]))
    except ValueError as e:
        raise ValueError(f"shapes {', '.join(str(tuple(s)) for s in shapes)} do not broadcast") from e


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A tensor's values as numpy (bf16 and fp8 through ml_dtypes)."""
    t = t.detach().cpu()
    if t.dtype in (torch.bfloat16, torch.float8_e4m3fn):
        return t.float().numpy().astype(numpy_dtype(TORCH_TO_DTYPE[t.dtype]))
    return t.numpy()


def to_torch(a: np.ndarray, dtype: str) -> torch.Tensor:
    """A numpy array as a torch tensor of `ember` element type `dtype`."""
    if dtype in ("bf16", "f8E4M3FN"):      # exact: both widen to fp32 without rounding
        return torch.from_numpy(np.array(a, dtype=np.float32, order="C")).to(DTYPE_TO_TORCH[dtype])
    return torch.from_numpy(np.array(a, order="C")).to(DTYPE_TO_TORCH[dtype])   # keeps 0-d shapes


def wide(x: np.ndarray) -> np.ndarray:
    """Floating arrays (bf16 included) as float64, the precision references compute in;
    integer and bool arrays as they are."""
    return x.astype(np.float64) if x.dtype.kind == "f" or x.dtype.name == "bfloat16" else x


def as_dtype(array: np.ndarray, dtype: str) -> np.ndarray:
    """Cast a reference result to `dtype`, as the op's declared result type says."""
    return np.asarray(array).astype(numpy_dtype(dtype), copy=False)


__all__ = [name for name in dir() if not name.startswith("_") and name not in {"annotations", "dataclasses",
                                                                                "enum", "field"}]
