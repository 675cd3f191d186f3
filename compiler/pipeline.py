"""The compile pipeline: named phases in order, each one's IR kept for `cm.ir(phase)`.

    graph    capture (torch.export + decompositions) and import: graph-level `ember` ops
    tiled    partition (accelerator / host), rotary embeddings as one op (unless `fuse` is off;
             after int8 calibration on the example inputs), dtype lowering (storage dtypes; for
             int8, quantization), fusion of elementwise epilogues into contractions (unless `fuse` is
             off), memory plan, tile and map each kernel
             (cost model); the IR is the graph with each op's target, dtypes, quantization and
             plan attached
    program  every kernel's per-PE commands, serialized into a Program

`compile_model(..., to=PHASE)` stops after PHASE.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch_mlir import ir

from compiler.capture import capture, check_inputs
from compiler.errors import EmberError
from compiler.codegen import build_program
from compiler.graph_ops import graph_ops
from compiler.importer import ImportResult, import_program
from compiler.passes.calibrate import Calibrate
from compiler.passes.dtype import ACTIVATION_SCALES, DtypeLowering
from compiler.passes.fusion import FuseEpilogues
from compiler.passes.broadcast_operands import MaterializeBroadcasts
from compiler.passes.gqa_heads import FoldKVHeadExpansion
from compiler.passes.attention_masks import FoldAttentionMasks
from compiler.passes.in_place import InPlaceState
from compiler.passes.memory_plan import MemoryPlan
from compiler.passes.partition import Partition
from compiler.passes.rotary import FuseRotary
from compiler.passes.tile import TileAndMap
from ops.registry import to_numpy

PHASES = ("graph", "tiled", "program")
DTYPES = ("fp32", "bf16", "int8")


@dataclass(frozen=True)
class CompileOptions:
    """Everything that changes what a compile produces; its `key()` keys the compile cache."""
    chip: str = "mtia2i"          # the chip's name, or its content fingerprint for a ChipSpec
    dtype: str = "bf16"
    to: str = "program"
    allow_unsupported: bool = False
    print_ir_after_all: bool = False
    # fold elementwise epilogues into contractions; EMBER_FUSE=0 sets the default off
    fuse: bool = field(default_factory=lambda: os.environ.get("EMBER_FUSE", "1") != "0")
    # int8 only: how GEMM activations are scaled, "per-row" (at run time) or "per-tensor"
    # (calibrated on the example inputs); see compiler/passes/dtype.py
    int8_activations: str = "per-row"
    # digest of the resident layout (weights' and device state's places) taken from another
    # Program, so that both run in one session on one copy of them (see `resident_layout`)
    share: str = ""

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.to not in PHASES:
            raise ValueError(f"to must be one of {', '.join(PHASES)}, got {self.to!r}")
        if self.int8_activations not in ACTIVATION_SCALES:
            raise ValueError(f"int8_activations must be one of {', '.join(ACTIVATION_SCALES)}, "
                             f"got {self.int8_activations!r}")

    def key(self) -> str:
        fields = dataclasses.asdict(self)
        fields.pop("print_ir_after_all")
        return hashlib.sha256(repr(sorted(fields.items())).encode()).hexdigest()[:16]


@dataclass
class CompileResult:
    """What the compiler hands the runtime: the graph, and the IR after each phase reached."""
    options: CompileOptions
    graph: ImportResult
    out_spec: Any                       # pytree spec of the model's outputs
    ir: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    program: Any = None                 # simulator.isa.artifact.Program, after phase "program"


def _phase_graph(model: torch.nn.Module, example_inputs: tuple, options: CompileOptions,
                 result: dict[str, Any]) -> None:
    t0 = time.perf_counter()
    ep = capture(model, example_inputs)
    t1 = time.perf_counter()
    graph = import_program(ep, allow_unsupported=options.allow_unsupported)
    t2 = time.perf_counter()
    result.update(graph=graph, out_spec=ep.call_spec.out_spec,
                  timings={"capture": t1 - t0, "import": t2 - t1})


def _constants(graph, graph_result) -> dict[int, Any]:
    """Value id -> numpy array of every weight that has values, and every literal."""
    constants = {}
    for v, name in graph.weights.items():
        tensor = graph_result.weights.get(name)
        if tensor is not None and not tensor.is_meta:
            constants[v] = to_numpy(tensor)
    constants.update(graph.literals)
    return constants


def _calibration_amax(graph, graph_result, constants, example_inputs) -> dict[int, float]:
    """Largest magnitudes of the GEMM inputs that int8 would quantize, over the example inputs
    (empty when the model or its inputs carry no numbers)."""
    wanted = {op.operands[0] for op in graph.ops
              if op.target == "accelerator" and DtypeLowering._weight_axis(graph, op) is not None}
    if not wanted or any(x.is_meta for x in example_inputs) or any(v not in constants for v in graph.weights):
        return {}
    calib = Calibrate().run(graph, constants, [to_numpy(x) for x in example_inputs], graph_result.host_calls,
                            values=wanted)
    return calib.amax


def _annotate(graph) -> None:
    """Attach each op's target, dtypes, quantization and plan to its MLIR operation."""
    for op in graph.ops:
        if op.operation is None:
            continue
        attrs = op.operation.attributes
        attrs["ember.target"] = ir.StringAttr.get(op.target)
        if op.target == "accelerator":
            ins = ", ".join("none" if v is None else graph.storage[v] for v in op.operands)
            attrs["ember.dtypes"] = ir.StringAttr.get(f"({ins}) -> {graph.storage[op.results[0]]}")
        if op.quant is not None:
            q = op.quant
            fields = {"dtype": ir.StringAttr.get(q.dtype), "activations": ir.StringAttr.get(q.activations),
                      "weight_scale": ir.DenseElementsAttr.get(q.weight_scale.astype("float32"))}
            if q.act_scale is not None:
                fields.update(act_amax=ir.FloatAttr.get_f32(q.act_amax), act_scale=ir.FloatAttr.get_f32(q.act_scale))
            attrs["ember.quant"] = ir.DictAttr.get(fields)
        if op.plan is not None:
            attrs["ember.plan"] = ir.StringAttr.get(repr(op.plan))
        if op.attrs.get("epilogue"):
            attrs["ember.epilogue"] = ir.StringAttr.get(repr(op.attrs["epilogue"]))
        if op.opdef is None and op.target == "accelerator":     # a pass's op in this one's place
            attrs["ember.kernel"] = ir.StringAttr.get(op.name)


def _phase_tiled(model: torch.nn.Module, example_inputs: tuple, options: CompileOptions,
                 result: dict[str, Any]) -> None:
    t0 = time.perf_counter()
    chip, graph_result = result["chip"], result["graph"]
    with graph_result.context:
        FoldAttentionMasks().run(graph_result.module, graph_result.weights)
        MaterializeBroadcasts().run(graph_result.module)
        FoldKVHeadExpansion().run(graph_result.module)
        graph = graph_ops(graph_result.module)
        Partition().run(graph, chip, options.dtype)
        constants = amax = None
        if options.dtype == "int8":
            constants = _constants(graph, graph_result)
            if options.int8_activations == "per-tensor":
                amax = _calibration_amax(graph, graph_result, constants, example_inputs)
        if options.fuse:        # (after calibration, which runs the graph's own ops)
            FuseRotary().run(graph)
        DtypeLowering().run(graph, options.dtype, constants, amax, options.int8_activations)
        if options.fuse:
            FuseEpilogues().run(graph)
        InPlaceState().run(graph)
        placements = MemoryPlan().run(graph, chip, pinned=_pinned(graph, graph_result, result.get("resident")))
        TileAndMap().run(graph, placements, chip)
        _annotate(graph)
    result.update(ops=graph, placements=placements)
    result["timings"]["tile"] = time.perf_counter() - t0


#: Prefixes of the weight-table names the compiler gives the constants it makes.
INTERNAL_WEIGHTS = ("_folded.", "_int8._folded.")


def resident_layout(program: Any, input_names: list[str]) -> dict[str, dict[str, Any]]:
    """Where a Program keeps what lives in device memory between runs: its weights (by weight
    name) and its device state (by input name), as `{"weight:<name>" | "state:<input>":
    {"space", "addr", "shape", "isa_dtype"}}`. A compile given this layout (`share`) places the
    same weights and state at the same places, so that both Programs serve from one copy."""
    fields = ("space", "addr", "shape", "isa_dtype")
    layout = {}
    for entry in program.tensors.values():
        if "space" in entry and "weight" in entry and not entry["weight"].startswith(INTERNAL_WEIGHTS):
            layout[f"weight:{entry['weight']}"] = {k: entry[k] for k in fields}
    for i in program.mutated_inputs:
        entry = program.tensors[program.inputs[i]]
        if "space" in entry:
            layout[f"state:{input_names[i]}"] = {k: entry[k] for k in fields}
    return layout


def layout_digest(layout: dict[str, Any] | None) -> str:
    if not layout:
        return ""
    return hashlib.sha256(repr(sorted((k, sorted(v.items())) for k, v in layout.items())).encode()).hexdigest()[:16]


def _pinned(graph, graph_result, layout: dict[str, Any] | None) -> dict[int, Any]:
    """This graph's values that `layout` places (weights by name, state by input name); a value
    of another shape or storage type than the layout's is refused, naming it."""
    from ops.kernel import Placement
    if not layout:
        return {}
    # the model's own weights, by name: not constants the compiler made (folded subgraphs and
    # int8 copies of them are named after graph nodes, which differ between graphs)
    names = {v: f"weight:{n}" for v, n in graph.weights.items() if not n.startswith(INTERNAL_WEIGHTS)}
    names.update({graph.inputs[i]: f"state:{n}" for i, n in enumerate(graph_result.input_names)
                  if graph.inputs[i] in graph.mutated})
    pinned = {}
    for v, key in names.items():
        where = layout.get(key)
        if where is None or v not in graph.storage:
            continue
        here = (tuple(graph.specs[v].shape), graph.storage[v])
        there = (tuple(where["shape"]), where["isa_dtype"])
        if here != there:
            raise EmberError(f"cannot share device memory with the other Program: {key.replace(':', ' ')} is "
                             f"{there[1]} {there[0]} there and {here[1]} {here[0]} here")
        pinned[v] = Placement(where["space"], int(where["addr"]), here[0], here[1])
    return pinned


def _phase_program(model: torch.nn.Module, example_inputs: tuple, options: CompileOptions,
                   result: dict[str, Any]) -> None:
    t0 = time.perf_counter()
    graph, graph_result = result["ops"], result["graph"]
    # the constants some op reads (an int8 GEMM reads its int8 copy of a weight, not the weight)
    read = {v for op in graph.ops for v in op.operands if v is not None} | set(graph.outputs)
    constants = {v: a for v, a in _constants(graph, graph_result).items() if v in read}
    result["program"] = build_program(graph, result["placements"], result["chip"], options.dtype, constants,
                                      graph_result.host_calls)
    result["timings"]["codegen"] = time.perf_counter() - t0


PIPELINE: tuple[tuple[str, Callable[..., None]], ...] = (
    ("graph", _phase_graph),
    ("tiled", _phase_tiled),
    ("program", _phase_program),
)


def compile_model(model: torch.nn.Module, example_inputs: Any, options: CompileOptions, chip: Any,
                  cache: Any = None, resident: dict[str, Any] | None = None) -> CompileResult:
    """Run the pipeline's phases up to `options.to` for `chip` (a ChipSpec).

    `cache` (see `runtime.cache.CompileCache`) is asked for a Program once the graph phase is done,
    keyed by the graph, the options and the chip; on a miss the finished Program is offered to it.
    `resident` (`resident_layout` of another Program; `options.share` is its digest) pins the
    weights and device state the two have in common to that Program's places.
    """
    if layout_digest(resident) != options.share:
        raise ValueError("options.share must be the digest of the resident layout given")
    example_inputs = check_inputs(model, example_inputs)
    state: dict[str, Any] = {"chip": chip, "resident": resident}
    ir_after: dict[str, str] = {}
    key = None
    for phase, run in PIPELINE:
        run(model, example_inputs, options, state)
        with state["graph"].context:
            ir_after[phase] = str(state["graph"].module)
        if options.print_ir_after_all:
            print(f"// ----- IR after phase '{phase}' -----\n{ir_after[phase]}", file=sys.stderr)
        if phase == "graph" and cache is not None and options.to == "program":
            t0 = time.perf_counter()
            key = cache.key(state["graph"], options, chip)
            hit = cache.load(key)
            state["timings"]["cache"] = time.perf_counter() - t0
            if hit is not None:
                state["program"] = hit
                ir_after.update(hit.meta.get("ir", {}))
                break
        if phase == options.to:
            if key is not None:
                # the tiled IR for a cache hit's cm.ir("tiled"); "program" is built from the Program
                state["program"].meta["ir"] = {"tiled": ir_after["tiled"]}
                cache.store(key, state["program"])
            break
    return CompileResult(options, state["graph"], state["out_spec"], ir_after, state.get("timings", {}),
                         state.get("program"))


__all__ = ["PHASES", "DTYPES", "CompileOptions", "CompileResult", "compile_model", "resident_layout", "EmberError"]
