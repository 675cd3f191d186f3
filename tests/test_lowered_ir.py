"""The lowered IR (`cm.ir("program")`): every kernel's per-PE command schedule as lowered `ember`
ops that print, re-parse, verify and rebuild the very same command arrays."""
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch_mlir import ir

import ember
from compiler import lowered
from compiler.lowered import chip_program_from_lowered, kernels_from_lowered, lowered_text
from ops.kernels.vector_scan import scan_kernel
from simulator.isa import ChipProgram, Engine, Op, ProgramBuilder, RelocatedProgram
from simulator.isa.artifact import Program
from simulator.simulate import simulate

COMMAND_LINE = re.compile(r'^\s*"ember\.(\w+)"\(\) \{')


def _stored(program) -> list:
    """The kernels whose commands the IR spells out (relocated ones are their base's)."""
    out, seen = [], set()
    for k in program.kernels:
        base = k.base if isinstance(k, RelocatedProgram) else k
        if id(base) not in seen:
            seen.add(id(base))
            out.append(base)
    return out


def _assert_same_kernels(original: list, rebuilt: list) -> None:
    assert len(rebuilt) == len(original)
    for a, b in zip(original, rebuilt):
        assert type(a) is type(b), a.name
        assert (a.name, a.num_pes) == (b.name, b.num_pes)
        assert np.array_equal(a.commands, b.commands), a.name
        assert np.array_equal(a.loops, b.loops), a.name
        assert np.array_equal(a.strides, b.strides), a.name
        assert [k.to_json() for k in a.vector_kernels] == [k.to_json() for k in b.vector_kernels], a.name
        if isinstance(a, RelocatedProgram):
            assert np.array_equal(a.deltas, b.deltas)
            assert np.array_equal(a.base.addr_slots, b.base.addr_slots)
        else:
            assert (a.addr_slots is None) == (b.addr_slots is None)
            if a.addr_slots is not None:
                assert np.array_equal(a.addr_slots, b.addr_slots)


def _round_trip(program) -> tuple[str, list]:
    """Program -> text -> a fresh context: parse, verify, print the same text, rebuild kernels."""
    text = lowered_text(program)
    with ember.mlir_context():
        module = ir.Module.parse(text)
        assert module.operation.verify()
        assert str(module) == text
        rebuilt = kernels_from_lowered(module)
    _assert_same_kernels(program.kernels, rebuilt)
    # loops stay loops: one op per stored record, one scf.for per repeat loop
    stored = _stored(program)
    assert sum(1 for line in text.splitlines() if COMMAND_LINE.match(line)) == sum(len(k) for k in stored)
    assert text.count("scf.for") == sum(len(k.loops) for k in stored)
    return text, rebuilt


@pytest.fixture(scope="module")
def mlp():
    torch.manual_seed(0)
    layers = [torch.nn.Linear(64, 64) for _ in range(3)]
    model = torch.nn.Sequential(layers[0], torch.nn.ReLU(), layers[1], torch.nn.ReLU(), layers[2]).eval()
    return ember.compile(model, (torch.randn(32, 64),), chip="tiny", dtype="fp32", to="program")


@pytest.fixture(scope="module")
def multimodal():
    model, inputs = ember.load_model("models:multimodal-tiny")
    return ember.compile(model, inputs, chip="tiny", dtype="fp32", to="program")


def test_mlp_round_trips_and_simulates_alike(mlp):
    text, rebuilt = _round_trip(mlp.program)
    assert "func.func @main" in text and "ember.dpe_matmul" in text and "scf.for" in text
    assert text.count("call @kernel_") == len(mlp.program.kernels)
    stored = sum(len(k) for k in _stored(mlp.program))
    assert stored < sum(k.num_commands for k in _stored(mlp.program))     # it has loops to keep
    for original, again in zip(mlp.program.kernels, rebuilt):
        assert simulate(again, "tiny", timing_only=True).cycles == simulate(original, "tiny", timing_only=True).cycles


def test_vector_kernels_round_trip_with_their_assembly():
    # each kernel's table of vector-core modules is an attribute of its function: the LLVM text
    # the simulator builds from, and the RVV assembly it times
    model = torch.nn.Module()
    model.forward = lambda x: (x.cumsum(-1), x.argmax(-1))
    x = torch.randn(4, 64)
    cm = ember.compile(model, (x,), chip="tiny", dtype="fp32", to="program")
    text, rebuilt = _round_trip(cm.program)
    assert text.count("ember.vector_kernels = [") == 2 and "vsetvli" in text and "define i64 @" in text
    for original, again in zip(cm.program.kernels, rebuilt):
        assert simulate(again, "tiny", timing_only=True).cycles == simulate(original, "tiny", timing_only=True).cycles


def test_multimodal_tiny_round_trips(multimodal, monkeypatch):
    built = []
    real = lowered.lowered_text
    monkeypatch.setattr(lowered, "lowered_text", lambda program: built.append(1) or real(program))
    program = multimodal.program
    assert any(isinstance(k, RelocatedProgram) for k in program.kernels)
    assert any(len(k.loops) for k in program.kernels)
    text = multimodal.ir("program")             # built on first request, then kept
    assert multimodal.ir("program") is text and len(built) == 1
    assert text != multimodal.ir("graph") and "ember.deltas" in text and "ember.relocatable" in text
    with ember.mlir_context():
        module = ir.Module.parse(text)
        rebuilt = kernels_from_lowered(module)
    _assert_same_kernels(program.kernels, rebuilt)
    # the whole Program reads in order: one kernel call or host/view op per step
    main = text[text.index("func.func @main"):]
    assert main.count("ember.kernel = ") == sum(s["kind"] == "kernel" and s.get("kernel") is not None
                                                for s in program.steps)
    assert main.count('ember.target = "view"') == sum(s["kind"] == "view" for s in program.steps)
    cycles = [simulate(k, "tiny", timing_only=True).cycles for k in program.kernels[:12]]
    assert cycles == [simulate(k, "tiny", timing_only=True).cycles for k in rebuilt[:12]]


def _every_opcode_program() -> Program:
    """A hand-written kernel with every opcode, loops with strides on operands and wait counts,
    PEs interleaved in the array, and records the builder would not write (fields in `raw`)."""
    b = ProgramBuilder("tiny", name="every-op")
    p0, p1 = b.pe(0), b.pe(1)
    t = b.token()
    p0.dma("dram", 0x100, "local", 0, nbytes=256, signal=t)
    p0.dma("sram", 0x40, "local", 0x200, rows=4, row_bytes=32, src_stride=64, dst_pe=1, mcast="col")
    p0.dpe_matmul(0, 0x100, 0x200, 4, 8, 16, dtype="bf16", accumulate=True, wait=(t, 1))
    p0.re_acc(0x300, 0x400, 64, dtype="int32")
    p0.re_send("e", 0x300, 0x500, 64, accumulate=False)
    with p0.repeat(3) as loop:
        p0.simd_unary("exp", loop.step(0, 128), loop.step(0x1000, 128), 32, dtype="bf16", out_dtype="fp32",
                      wait=(t, loop.step(1, 1)))
        p0.simd_scalar("mul", 0, 0x80, 32, 0.1, signal=t)
        p0.simd_scalar("add", 0, 0x80, 32, 1 / 3)
        p0.dma_indexed("src", "dram", 0x400, "local", loop.step(0x800, 64), index_addr=loop.step(0x40, 4),
                       count=12, step=256, nbytes=64, wait=(t, 1))
    p0.dma_indexed("dst", "local", 0x800, "sram", 0x100, index_addr=0x44, count=3, step=128, rows=2,
                   row_bytes=32, dst_stride=384)
    p0.simd_binary("max", 0, 0x40, 0x80, 16)
    p0.simd_binary("select", 0, 0x40, 0x80, 16, dtype="int32")
    p0.simd_row_reduce("min", 0, 0x40, 4, 8, out_dtype="bf16")
    p1.simd_row_bcast("sub", 0, 0x40, 0x80, 4, 8)
    p1.simd_mx_quant(0, 0x100, 2, 64, dtype="bf16", out_dtype="mxfp4")
    p0.dpe_matmul(0, 0x100, 0x200, 4, 64, 8, dtype="mxfp8")
    with p1.repeat(2) as loop:
        p1.mlu_transpose(loop.step(0, 64), 0x100, 4, 4, dtype="int8")
    p1.mlu_copy2d(0, 0x100, 4, 16, src_stride=32)
    p1.mlu_concat(0, 0x40, 0x80, 4, 16, 16)
    p1.nop(Engine.REDUCE, wait=(t, 2))
    p1.vec_kernel(scan_kernel("int32", 8, "sum", 64), (0x40, 0x80), 2, param=7)
    prog = b.build()
    cmds = prog.commands
    odd = np.flatnonzero(cmds["op"] == int(Op.MLU_CONCAT))[0]
    cmds["flags"][odd], cmds["peer"][odd], cmds["a"][odd, 7] = 4, 3, -9
    scalar = np.flatnonzero(cmds["op"] == int(Op.SIMD_SCALAR))[0]
    cmds["wait_cnt"][scalar] = 5                               # a wait count with no wait token
    prog.strides[scalar, 3] = 1                                # a stride on the immediate's bits
    # PE 1's first three records, then PE 0's, then the rest of PE 1's: array order is program
    # order within a PE, and PEs may interleave
    n0 = int((cmds["pe"] == 0).sum())
    order = np.r_[n0:n0 + 3, 0:n0, n0 + 3:len(cmds)]
    new_index = np.empty(len(cmds), np.int64)
    new_index[order] = np.arange(len(cmds))
    loops = prog.loops.copy()
    loops["first"] = new_index[loops["first"]]
    kernel = ChipProgram(cmds[order], prog.num_pes, prog.name, loops, prog.strides[order])
    kernel.addr_slots = np.full((len(kernel), 2), -1, np.int16)
    kernel.addr_slots[0] = (0, 1)
    moved = RelocatedProgram(kernel, [64, 128], name="every-op-moved")
    tensors = {0: {"shape": [4, 4], "dtype": "f32", "space": "dram", "addr": 0},
               1: {"shape": [4, 4], "dtype": "f32", "space": "dram", "addr": 64},
               2: {"shape": [4, 4], "dtype": "f32", "space": "dram", "addr": 128}}
    steps = [{"kind": "kernel", "kernel": 0, "op": "unary", "operands": [0], "results": [1]},
             {"kind": "kernel", "kernel": 1, "op": "unary", "operands": [1], "results": [2]}]
    return Program(chip={}, dtype="fp32", tensors=tensors, inputs=[0], outputs=[2], steps=steps,
                   kernels=[kernel, moved])


def test_every_opcode_and_field_round_trips():
    program = _every_opcode_program()
    kernel = program.kernels[0]
    assert len(kernel.loops) == 2 and (kernel.commands["pe"][:3] == 1).all()
    text, _ = _round_trip(program)
    for op in Op:
        assert f'"ember.{op.name.lower()}"' in text
    assert "raw = {" in text and "per_iter = {" in text and "addr_slots = array<i64: 0, 1>" in text
    assert 'indexed = "src"' in text and 'indexed = "dst"' in text and "index_addr = 4 : i64" in text
    assert text.count("ember.pe = 1") == 2                     # PE 1's commands come in two runs
    with ember.mlir_context():
        module = ir.Module.parse(text)
        function = next(op for op in module.body.operations if op.attributes["sym_name"].value == "kernel_0_unary")
        again = chip_program_from_lowered(function)
    assert np.array_equal(again.commands, kernel.commands) and np.array_equal(again.strides, kernel.strides)


@pytest.mark.parametrize("edit, message", [
    (('"ember.nop"() {engine = "', '"ember.no_such_op"() {engine = "'), "no_such_op"),
    (('{engine = "mlu"', '{engine = "gpu"'), "ember.nop: 'engine'"),
    (("rows = 16 : i64, ", ""), "rows"),
    (('"ember.dpe_matmul"() {', '"ember.dpe_matmul"() {bogus = 1 : i64, '), "unknown attribute 'bogus'"),
    (("per_iter = {", "per_iter = {c_addr = 1 : i64, "), "per_iter"),
    (('dtype = "fp32", k = ', 'dtype = 3 : i64, k = '), "dtype"),
    (('"ember.buffer"() {addr', '"ember.buffer"() {bogus = 1 : i64, addr'), "ember.buffer: unexpected attribute"),
])
def test_malformed_lowered_ops_are_rejected(mlp, edit, message):
    text = lowered_text(mlp.program)
    broken = text.replace(*edit, 1)
    assert broken != text
    with ember.mlir_context(), pytest.raises(ir.MLIRError, match=message):
        ir.Module.parse(broken)


def test_upstream_mlir_verifies_lowered_ir(tmp_path, mlp):
    opt = shutil.which("torch-mlir-opt", path=os.path.dirname(sys.executable))
    if opt is None:
        pytest.skip("torch-mlir-opt is not installed")
    irdl, mlir = tmp_path / "ember.irdl.mlir", tmp_path / "program.mlir"
    subprocess.run([os.path.join(os.path.dirname(sys.executable), "ember"), "dialect", "--irdl", str(irdl)], check=True)
    text = mlp.ir("program")
    mlir.write_text(text)
    ok = subprocess.run([opt, f"--irdl-file={irdl}", str(mlir)], capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    assert "ember.dma" in ok.stdout and "scf.for" in ok.stdout
    for bad in (text.replace('"ember.nop"', '"ember.no_such_op"', 1), text.replace("rows = 16 : i64, ", "", 1)):
        assert bad != text
        mlir.write_text(bad)
        assert subprocess.run([opt, f"--irdl-file={irdl}", str(mlir)], capture_output=True, text=True, check=False).returncode != 0
