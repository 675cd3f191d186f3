"""Importer: an exported FX graph (ATen IR) to a graph-level `ember` MLIR module.

Each call_function node is looked up in the `ops/` registry and its lowering rule emits `ember`
ops through a `Builder`. Parameters and buffers become `ember.weight` ops that name an entry of
the weight table (never materialized here, so meta-device models import without memory).
Subgraphs that depend on no input and no weight (masks from `arange`, `full`, ...) are folded
with torch on the CPU. Unsupported ops are collected, all of them, with the user's source line.
Sizes that depend on the data (`x[mask]`, `.item()`) are taken at the example inputs' values
(`compiler/unbacked.py`); sizes and arithmetic on them fold to ints.
"""
from __future__ import annotations

import operator
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from torch_mlir import ir
from torch_mlir.dialects import func

from compiler.context import mlir_context
from compiler.dialect import build_op, op_attrs, spec_of, tensor_type
from compiler.errors import LoweringError, UnsupportedOp, UnsupportedOpsError
from compiler.unbacked import concrete_vals, example_sizes, has_unbacked, shape_depends_on_data
from ops.registry import OpDef, TensorSpec, Unsupported, numpy_dtype, op as lookup_op, rule_for

#: Folded constants larger than this many elements stay ops (they would bloat the weight table).
MAX_FOLD_ELEMENTS = 1 << 24
#: Constants with at most this many elements are written inline in the IR.
MAX_INLINE_ELEMENTS = 16

#: What to do about ops that have no lowering rule and a known way around them (target -> hint).
NO_RULE_HINTS: dict[str, str] = {}


@dataclass(frozen=True)
class Value:
    """An SSA value of the module being built, with its shape and dtype on plain numbers."""
    mlir: ir.Value
    spec: TensorSpec

    @property
    def shape(self) -> tuple[int, ...]:
        return self.spec.shape

    @property
    def dtype(self) -> str:
        return self.spec.dtype

    @property
    def rank(self) -> int:
        return self.spec.rank


class Builder:
    """What a lowering rule sees: emit `ember` ops, make constants, read the node's torch types."""

    def __init__(self, importer: "Importer"):
        self._imp = importer
        self.node: torch.fx.Node | None = None
        self.loc: ir.Location | None = None

    # -- emitting ops
    def emit(self, op: str | OpDef, *operands: Any, result_specs: Sequence[TensorSpec] | None = None,
             **attrs: Any) -> Any:
        """Emit `ember.<op>`; returns a Value, or a tuple of Values for multi-result ops.

        Result types come from the op's inference; only ops without one (`infer=None`) take
        them from `result_specs`."""
        opdef = lookup_op(op) if isinstance(op, str) else op
        if len(operands) != len(opdef.operands):
            raise TypeError(f"ember.{opdef.name} takes operands {opdef.operands}, got {len(operands)}")
        attrs = opdef.check_attrs(attrs)
        specs = [self._spec_tree(o) for o in operands]
        results = opdef.infer_specs(specs, attrs) if opdef.infer else tuple(result_specs)
        mlir_operands = [self._mlir_tree(o) for o in operands]
        operation = build_op(opdef, mlir_operands, attrs, results, loc=self.loc)
        values = tuple(Value(r, s) for r, s in zip(operation.results, results))
        return values[0] if opdef.num_results == 1 else values

    def constant(self, value: Any, dtype: str) -> Value:
        """A literal tensor (scalars become 0-d tensors) of element type `dtype`."""
        return self._imp.literal(np.asarray(value), dtype, self.loc)

    def scalar_or_value(self, x: Any, dtype: str) -> Value:
        """`x` itself if it is a Value (cast to `dtype`), else a 0-d constant of `dtype`."""
        return self.cast(x, dtype) if isinstance(x, Value) else self.constant(x, dtype)

    def cast(self, x: Value, dtype: str) -> Value:
        return x if x.dtype == dtype else self.emit("cast", x, dtype=dtype)

    def producer(self, x: Value) -> tuple[str, dict[str, Any], list[Value]] | None:
        """The `ember` op that computed `x` (its name without the prefix, its attributes and its
        operands), or None for an input of the function."""
        owner = x.mlir.owner
        name = getattr(owner, "name", "")
        if not name.startswith("ember."):
            return None
        opdef = lookup_op(name.removeprefix("ember."))
        return opdef.name, op_attrs(owner, opdef), [Value(v, spec_of(v.type)) for v in owner.operands]

    # -- what torch says about the node being lowered
    def result_spec(self, index: int = 0) -> TensorSpec:
        """The shape and dtype torch recorded for the node's result `index` (a size that depends
        on the data at the example's value)."""
        val = self.example_value()
        if isinstance(val, (tuple, list)):
            val = val[index]
        return TensorSpec.of(val)

    def example_value(self) -> Any:
        """What torch recorded for the node's result, with every size that depends on the data
        at the value the example inputs give (`compiler/unbacked.py`)."""
        return self._imp.val(self.node)

    def where(self) -> str:
        """`aten.op.overload at file:line` of the node being lowered."""
        return f"{target_name(self.node.target)} at {source_line(self.node)}"

    @staticmethod
    def _spec_tree(o: Any) -> Any:
        if isinstance(o, (list, tuple)):
            return [v.spec for v in o]
        return None if o is None else o.spec

    @staticmethod
    def _mlir_tree(o: Any) -> Any:
        if isinstance(o, (list, tuple)):
            return [v.mlir for v in o]
        return None if o is None else o.mlir


@dataclass
class HostCall:
    """An op kept on the host (allow_unsupported): the FX node, called with torch at run time."""
    target: Any
    args: Any
    kwargs: Any


@dataclass
class ImportResult:
    module: ir.Module
    context: ir.Context
    weights: dict[str, torch.Tensor]
    input_specs: list[TensorSpec]
    output_specs: list[TensorSpec]
    unsupported: list[UnsupportedOp]
    host_calls: dict[int, HostCall] = field(default_factory=dict)
    input_names: list[str] = field(default_factory=list)   # the model's names for its inputs, in order
    #: positions of the inputs the model updates in place (a KV cache); `@main` returns their new
    #: values after the model's outputs, in this order
    mutated_inputs: list[int] = field(default_factory=list)


def source_line(node: torch.fx.Node) -> str:
    """The user's own `file:line` that produced `node` (frames inside torch are skipped)."""
    trace = node.meta.get("stack_trace") or ""
    frames = re.findall(r'File "([^"]+)", line (\d+)', trace)
    torch_dir = os.path.dirname(torch.__file__)
    user = [(f, n) for f, n in frames if not f.startswith(torch_dir)]
    if not user:
        return "<unknown>"
    f, n = user[-1]
    rel = os.path.relpath(f)
    return f"{f if rel.startswith('..') else rel}:{n}"


def target_name(target: Any) -> str:
    """`namespace.op.overload` (`aten.add.Tensor`, `transformers.grouped_mm_fallback.default`)."""
    if isinstance(target, torch._ops.OpOverload):
        namespace, name = target._schema.name.split("::", 1)
        return f"{namespace}.{name}.{target._overloadname}"
    return getattr(target, "__name__", str(target))


def check_only_nodes(graph: torch.fx.Graph) -> set[torch.fx.Node]:
    """Nodes that only feed runtime checks (`torch._check(...)` chains ending in an assertion):
    checked at capture time on the example shapes, nothing to compute."""
    dead: set[torch.fx.Node] = set()
    for node in reversed(graph.nodes):
        if node.op != "call_function":
            continue
        rule = rule_for(node.target)
        if (rule is not None and rule.family == "assertions") or (node.users and all(u in dead for u in node.users)):
            dead.add(node)
    return dead


#: Host calls are calls to private functions `@host<index>` that carry this attribute (the aten
#: target): outlined like IREE's dispatch regions, since a leaf `ember` op cannot take operands
#: of mixed types through one IRDL variadic.
HOST_TARGET_ATTR = "ember.host_target"
#: On `@main`: the positions of the arguments whose new values it returns after the outputs.
MUTATED_INPUTS_ATTR = "ember.mutated_inputs"
HOST_PREFIX = "host"


def host_function_name(index: int) -> str:
    return f"{HOST_PREFIX}{index}"


def host_call_index(callee: str) -> int:
    return int(callee.removeprefix(HOST_PREFIX))


def main_function(module: ir.Module) -> Any:
    """The `func.func @main` of a graph-level module."""
    for operation in module.body.operations:
        if operation.operation.name == "func.func" and operation.attributes["sym_name"].value == "main":
            return operation
    raise ValueError("the module has no func.func @main")


class Importer:
    """Turns one ExportedProgram into a `func.func @main` of `ember` ops."""

    def __init__(self, ep: torch.export.ExportedProgram, allow_unsupported: bool = False,
                 example_inputs: tuple[torch.Tensor, ...] | None = None):
        self.ep = ep
        #: node -> its value with the sizes that depend on the data at the example's (see `val`)
        self.vals: dict[torch.fx.Node, Any] = {}
        if has_unbacked(ep.graph) and example_inputs is not None:
            self.vals = concrete_vals(ep.graph, example_sizes(ep, example_inputs))
        self.allow_unsupported = allow_unsupported
        self.context = mlir_context()
        self.weights: dict[str, torch.Tensor] = {}
        self.values: dict[torch.fx.Node, Any] = {}
        self.folded: dict[torch.fx.Node, Any] = {}   # nodes computed at import time
        self.unsupported: Counter = Counter()
        self.reasons: dict[tuple[str, str], str] = {}
        #: unsupported ops that cannot run as host calls either (a result shape that depends on the data)
        self.unhostable: set[tuple[str, str]] = set()
        self.host_calls: dict[int, HostCall] = {}
        self.builder = Builder(self)

    def val(self, node: torch.fx.Node) -> Any:
        """`node.meta["val"]`, with the sizes that depend on the data at the example's values."""
        return self.vals.get(node, node.meta.get("val"))

    # ------------------------------------------------------------------ entry point
    def run(self) -> ImportResult:
        ep, sig = self.ep, self.ep.graph_signature
        user_inputs = [n for n in ep.graph.nodes if n.op == "placeholder" and n.name in sig.user_inputs]
        output_node = next(n for n in ep.graph.nodes if n.op == "output")
        user_outputs, mutated = self._outputs(output_node, user_inputs)
        with self.context, ir.Location.unknown():
            self.module = ir.Module.create()
            in_specs = [TensorSpec.of(self.val(n)) for n in user_inputs]
            if not all(isinstance(o, torch.fx.Node) and isinstance(self.val(o), torch.Tensor) for o in user_outputs):
                raise LoweringError("model outputs must all be tensors")
            with ir.InsertionPoint(self.module.body):   # its result types are set once the ops are made
                fn = func.FuncOp("main", ([tensor_type(s) for s in in_specs], []))
                block = fn.add_entry_block()
            self.block = block
            with ir.InsertionPoint(block):
                for node, arg in zip(user_inputs, block.arguments):
                    self.values[node] = Value(arg, TensorSpec.of(self.val(node)))
                remaining_users = {n: len(n.users) for n in ep.graph.nodes}
                checks = check_only_nodes(ep.graph)
                for node in ep.graph.nodes:
                    if node.op == "placeholder" and node not in self.values:
                        self._placeholder(node)
                    elif node in checks:
                        self.values[node] = None
                    elif node.op == "call_function":
                        self._call(node)
                        self._release_folded(node, remaining_users)
                if self.unsupported and (not self.allow_unsupported or self.unhostable):
                    raise UnsupportedOpsError(self.unsupported_list(), None if not self.unhostable else
                                              "The ops whose result shape depends on the data cannot run on "
                                              "the host either (a host call has a static shape).")
                results = [self._materialize(o) for o in user_outputs]
                out_specs = [r.spec for r in results]
                updates = [self._materialize(value) for _, value in mutated]
                if any(not isinstance(u, Value) for u in updates):
                    raise LoweringError("an in-place update of an input is not computed by Ember")
                # the new values of inputs updated in place follow the outputs (see ImportResult)
                func.ReturnOp([r.mlir for r in results] + [u.mlir for u in updates])
                _erase_unused(block)
                fn.attributes[MUTATED_INPUTS_ATTR] = ir.ArrayAttr.get(
                    [ir.IntegerAttr.get(ir.IntegerType.get_signless(64), i) for i, _ in mutated])
                fn.attributes["function_type"] = ir.TypeAttr.get(ir.FunctionType.get(
                    [tensor_type(s) for s in in_specs], [tensor_type(s) for s in out_specs] +
                    [u.mlir.type for u in updates]))
        return ImportResult(self.module, self.context, self.weights, in_specs, out_specs,
                            self.unsupported_list(), self.host_calls, [n.name for n in user_inputs],
                            [i for i, _ in mutated])

    def _outputs(self, output_node: torch.fx.Node, user_inputs: list[torch.fx.Node]) -> tuple[list, list]:
        """The model's outputs, and (input position, new value) of every input it updates in
        place (torch.export lists those as USER_INPUT_MUTATION outputs). A module that updates
        its own buffers is refused: its state would live in the weights."""
        kinds = torch.export.graph_signature.OutputKind
        position = {n.name: i for i, n in enumerate(user_inputs)}
        outputs, mutated, buffers = [], [], []
        for value, spec in zip(output_node.args[0], self.ep.graph_signature.output_specs):
            if spec.kind == kinds.USER_OUTPUT:
                outputs.append(value)
            elif spec.kind == kinds.USER_INPUT_MUTATION:
                mutated.append((position[spec.target], value))
            else:
                buffers.append(f"{spec.kind.name.lower()} of {spec.target}")
        if buffers:
            raise UnsupportedOpsError([UnsupportedOp("in-place state update", 1, (("<model>", 1),),
                                                     f"the model updates its own state ({', '.join(buffers)}); "
                                                     "pass that state as inputs, which it may update in place")])
        return outputs, mutated

    def unsupported_list(self) -> list[UnsupportedOp]:
        """Unsupported ops grouped by aten target, most frequent first, with their source lines."""
        by_target: dict[str, Counter] = {}
        for (target, src), n in self.unsupported.items():
            by_target.setdefault(target, Counter())[src] += n
        out = [UnsupportedOp(t, sum(srcs.values()), tuple(srcs.items()),
                             "; ".join(sorted({r for (t2, _), r in self.reasons.items() if t2 == t})))
               for t, srcs in by_target.items()]
        return sorted(out, key=lambda u: (-u.count, u.target))

    # ------------------------------------------------------------------ placeholders
    def _placeholder(self, node: torch.fx.Node) -> None:
        sig = self.ep.graph_signature
        name = (sig.inputs_to_parameters.get(node.name) or sig.inputs_to_buffers.get(node.name)
                or sig.inputs_to_lifted_tensor_constants.get(node.name))
        if name is None:
            raise LoweringError(f"placeholder {node.name} is neither an input nor a weight")
        tensor = self.ep.state_dict.get(name)
        if tensor is None:
            tensor = self.ep.constants[name]
        if not isinstance(tensor, torch.Tensor):
            raise LoweringError(f"constant {name} is a {type(tensor).__name__}, not a tensor")
        tensor = tensor.detach()
        if name in sig.inputs_to_lifted_tensor_constants.values() and not tensor.is_meta:
            self.folded[node] = tensor   # a literal of the model's code: may fold further
        self.values[node] = ("weight", name, tensor)

    def weight(self, name: str, tensor: torch.Tensor) -> Value:
        """An `ember.weight` op naming `tensor` in the weight table."""
        spec = TensorSpec.of(tensor)
        self.weights[name] = tensor
        if not tensor.is_meta and tensor.numel() <= MAX_INLINE_ELEMENTS:
            return self.literal(tensor.cpu().numpy() if tensor.dtype != torch.bfloat16
                                else tensor.float().numpy(), spec.dtype, None)
        return self.builder.emit("weight", symbol=name, result_specs=[spec])

    def literal(self, array: np.ndarray, dtype: str, loc: ir.Location | None) -> Value:
        """An inline `ember.constant` holding `array` as `dtype` (bf16 is held as f32, then cast)."""
        holder = "f32" if dtype == "bf16" else dtype
        arr = np.array(np.asarray(array).astype(numpy_dtype(holder)), order="C")
        old_loc = self.builder.loc
        self.builder.loc = loc
        value = self.builder.emit("constant", value=arr)
        self.builder.loc = old_loc
        return self.builder.cast(value, dtype)

    def _materialize(self, x: Any) -> Any:
        """The builder Value of an FX argument (weights and folded constants are emitted lazily)."""
        if isinstance(x, torch.fx.Node):
            v = self.values.get(x)
            if isinstance(v, tuple) and v and v[0] == "weight":
                v = self.weight(v[1], v[2])
                self.values[x] = v
            elif v is None and x in self.folded:
                v = self._folded_value(x)
                if isinstance(v, Value):
                    self.values[x] = v
            return v
        if isinstance(x, (list, tuple)):
            return type(x)(self._materialize(a) for a in x)
        if isinstance(x, dict):   # node.kwargs: keyword-only tensors (attn_mask=...) too
            return {k: self._materialize(v) for k, v in x.items()}
        return x

    def _folded_value(self, node: torch.fx.Node) -> Any:
        t = self.folded[node]
        if isinstance(t, (int, float, bool)):     # a size, or arithmetic on sizes
            return t
        if not isinstance(t, torch.Tensor):
            raise LoweringError(f"{node.name} folds to a {type(t).__name__}, not a tensor")
        return self.weight(f"_folded.{node.name}", t)

    # ------------------------------------------------------------------ call_function
    def _call(self, node: torch.fx.Node) -> None:
        if node.target is operator.getitem:
            src, index = node.args
            if src in self.folded:
                self.folded[node] = self.folded[src][index]
                return
            parent = self.values.get(src)
            if isinstance(parent, _Poison):       # a part of an unsupported op's result
                self.values[node] = _POISON
                return
            self.values[node] = parent[index] if isinstance(parent, (tuple, list)) else None
            if isinstance(parent, (tuple, list)) and parent[index] is None:
                self._unsupported(node, "an output of this op is not computed by Ember")
            return
        if self._try_fold(node):
            return
        if isinstance(self.val(node), (int, float, bool)) and node.target is not torch.ops.aten._local_scalar_dense.default:
            self.folded[node] = self.val(node)   # a size (sym_size, arithmetic on sizes): known now
            return
        rule = rule_for(node.target)
        if rule is None:
            self._unsupported(node, NO_RULE_HINTS.get(target_name(node.target), ""))
            return
        args = self._materialize(node.args)
        kwargs = self._materialize(node.kwargs)
        if self._has_poison(args) or self._has_poison(kwargs):
            self.values[node] = _POISON   # an input was unsupported: already reported
            return
        self.builder.node = node
        self.builder.loc = self._location(node)
        with self.builder.loc:
            try:
                result = rule.fn(self.builder, *args, **kwargs)
            except Unsupported as e:
                self._unsupported(node, str(e))
                return
            except Exception as e:            # the rule cannot lower this instance: report it, by name
                first = str(e).strip().splitlines()[0] if str(e).strip() else ""
                self._unsupported(node, f"ops/{rule.family}.py cannot lower it: {type(e).__name__}: {first}")
                return
        self._check_against_torch(node, result, rule.family)
        self.values[node] = result

    def _release_folded(self, node: torch.fx.Node, remaining_users: dict[torch.fx.Node, int]) -> None:
        """Drop folded intermediates once their last user is imported (masks can be large)."""
        for src in node.all_input_nodes:
            remaining_users[src] -= 1
            if remaining_users[src] == 0 and src in self.folded and src.op != "placeholder":
                del self.folded[src]

    def _try_fold(self, node: torch.fx.Node) -> bool:
        """Compute `node` now if it depends only on literals; keeps masks and iotas out of the graph."""
        inputs = node.all_input_nodes
        if inputs and not all(n in self.folded for n in inputs):
            return False
        val = self.val(node)
        vals = val if isinstance(val, (tuple, list)) else [val]
        if not all(isinstance(v, torch.Tensor) for v in vals) or sum(v.numel() for v in vals) > MAX_FOLD_ELEMENTS:
            return False
        if isinstance(node.target, torch._ops.OpOverload) and node.target.is_view is False and \
                any(a.alias_info is not None and a.alias_info.is_write for a in node.target._schema.arguments):
            return False

        def real(x: Any) -> Any:
            if isinstance(x, torch.fx.Node):
                return self.folded[x]
            if isinstance(x, torch.device):
                return torch.device("cpu")
            if isinstance(x, (list, tuple)):
                return type(x)(real(a) for a in x)
            return x

        kwargs = {k: real(v) for k, v in node.kwargs.items()}
        if "device" in kwargs:
            kwargs["device"] = torch.device("cpu")
        try:
            with torch.no_grad():
                self.folded[node] = node.target(*real(node.args), **kwargs)
        except Exception:  # not foldable on the host: lower it as an op instead
            return False
        return True

    @staticmethod
    def _has_poison(x: Any) -> bool:
        if x is None:
            return False
        if isinstance(x, (list, tuple)):
            return any(Importer._has_poison(a) for a in x)
        if isinstance(x, dict):
            return any(Importer._has_poison(a) for a in x.values())
        return isinstance(x, _Poison)

    def _unsupported(self, node: torch.fx.Node, reason: str) -> None:
        key = (target_name(node.target), source_line(node))
        self.unsupported[key] += 1
        if reason:
            self.reasons[key] = reason
        if self.allow_unsupported:
            self.values[node] = self._host_call(node)
        else:
            self.values[node] = _POISON

    def _host_call(self, node: torch.fx.Node) -> Any:
        args = self._materialize(node.args)
        kwargs = self._materialize(node.kwargs)
        if self._has_poison(args) or self._has_poison(kwargs):
            return _POISON
        val = self.val(node)
        vals = list(val) if isinstance(val, (tuple, list)) else [val]
        if not all(isinstance(v, torch.Tensor) for v in vals):
            return _POISON
        if shape_depends_on_data(node):
            key = (target_name(node.target), source_line(node))
            self.unhostable.add(key)
            self.reasons[key] = "; ".join(filter(None, (self.reasons.get(key), "its result shape depends on the data")))
            return _POISON
        tensors: list[Value] = []

        def strip(x: Any) -> Any:
            if isinstance(x, Value):
                tensors.append(x)
                return _HostArg(len(tensors) - 1)
            if isinstance(x, (list, tuple)):
                return type(x)(strip(a) for a in x)
            return x

        index = len(self.host_calls)
        self.host_calls[index] = HostCall(node.target, strip(args), {k: strip(v) for k, v in kwargs.items()})
        specs = [TensorSpec.of(v) for v in vals]
        name = host_function_name(index)
        with ir.InsertionPoint(self.module.body), ir.Location.unknown():
            decl = func.FuncOp(name, ([t.mlir.type for t in tensors], [tensor_type(s) for s in specs]),
                               visibility="private")
            decl.attributes[HOST_TARGET_ATTR] = ir.StringAttr.get(target_name(node.target))
        call = func.CallOp([tensor_type(s) for s in specs], name, [t.mlir for t in tensors], loc=self._location(node))
        results = tuple(Value(r, s) for r, s in zip(call.results, specs))
        return results if isinstance(val, (tuple, list)) else results[0]

    def _location(self, node: torch.fx.Node) -> ir.Location:
        src = source_line(node)
        if src != "<unknown>":
            path, line = src.rsplit(":", 1)
            return ir.Location.name(node.name, childLoc=ir.Location.file(path, int(line), 0))
        return ir.Location.name(node.name)

    def _check_against_torch(self, node: torch.fx.Node, result: Any, family: str) -> None:
        """The specs the op library inferred must equal what torch recorded for the node."""
        val = self.val(node)
        got = result if isinstance(result, (tuple, list)) else (result,)
        want = val if isinstance(val, (tuple, list)) else (val,)
        for i, (g, w) in enumerate(zip(got, want)):
            if g is None or not isinstance(w, torch.Tensor):
                continue
            if not isinstance(g, Value):
                raise LoweringError(f"ops/{family}.py lowering of {target_name(node.target)} returned "
                                    f"{type(g).__name__}, not a Value")
            if g.spec != TensorSpec.of(w):
                raise LoweringError(f"ops/{family}.py lowers {target_name(node.target)} at {source_line(node)} "
                                    f"to {g.spec} (result {i}), but torch says {TensorSpec.of(w)}")


def _erase_unused(block: Any) -> None:
    """Drop the ops no result of the function reads (a lowering may read past one, as the grouped
    matmul reads a weight as stored rather than its transpose); `ember` ops have no side effects but
    the checks of the data (`effects`)."""
    for operation in reversed(list(block.operations)):
        if operation.name.startswith("ember.") and not any(list(r.uses) for r in operation.results) and \
                not lookup_op(operation.name.removeprefix("ember.")).effects:
            operation.erase()


class _Poison:
    """Stands for the result of an unsupported op, so that later ops are skipped, not misreported."""


_POISON = _Poison()


@dataclass(frozen=True)
class _HostArg:
    """Position of a tensor operand in a host call's argument structure."""
    index: int


def import_program(ep: torch.export.ExportedProgram, allow_unsupported: bool = False,
                   example_inputs: tuple[torch.Tensor, ...] | None = None) -> ImportResult:
    """Import an ExportedProgram into a graph-level `ember` module; `example_inputs` fix the sizes
    that depend on the data (`compiler/unbacked.py`)."""
    return Importer(ep, allow_unsupported, example_inputs).run()


__all__ = ["Builder", "Value", "ImportResult", "Importer", "import_program", "source_line", "HostCall"]
