"""Lowered `ember` ops: one op per ISA opcode, plus the ops that tie kernels into a Program.

These ops live in the same `ember` dialect as the graph-level ones (`compiler.dialect.Ember`), so
`compiler.context.mlir_context()` loads them and `irdl_text()` (`ember dialect --irdl FILE`) writes them. A command
op has no operands or results: its attributes are the command's fields, by the names the ISA's
builder uses for them (`simulator.isa.program.PEStream`):

    "ember.dma"() {src_space = "sram", src_addr = 2048, dst_space = "local", dst_addr = 2560,
                   rows = 1, row_bytes = 64, src_stride = 64, dst_stride = 64, signal = 19} : () -> ()

Required attributes (one per operand slot the opcode gives meaning to, and the opcode's engine,
dtype, function or spaces) are IRDL constraints, so upstream tools check them too. Optional ones
(IRDL here has no optional attributes) are checked by our verifier:

    wait = array<i64: token, count>   issue once `token` has been signalled `count` times
    signal = token                    signal `token` when the command completes
    per_iter = {field = stride, ...}  inside an `scf.for`: what iteration i adds to a field
                                      (`wait` names the wait count; `aK` an unnamed slot)
    addr_slots = array<i64: s0, s1>   which operand's relocation delta moves a[0] / a[1]
    raw = {field = value, ...}        command fields that the named attributes do not give
                                      (a record the builder would not write); applied last
    dst_pe, mcast                     on `ember.dma`: the destination PE, the fan-out
    indexed, index_addr, index_count, index_step
                                      on an indexed `ember.dma`: which address ("src": a
                                      gather, "dst": a scatter) moves by index_step bytes per
                                      unit of the int32 at local index_addr, which must lie in
                                      [0, index_count); in `per_iter`, `index_addr` / `index_step`
                                      name a[6] / a[7]

Structure comes from upstream dialects: a kernel is a `func.func private` on its operand tensors
holding one `scf.execute_region {ember.pe = N}` per run of one PE's commands (repeat loops are
`scf.for`, marked `ember.loop = position` where the loops array is not in record order),
whose result is the `ember.buffer` the commands wrote; `@main` runs the Program's
steps in order: a `func.call {ember.kernel = index}` of a kernel function for a kernel step, the
graph-level op (or a `func.call` of a host function) for a host or view step. (IRDL binds one
type per constraint, so an `ember` op with variadic operands of different tensor types would
not verify; a call does.)
"""

from dataclasses import dataclass
from typing import Any

from torch_mlir import ir
from torch_mlir.dialects.ext import Result, attribute, result

from compiler.dialect import Ember, op_classes
from simulator.isa import DType, Dir, Engine, Indexed, Mcast, Op, SimdFn, Space

# What each named, non-slot attribute says, and the enum its string names (lower case).
ENUM_FIELDS: dict[str, type] = {
    "engine": Engine, "dtype": DType, "out_dtype": DType, "fn": SimdFn, "src_space": Space,
    "dst_space": Space, "direction": Dir, "mcast": Mcast, "indexed": Indexed,
}
BOOL_FIELDS = frozenset({"accumulate"})
FLOAT_FIELDS = frozenset({"imm"})          # SIMD_SCALAR: a[3] holds the float64 bits
INT_FIELDS = frozenset({"dst_pe", "index_addr", "index_count", "index_step"})

COMMON_OPTIONAL = ("wait", "signal", "per_iter", "addr_slots", "raw")
# Command fields `raw` may set: the operand slots, then the record's other fields.
RAW_FIELDS = tuple(f"a{i}" for i in range(8)) + (
    "wait_tok", "wait_cnt", "sig_tok", "peer", "engine", "dtype", "dtype2", "fn", "src_space",
    "dst_space", "flags")


@dataclass(frozen=True)
class CommandForm:
    """How one opcode's command reads as a lowered op: `slots` names a[0], a[1], ... in order;
    `fields` are its other required attributes; `optional` ones are left out at their default;
    `stride_names` name the slots after `slots` in `per_iter` (others are `aK`)."""
    op: Op
    slots: tuple[str, ...]
    fields: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    stride_names: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.op.name.lower()

    @property
    def stride_keys(self) -> tuple[str, ...]:
        """The `per_iter` key of each stride slot: a[0..7] by name (`aK` for an unnamed one),
        then `wait` for the wait count."""
        named = self.slots + self.stride_names
        return (*named, *(f"a{i}" for i in range(len(named), 8)), "wait")

    @property
    def allowed(self) -> frozenset[str]:
        return frozenset(self.slots + self.fields + self.optional + COMMON_OPTIONAL)


_SIMD = ("fn", "dtype", "out_dtype")
FORMS: dict[Op, CommandForm] = {f.op: f for f in (
    CommandForm(Op.NOP, (), ("engine",)),
    CommandForm(Op.DMA, ("src_addr", "dst_addr", "rows", "row_bytes", "src_stride", "dst_stride"),
                ("src_space", "dst_space"), ("dst_pe", "mcast", "indexed", "index_addr", "index_count", "index_step"),
                ("index_addr", "index_step")),
    CommandForm(Op.DPE_MATMUL, ("a_addr", "b_addr", "c_addr", "m", "k", "n"), ("dtype", "accumulate")),
    CommandForm(Op.RE_ACC, ("dst_addr", "src_addr", "n"), ("dtype",)),
    CommandForm(Op.RE_SEND, ("src_addr", "dst_addr", "n"), ("dtype", "direction", "accumulate")),
    CommandForm(Op.SIMD_UNARY, ("src", "dst", "n"), _SIMD),
    CommandForm(Op.SIMD_BINARY, ("a", "b", "dst", "n"), _SIMD),
    CommandForm(Op.SIMD_SCALAR, ("src", "dst", "n"), _SIMD + ("imm",)),
    CommandForm(Op.SIMD_ROW_REDUCE, ("src", "dst", "rows", "cols"), _SIMD),
    CommandForm(Op.SIMD_ROW_BCAST, ("src", "vec", "dst", "rows", "cols"), _SIMD),
    CommandForm(Op.MLU_TRANSPOSE, ("src", "dst", "rows", "cols"), ("dtype",)),
    CommandForm(Op.MLU_COPY2D, ("src", "dst", "rows", "row_bytes", "src_stride", "dst_stride")),
    CommandForm(Op.MLU_CONCAT, ("a", "b", "dst", "rows", "a_row_bytes", "b_row_bytes")),
    CommandForm(Op.SIMD_MX_QUANT, ("src", "dst", "rows", "cols"), ("dtype", "out_dtype")),
    CommandForm(Op.VEC_KERNEL, ("kernel", "region0", "region1", "region2", "rows", "param"), ("dtype",)),
)}
assert set(FORMS) == set(Op), "every opcode needs a lowered op"
FORM_OF_NAME = {f"ember.{form.name}": form for form in FORMS.values()}

BUFFER = "ember.buffer"
PE_ATTR = "ember.pe"                  # on each scf.execute_region: whose commands it holds
KERNEL_NAME_ATTR = "ember.name"       # on a kernel function (or a call): the ChipProgram's name
NUM_PES_ATTR = "ember.num_pes"        # on a kernel function: its PE count (marks it as a kernel)
RELOCATABLE_ATTR = "ember.relocatable"    # ... it has address slots (others relocate it)
KERNEL_INDEX_ATTR = "ember.kernel"    # on a func.call of @main: the Program's kernel index
DELTAS_ATTR = "ember.deltas"          # ... a relocated kernel: one address delta per operand
LOOP_ATTR = "ember.loop"              # on an scf.for, when needed: its position in the loops array
#: on a kernel function that calls the vector core: its kernel table, one dictionary per kernel
#: (`ember.vec_kernel {kernel = k}` runs entry k): `name`, `llvm` (the module's text), `rvv` (the
#: assembly the simulator times) and `spec` (regions, block trip counts, vector length, as JSON)
VECTOR_KERNELS_ATTR = "ember.vector_kernels"


# ----------------------------------------------------------------------------- verification

def _check_enum(name: str, attr: ir.Attribute) -> None:
    if not isinstance(attr, ir.StringAttr):
        raise TypeError(f"'{name}' must be a string")
    enum = ENUM_FIELDS[name]
    if attr.value.upper() not in enum.__members__ or attr.value != attr.value.lower():
        raise ValueError(f"'{name}' = \"{attr.value}\" is not one of "
                         f"{', '.join(m.lower() for m in enum.__members__)}")


def _check_int_dict(name: str, attr: ir.Attribute, keys: set[str]) -> None:
    if not isinstance(attr, ir.DictAttr):
        raise TypeError(f"'{name}' must be a dictionary of integers")
    for i in range(len(attr)):
        entry = attr[i]
        if entry.name not in keys:
            raise ValueError(f"'{name}' has an unknown field '{entry.name}'")
        if not isinstance(entry.attr, ir.IntegerAttr):
            raise TypeError(f"'{name}.{entry.name}' must be an integer")


def check_command(form: CommandForm, attributes: ir.OpAttributeMap) -> None:
    """Raise ValueError/TypeError when a lowered command op's attributes are not well-formed."""
    allowed = form.allowed
    for name, attr in attributes.items():
        if name not in allowed:
            raise ValueError(f"unknown attribute '{name}'")
        if name in form.slots or name in INT_FIELDS or name == "signal":
            if not isinstance(attr, ir.IntegerAttr):
                raise TypeError(f"'{name}' must be an integer")
        elif name in ENUM_FIELDS:
            _check_enum(name, attr)
        elif name in BOOL_FIELDS:
            if not isinstance(attr, ir.BoolAttr):
                raise TypeError(f"'{name}' must be true or false")
        elif name in FLOAT_FIELDS:
            if not isinstance(attr, ir.FloatAttr):
                raise TypeError(f"'{name}' must be a float")
        elif name in ("wait", "addr_slots"):
            if not isinstance(attr, ir.DenseI64ArrayAttr) or len(attr) != 2:
                raise TypeError(f"'{name}' must be array<i64: x, y>")
        elif name == "per_iter":
            _check_int_dict(name, attr, set(form.stride_keys))
        elif name == "raw":
            _check_int_dict(name, attr, set(RAW_FIELDS))


def _command_verifier(form: CommandForm):
    def verify_invariants(self) -> bool:
        operation = self.operation
        try:
            check_command(form, operation.attributes)
        except (ValueError, TypeError) as e:
            operation.location.emit_error(f"ember.{form.name}: {e}")
            return False
        return True
    return verify_invariants


def _field_constraint(name: str) -> Any:
    if name in ENUM_FIELDS:
        return ir.StringAttr
    if name in FLOAT_FIELDS:
        return ir.FloatAttr
    return ir.IntegerAttr          # slots; `accumulate` (a bool is an i1 integer attribute)


def _define_command_class(form: CommandForm) -> type:
    annotations: dict[str, Any] = {}
    namespace: dict[str, Any] = {"__module__": __name__, "verify_invariants": _command_verifier(form),
                                 "__doc__": f"One {form.op.name} command of a PE's schedule."}
    for name in form.slots + form.fields:
        annotations[name] = _field_constraint(name)
        namespace[name] = attribute(kw_only=True)
    namespace["__annotations__"] = annotations
    class_name = "".join(p.capitalize() for p in form.name.split("_")) + "CmdOp"
    return type(class_name, (Ember.Operation,), namespace, name=form.name)


class BufferOp(Ember.Operation, name="buffer"):
    """A tensor of the Program's table, by id, as it is stored: in `@main` a weight or literal
    (produced by no step), in a kernel function the result its commands wrote. `space` and
    `addr` (optional) say where it lives on the chip."""
    id: ir.IntegerAttr = attribute(kw_only=True)
    result: Result[Any] = result(kw_only=True)

    def verify_invariants(self) -> bool:
        operation = self.operation
        for name, attr in operation.attributes.items():
            kind = {"id": ir.IntegerAttr, "addr": ir.IntegerAttr, "space": ir.StringAttr}.get(name)
            if kind is None or not isinstance(attr, kind):
                operation.location.emit_error(f"ember.buffer: unexpected attribute '{name}' = {attr}")
                return False
        return True


_clash = {f.name for f in FORMS.values()} & set(op_classes())
assert not _clash, f"lowered op names taken by graph-level ops: {sorted(_clash)}"
COMMAND_CLASSES = {form.op: _define_command_class(form) for form in FORMS.values()}
