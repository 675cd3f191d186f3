"""The lowered IR: a Program (`simulator.isa.artifact.Program`) as MLIR, and back.

`lowered_text(program)` writes every kernel's per-PE command schedule as lowered `ember` ops
(`compiler.lowered_dialect`) and `@main` as the Program's steps in order:

    func.func private @kernel_0_linear(%arg0: tensor<4x16xf32>, ...) -> tensor<4x32xf32>
        attributes {ember.name = "linear#0", ember.num_pes = 4 : i64} {
      %c0 = arith.constant 0 : index
      %c1 = arith.constant 1 : index
      %c2 = arith.constant 2 : index
      scf.execute_region {
        "ember.dma"() {...} : () -> ()
        scf.for %arg3 = %c0 to %c2 step %c1 {          // a repeat loop, stored once
          "ember.dma"() {..., per_iter = {src_addr = 64 : i64, wait = 2 : i64}} : () -> ()
        }
        scf.yield
      } {ember.pe = 0 : i64}
      ...
      %0 = "ember.buffer"() {addr = 3840 : i64, id = 3 : i64, space = "sram"} : () -> tensor<4x32xf32>
      return %0 : tensor<4x32xf32>
    }
    func.func @main(%arg0: tensor<4x16xf32>) -> tensor<4x8xf32> {
      %0 = "ember.buffer"() {addr = 0 : i64, id = 1 : i64, space = "sram"} : () -> tensor<32x16xf32>
      ...
      %2 = call @kernel_0_linear(%arg0, %0, %1) {ember.kernel = 0 : i64} : (...) -> tensor<4x32xf32>
      %3 = "ember.unary"(%2) {ember.target = "host", kind = "gelu", ...} : ...

A kernel relocated from another (`RelocatedProgram`) is a call of its base's function with
`ember.deltas`; the base's DMA ops carry `addr_slots`. Loops stay loops: the text grows with the
stored records, never with the unrolled command count.

`kernels_from_lowered(module)` rebuilds every kernel's ChipProgram from a parsed module (the
inverse for kernels), `chip_program_from_lowered(func)` one kernel function's.
"""
from __future__ import annotations

import json
import re
from typing import Any, Iterable

import numpy as np
from torch_mlir import ir
from torch_mlir.dialects import func

from compiler.context import mlir_context
from compiler.dialect import build_op, decode_attr, tensor_type
from compiler.importer import HOST_TARGET_ATTR, host_function_name
from compiler.lowered_dialect import (BOOL_FIELDS, BUFFER, DELTAS_ATTR, ENUM_FIELDS, FLOAT_FIELDS,
                                      FORM_OF_NAME, FORMS, INT_FIELDS, KERNEL_INDEX_ATTR, KERNEL_NAME_ATTR,
                                      LOOP_ATTR, NUM_PES_ATTR, PE_ATTR, RAW_FIELDS, RELOCATABLE_ATTR,
                                      VECTOR_KERNELS_ATTR, CommandForm)
from ops.registry import TensorSpec, op as lookup_op
from simulator.isa import (CMD_DTYPE, ENGINE_OF_OP, INDEXED_SHIFT, NUM_ARGS, ChipProgram, DType, Engine, Indexed,
                          Op, RelocatedProgram, SimdFn, Space, unpack_index)
from simulator.isa.program import LOOP_DTYPE, NUM_STRIDES

_LOCAL = int(Space.LOCAL)


# ----------------------------------------------------------------------------- command <-> fields

def _enum_name(enum: type, value: int) -> str:
    """The lower-case member name of `value`, or the first member's for a value the enum lacks
    (the record's true field then goes into `raw`)."""
    try:
        return enum(value).name.lower()
    except ValueError:
        return next(iter(enum.__members__)).lower()


def _imm(bits: int) -> float:
    return float(np.array([bits], np.int64).view(np.float64)[0])


def _imm_bits(value: float) -> int:
    return int(np.array([value], np.float64).view(np.int64)[0])


def command_fields(rec: dict[str, Any], form: CommandForm) -> dict[str, Any]:
    """The named attributes of one command record (Python values), without sync or raw fields."""
    a = rec["a"]
    out: dict[str, Any] = {name: a[i] for i, name in enumerate(form.slots)}
    indexed = (rec["flags"] >> INDEXED_SHIFT & 3) in (Indexed.SRC, Indexed.DST)
    getters = {
        "engine": lambda: _enum_name(Engine, rec["engine"]),
        "dtype": lambda: _enum_name(DType, rec["dtype"]),
        "out_dtype": lambda: _enum_name(DType, rec["dtype2"]),
        "fn": lambda: _enum_name(SimdFn, rec["fn"]),
        "src_space": lambda: _enum_name(Space, rec["src_space"]),
        "dst_space": lambda: _enum_name(Space, rec["dst_space"]),
        "direction": lambda: _enum_name(ENUM_FIELDS["direction"], rec["peer"]),
        "accumulate": lambda: bool(rec["flags"] & 1),
        "imm": lambda: _imm(a[3]),
        "dst_pe": lambda: rec["peer"],
        "mcast": lambda: _enum_name(ENUM_FIELDS["mcast"], rec["flags"] >> 1 & 3),
        "indexed": lambda: _enum_name(Indexed, rec["flags"] >> INDEXED_SHIFT & 3),
        # an index address, count and step only mean something on an indexed DMA (else in `raw`)
        "index_addr": lambda: unpack_index(a[6])[0] if indexed else -1,
        "index_count": lambda: unpack_index(a[6])[1] if indexed and a[6] >= 0 else -1,
        "index_step": lambda: a[7] if indexed else -1,
    }
    for name in form.fields:
        out[name] = getters[name]()
    for name in form.optional:
        value = getters[name]()
        if value not in (-1, "none"):
            out[name] = value
    return out


_RECORD_FIELD = {"out_dtype": "dtype2", "direction": "peer"}      # named attribute -> record field


def command_record(form: CommandForm, pe: int, fields: dict[str, Any], wait: tuple[int, int] | None,
                   signal: int | None, raw: dict[str, int]) -> dict[str, Any]:
    """The command record that a lowered op's attributes describe (the inverse of
    `command_fields`, with the builder's defaults for what they leave out)."""
    op = form.op
    a = [0] * NUM_ARGS
    for i, name in enumerate(form.slots):
        a[i] = int(fields[name])
    rec = {"a": a, "wait_tok": -1, "wait_cnt": 0, "sig_tok": -1, "peer": -1, "pe": pe, "op": int(op),
           "engine": int(ENGINE_OF_OP.get(op, Engine.DMA)), "dtype": int(DType.FP32), "dtype2": None,
           "fn": 0, "src_space": _LOCAL, "dst_space": _LOCAL, "flags": 0}
    for name, value in fields.items():
        if name in form.slots:
            continue
        if name == "mcast":
            rec["flags"] |= int(ENUM_FIELDS[name][value.upper()]) << 1
        elif name == "indexed":
            rec["flags"] |= int(Indexed[value.upper()]) << INDEXED_SHIFT
            rec["dtype"] = int(DType.INT32)          # the index's type, as the builder writes it
        elif name in ("index_addr", "index_count"):
            addr, count = unpack_index(a[6])
            a[6] = addr | int(value) << 32 if name == "index_count" else int(value) | count << 32
        elif name == "index_step":
            a[7] = int(value)
        elif name in ENUM_FIELDS:
            rec[_RECORD_FIELD.get(name, name)] = int(ENUM_FIELDS[name][value.upper()])
        elif name in BOOL_FIELDS:
            rec["flags"] |= int(bool(value))
        elif name in FLOAT_FIELDS:
            a[3] = _imm_bits(value)
        elif name in INT_FIELDS:
            rec["peer"] = int(value)
    if rec["dtype2"] is None:
        rec["dtype2"] = rec["dtype"]
    if wait is not None:
        rec["wait_tok"], rec["wait_cnt"] = wait
    if signal is not None:
        rec["sig_tok"] = signal
    for name, value in raw.items():
        if name[0] == "a" and name[1:].isdigit():
            a[int(name[1:])] = value
        else:
            rec[name] = value
    return rec


def _raw_fields(rec: dict[str, Any], rebuilt: dict[str, Any]) -> dict[str, int]:
    raw = {f"a{i}": x for i, (x, y) in enumerate(zip(rec["a"], rebuilt["a"])) if x != y}
    raw.update({k: rec[k] for k in RAW_FIELDS[NUM_ARGS:] if rec[k] != rebuilt[k]})
    return raw


_STRIDE_KEYS = {op: list(form.stride_keys) for op, form in FORMS.items()}


# ----------------------------------------------------------------------------- text

def _attr_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, float):
        return f"0x{_imm_bits(value) & (2**64 - 1):016X} : f64"      # exact bits; printed as decimal
    if isinstance(value, str):
        return '"' + "".join(c if c.isprintable() and c not in '"\\' else f"\\{ord(c):02X}" for c in value) + '"'
    raise TypeError(value)


def _vector_kernels_text(program: ChipProgram) -> str:
    """The kernel function's vector-kernel table attribute (VECTOR_KERNELS_ATTR)."""
    entries = []
    for k in program.vector_kernels:
        d = k.to_json()
        spec = json.dumps({key: d[key] for key in ("regions", "trips", "vlen_bytes", "fault")}, sort_keys=True)
        entries.append(f"{{name = {_attr_text(k.name)}, llvm = {_attr_text(k.ir)}, rvv = {_attr_text(k.rvv_asm())}, "
                       f"spec = {_attr_text(spec)}}}")
    return f"{VECTOR_KERNELS_ATTR} = [{', '.join(entries)}]"


def _vector_kernels_of(attr) -> list:
    """The VectorKernels of a kernel function's table attribute."""
    from simulator.isa.vector import VectorKernel
    out = []
    for entry in attr:
        spec = json.loads(entry["spec"].value)
        out.append(VectorKernel.from_json({"name": entry["name"].value, "ir": entry["llvm"].value, **spec}))
    return out


def _records(commands: np.ndarray) -> Iterable[dict[str, Any]]:
    cols = {name: commands[name].tolist() for name in CMD_DTYPE.names}
    for i in range(len(commands)):
        yield {name: cols[name][i] for name in CMD_DTYPE.names}


def _command_text(rec: dict[str, Any], strides: list[int], slots: tuple[int, int] | None) -> str:
    op = Op(rec["op"])
    form = FORMS[op]
    fields = command_fields(rec, form)
    wait = (rec["wait_tok"], rec["wait_cnt"]) if rec["wait_tok"] >= 0 else None
    signal = rec["sig_tok"] if rec["sig_tok"] >= 0 else None
    raw = _raw_fields(rec, command_record(form, rec["pe"], fields, wait, signal, {}))
    parts = [f"{k} = {_attr_text(v)}" for k, v in fields.items()]
    if wait is not None:
        parts.append(f"wait = array<i64: {wait[0]}, {wait[1]}>")
    if signal is not None:
        parts.append(f"signal = {signal}")
    if any(strides):
        keys = _STRIDE_KEYS[op]
        parts.append("per_iter = {" + ", ".join(f"{keys[j]} = {s}" for j, s in enumerate(strides) if s) + "}")
    if slots is not None and slots != (-1, -1):
        parts.append(f"addr_slots = array<i64: {slots[0]}, {slots[1]}>")
    if raw:
        parts.append("raw = {" + ", ".join(f"{k} = {v}" for k, v in raw.items()) + "}")
    return f'"ember.{form.name}"() {{{", ".join(parts)}}} : () -> ()'


def _symbol(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", text)


def kernel_function_text(program: ChipProgram, symbol: str, arg_types: list[str], result_types: list[str],
                         result_buffers: list[str]) -> str:
    """One kernel as `func.func private @symbol(operands) -> results`: an `scf.execute_region
    {ember.pe = N}` per run of one PE's records (array order is kept), an `scf.for` per repeat
    loop, then the result buffers (`ember.buffer` attribute text, one per result)."""
    cmds = program.commands
    n = len(cmds)
    loop_at = {int(f): (int(length), int(c), j) for j, (f, length, c) in enumerate(program.loops.tolist())}
    # a loops array not in record order (not what a builder writes) keeps its order: `ember.loop`
    in_order = bool(np.all(np.diff(program.loops["first"]) > 0))
    counts = sorted({1, *(c for _, c, _ in loop_at.values())})
    strides = program.strides.tolist()
    slots = None if program.addr_slots is None else [tuple(s) for s in program.addr_slots.tolist()]
    attrs = [f'{KERNEL_NAME_ATTR} = "{program.name}"', f"{NUM_PES_ATTR} = {program.num_pes}"]
    if program.addr_slots is not None:
        attrs.append(RELOCATABLE_ATTR)
    if program.vector_kernels:
        attrs.append(_vector_kernels_text(program))
    args = ", ".join(f"%arg{i}: {t}" for i, t in enumerate(arg_types))
    lines = [f"func.func private @{symbol}({args}) -> ({', '.join(result_types)}) "
             f"attributes {{{', '.join(attrs)}}} {{"]
    lines += [f"  %c{c} = arith.constant {c} : index" for c in [0, *counts]]
    pes = cmds["pe"].tolist()
    loop_end, iv = -1, 0
    for i, rec in enumerate(_records(cmds)):
        if i == 0 or pes[i] != pes[i - 1]:
            if i:
                if loop_end >= i:
                    raise ValueError(f"{program.name}: a repeat loop spans two PEs' commands")
                lines += ["    scf.yield", f"  }} {{{PE_ATTR} = {pes[i - 1]}}}"]
            lines.append("  scf.execute_region {")
        if i in loop_at:
            length, count, position = loop_at[i]
            loop_end = i + length - 1
            lines.append(f"    scf.for %i{iv} = %c0 to %c{count} step %c1 {{")
            iv += 1
        indent = "      " if i <= loop_end else "    "
        lines.append(indent + _command_text(rec, strides[i], None if slots is None else slots[i]))
        if i == loop_end:
            lines.append("    }" if in_order else f"    }} {{{LOOP_ATTR} = {position}}}")
    if n:
        lines += ["    scf.yield", f"  }} {{{PE_ATTR} = {pes[n - 1]}}}"]
    for r, (buffer, t) in enumerate(zip(result_buffers, result_types)):
        lines.append(f'  %r{r} = "{BUFFER}"() {{{buffer}}} : () -> {t}')
    lines += [f"  return {', '.join(f'%r{r}' for r in range(len(result_types)))} : {', '.join(result_types)}", "}"]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- module

def _spec(program, tid: int) -> TensorSpec:
    t = program.tensors[tid]
    return TensorSpec(tuple(t["shape"]), t["dtype"])


def _buffer_attrs(program, tid: int) -> dict[str, Any]:
    t = program.tensors[tid]
    attrs: dict[str, Any] = {"id": tid}
    if "space" in t:
        attrs.update(space=t["space"], addr=int(t["addr"]))
    return attrs


def _kernel_reads(step: dict[str, Any]) -> list[int]:
    """The tensors a kernel step's commands read: its operands, or the values a fused kernel
    reads in their place (`reads`)."""
    return [t for t in step.get("reads", step["operands"]) if t is not None]


def _kernel_functions(program) -> tuple[dict[int, str], str]:
    """The kernel functions' text, and the function each kernel step calls, by step index.

    A relocated kernel calls its base's function; one function per base and signature (the
    relocation key fixes operand shapes and dtypes, so a base's calls share one signature)."""
    type_text: dict[int, str] = {}

    def ttext(tid: int) -> str:
        if tid not in type_text:
            type_text[tid] = str(tensor_type(_spec(program, tid)))
        return type_text[tid]

    callee: dict[int, str] = {}
    functions: dict[tuple, str] = {}
    texts: list[str] = []
    for s, step in enumerate(program.steps):
        if step["kind"] != "kernel" or step.get("kernel") is None:
            continue
        k = program.kernels[step["kernel"]]
        base = k.base if isinstance(k, RelocatedProgram) else k
        args = [ttext(t) for t in _kernel_reads(step)]
        results = [ttext(t) for t in step["results"]]
        key = (id(base), tuple(args), tuple(results))
        if key not in functions:
            symbol = _symbol(f"kernel_{step['kernel']}_{step['op']}" + ("_base" if base is not k else ""))
            buffers = [", ".join(f"{n} = {_attr_text(v)}" for n, v in _buffer_attrs(program, t).items())
                       for t in step["results"]]
            functions[key] = symbol
            texts.append(kernel_function_text(base, symbol, args, results, buffers))
        callee[s] = functions[key]
    return callee, "\n".join(texts)


def _build_main(program, callee: dict[int, str]) -> dict[int, str]:
    """`@main` at the current insertion point: the Program's steps in order on tensor values.
    Returns the host functions it calls (index -> aten target)."""
    in_types = [tensor_type(_spec(program, t)) for t in program.inputs]
    out_types = [tensor_type(_spec(program, t)) for t in program.outputs]
    main = func.FuncOp("main", (in_types, out_types))
    entry = main.add_entry_block()
    values: dict[int, ir.Value] = dict(zip(program.inputs, entry.arguments))
    host_targets: dict[int, str] = {}
    i64 = ir.IntegerType.get_signless(64)
    with ir.InsertionPoint(entry):
        def value(tid: int) -> ir.Value:
            if tid not in values:        # a weight or literal: stored, produced by no step
                attrs = {k: ir.StringAttr.get(v) if isinstance(v, str) else ir.IntegerAttr.get(i64, v)
                         for k, v in _buffer_attrs(program, tid).items()}
                values[tid] = ir.Operation.create(BUFFER, results=[tensor_type(_spec(program, tid))],
                                                  attributes=attrs).result
            return values[tid]

        for s, step in enumerate(program.steps):
            result_types = [tensor_type(_spec(program, t)) for t in step["results"]]
            operands = [None if t is None else value(t) for t in step["operands"]]
            present = [v for v in operands if v is not None]
            if step["kind"] == "kernel" and step.get("kernel") is not None:
                k = program.kernels[step["kernel"]]
                operation = func.CallOp(result_types, callee[s], [value(t) for t in _kernel_reads(step)]).operation
                operation.attributes[KERNEL_INDEX_ATTR] = ir.IntegerAttr.get(i64, step["kernel"])
                if isinstance(k, RelocatedProgram):
                    operation.attributes[DELTAS_ATTR] = ir.DenseI64ArrayAttr.get([int(d) for d in k.deltas])
                    operation.attributes[KERNEL_NAME_ATTR] = ir.StringAttr.get(k.name)
            elif step.get("host_call") is not None:
                host_targets[step["host_call"]] = step["op"].removeprefix("host:")
                operation = func.CallOp(result_types, host_function_name(step["host_call"]), present).operation
            else:
                opdef = lookup_op(step["op"])
                operation = build_op(opdef, operands, step["attrs"], [_spec(program, t) for t in step["results"]])
                # a kernel step without a kernel is one the Program elides (its result is written
                # by a later kernel); host and view steps run on the host
                target = step["kind"] if step["kind"] != "kernel" else "elided"
                operation.attributes["ember.target"] = ir.StringAttr.get(target)
            for tid, res in zip(step["results"], operation.results):
                values[tid] = res
        func.ReturnOp([value(t) for t in program.outputs])
    return host_targets


def lowered_text(program) -> str:
    """The lowered IR of a Program as MLIR text (as MLIR prints it)."""
    return lowered_module(program).operation.get_asm(assume_verified=True)


def lowered_module(program, context: ir.Context | None = None) -> ir.Module:
    """The lowered IR of a Program, parsed and verified in `context` (default: a new
    `mlir_context()`): host function declarations, kernel functions, `@main`."""
    context = mlir_context() if context is None else context
    with context, ir.Location.unknown():
        callee, kernels = _kernel_functions(program)
        # @main and the host declarations are built with the bindings in a scratch module, then
        # everything is parsed (and verified) once
        scratch = ir.Module.create()
        with ir.InsertionPoint(scratch.body):
            host_targets = _build_main(program, callee)
            for index in sorted(host_targets):
                step = next(s for s in program.steps if s.get("host_call") == index)
                types = ([tensor_type(_spec(program, t)) for t in step["operands"] if t is not None],
                         [tensor_type(_spec(program, t)) for t in step["results"]])
                decl = func.FuncOp(host_function_name(index), types, visibility="private")
                decl.attributes[HOST_TARGET_ATTR] = ir.StringAttr.get(host_targets[index])
        ops = list(scratch.body.operations)
        host = "\n".join(op.operation.get_asm(assume_verified=True) for op in ops[1:])
        main = ops[0].operation.get_asm(assume_verified=True)
        return ir.Module.parse("module {\n" + "\n".join((host, kernels, main)) + "\n}")


# ----------------------------------------------------------------------------- inverse

def _command_from_op(operation, pe: int) -> tuple[dict[str, Any], list[int], tuple[int, int]]:
    form = FORM_OF_NAME.get(operation.name)
    if form is None:
        raise ValueError(f"'{operation.name}' is not a lowered command op")
    attrs = {name: decode_attr(attr) for name, attr in operation.attributes.items()}
    wait = attrs.pop("wait", None)
    signal = attrs.pop("signal", None)
    per_iter = attrs.pop("per_iter", {})
    slots = attrs.pop("addr_slots", (-1, -1))
    raw = attrs.pop("raw", {})
    rec = command_record(form, pe, attrs, wait, signal, raw)
    keys = _STRIDE_KEYS[form.op]
    strides = [per_iter.get(k, 0) for k in keys]
    return rec, strides, slots


def _loop_count(for_op) -> int:
    lower, upper, step = (v.owner.attributes["value"].value for v in list(for_op.operands)[:3])
    if lower != 0 or step != 1:
        raise ValueError("a repeat loop runs from 0 with step 1")
    return int(upper)


def chip_program_from_lowered(kernel: Any) -> ChipProgram:
    """Rebuild the ChipProgram that a kernel `func.func` of the lowered IR holds."""
    operation = kernel.operation if hasattr(kernel, "operation") else kernel
    attrs = operation.attributes
    recs: list[tuple] = []
    strides: list[list[int]] = []
    slots: list[tuple[int, int]] = []
    loops: list[tuple[int, tuple[int, int, int]]] = []      # (position in the array, loop)

    def add(op, pe: int) -> None:
        rec, st, sl = _command_from_op(op, pe)
        recs.append((rec["a"], rec["wait_tok"], rec["wait_cnt"], rec["sig_tok"], rec["peer"], rec["pe"],
                     rec["op"], rec["engine"], rec["dtype"], rec["dtype2"], rec["fn"], rec["src_space"],
                     rec["dst_space"], rec["flags"]))
        strides.append(st)
        slots.append(sl)

    for region_op in operation.regions[0].blocks[0].operations:
        name = region_op.operation.name
        if name in ("arith.constant", "func.return", BUFFER):
            continue
        if name != "scf.execute_region":
            raise ValueError(f"unexpected '{name}' in kernel function")
        pe = int(region_op.attributes[PE_ATTR].value)
        for op in region_op.regions[0].blocks[0].operations:
            op_name = op.operation.name
            if op_name == "scf.yield":
                continue
            if op_name == "scf.for":
                first = len(recs)
                for inner in op.regions[0].blocks[0].operations:
                    if inner.operation.name != "scf.yield":
                        add(inner.operation, pe)
                position = op.attributes[LOOP_ATTR].value if LOOP_ATTR in op.attributes else len(loops)
                loops.append((position, (first, len(recs) - first, _loop_count(op))))
            else:
                add(op.operation, pe)
    commands = np.array(recs, dtype=CMD_DTYPE) if recs else np.zeros(0, CMD_DTYPE)
    program = ChipProgram(commands, int(attrs[NUM_PES_ATTR].value), attrs[KERNEL_NAME_ATTR].value,
                          np.array([loop for _, loop in sorted(loops)], LOOP_DTYPE),
                          np.array(strides, np.int64).reshape(len(recs), NUM_STRIDES),
                          _vector_kernels_of(attrs[VECTOR_KERNELS_ATTR]) if VECTOR_KERNELS_ATTR in attrs else ())
    if RELOCATABLE_ATTR in attrs:
        program.addr_slots = np.array(slots, np.int16).reshape(len(recs), 2)
    return program


def kernels_from_lowered(module: ir.Module) -> list[ChipProgram]:
    """Every kernel of the Program, by index, rebuilt from its lowered module: each
    `func.call {ember.kernel = index}` of `@main` gives that kernel (relocated by `ember.deltas`
    when the call has them)."""
    functions: dict[str, Any] = {}
    main = None
    for operation in module.body.operations:
        if operation.operation.name != "func.func":
            continue
        sym = operation.attributes["sym_name"].value
        if NUM_PES_ATTR in operation.attributes:
            functions[sym] = operation
        elif sym == "main":
            main = operation
    if main is None:
        raise ValueError("the lowered module has no @main")
    built: dict[str, ChipProgram] = {}
    kernels: dict[int, ChipProgram] = {}
    for operation in main.regions[0].blocks[0].operations:
        attrs = operation.attributes
        if operation.operation.name != "func.call" or KERNEL_INDEX_ATTR not in attrs:
            continue
        sym = attrs["callee"].value
        if sym not in functions:
            raise ValueError(f"kernel call of @{sym}, which is not a kernel function")
        if sym not in built:
            built[sym] = chip_program_from_lowered(functions[sym])
        base = built[sym]
        index = int(attrs[KERNEL_INDEX_ATTR].value)
        if DELTAS_ATTR in attrs:
            kernels[index] = RelocatedProgram(base, list(attrs[DELTAS_ATTR]), name=attrs[KERNEL_NAME_ATTR].value)
        else:
            kernels[index] = base
    if sorted(kernels) != list(range(len(kernels))):
        raise ValueError("the kernel calls of @main do not number the kernels 0, 1, ...")
    return [kernels[i] for i in range(len(kernels))]
