"""The compile pipeline: named passes in order, each in its phase; the IR after every one.

    graph    capture         torch.export + decompositions
             import          graph-level `ember` ops (constant subgraphs folded)
    tiled    fold-attention-masks, materialize-broadcasts, fold-kv-head-expansion   (on the module)
             partition, calibrate, fuse-rotary, dtype-lowering, fuse-epilogues,
             in-place-state, memory-plan, tile-and-map    (on the numbered ops; each op's target,
             dtypes, quantization and plan are attached to the IR)
    program  codegen         every kernel's per-PE commands, serialized into a Program

`ember passes` lists them with what each does. Every pass is a frozen dataclass with a kebab-case
`name` and one signature, `run(state)` over a `compiler.state.CompileState`; `required_by` (a
reason) marks a pass a later one needs, `enabled(options)` one that a compile option turns off.
`compile_model(..., to=PHASE)` stops after PHASE; `options.disable_passes` skips passes (refused,
with the reason, for a required one); `options.print_ir_after` / `print_ir_after_all` dump the IR
after the passes named / after every pass, to stderr. See compiler/passes/README.md.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch_mlir import ir

from compiler.capture import check_inputs
from compiler.errors import EmberError
from compiler.passes.attention_masks import FoldAttentionMasks
from compiler.passes.broadcast_operands import MaterializeBroadcasts
from compiler.passes.calibrate_activations import CalibrateActivations
from compiler.passes.capture import Capture
from compiler.passes.dtype import ACTIVATION_SCALES, QUANTIZED, DtypeLowering
from compiler.passes.dtype_mx import MX_DTYPES
from compiler.passes.emit_program import EmitProgram
from compiler.passes.fusion import FuseEpilogues
from compiler.passes.gqa_heads import FoldKVHeadExpansion
from compiler.passes.import_graph import ImportGraph
from compiler.passes.in_place import InPlaceState
from compiler.passes.memory_plan import MemoryPlan
from compiler.passes.partition import Partition
from compiler.passes.rotary import FuseRotary
from compiler.passes.tile import TileAndMap
from compiler.resident import layout_digest
from compiler.state import CompileState

PHASES = ("graph", "tiled", "program")
DTYPES = ("fp32", "bf16", "int8", "fp8", "mxfp8", "mxfp4")

#: The passes, phase by phase, in the order they run.
PIPELINE: tuple[tuple[str, tuple[Any, ...]], ...] = (
    ("graph", (Capture(), ImportGraph())),
    ("tiled", (FoldAttentionMasks(), MaterializeBroadcasts(), FoldKVHeadExpansion(), Partition(),
               CalibrateActivations(), FuseRotary(), DtypeLowering(), FuseEpilogues(), InPlaceState(),
               MemoryPlan(), TileAndMap())),
    ("program", (EmitProgram(),)),
)


def passes() -> list[tuple[str, Any]]:
    """(phase, pass) for every pass, in order."""
    return [(phase, p) for phase, ps in PIPELINE for p in ps]


def pass_names() -> list[str]:
    return [p.name for _, p in passes()]


def check_pass_names(names: tuple[str, ...], what: str) -> None:
    unknown = [n for n in names if n not in pass_names()]
    if unknown:
        raise ValueError(f"{what}: unknown pass {', '.join(map(repr, unknown))}; the passes are "
                         f"{', '.join(pass_names())} (`ember passes` lists them)")


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
    # quantized dtypes: whether a GEMM producing a model output (the LM head, a classifier) is
    # quantized too; by default it stays in bf16 (see compiler/passes/dtype.py)
    quantize_head: bool = False
    # digest of the resident layout (weights' and device state's places) taken from another
    # Program, so that both run in one session on one copy of them (see `resident_layout`)
    share: str = ""
    # passes skipped (by name); only those no later pass needs
    disable_passes: tuple[str, ...] = ()
    # passes after which the IR is dumped to stderr (by name); print_ir_after_all: every one
    print_ir_after: tuple[str, ...] = ()

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.to not in PHASES:
            raise ValueError(f"to must be one of {', '.join(PHASES)}, got {self.to!r}")
        if self.int8_activations not in ACTIVATION_SCALES:
            raise ValueError(f"int8_activations must be one of {', '.join(ACTIVATION_SCALES)}, "
                             f"got {self.int8_activations!r}")
        object.__setattr__(self, "disable_passes", tuple(self.disable_passes))
        object.__setattr__(self, "print_ir_after", tuple(self.print_ir_after))
        check_pass_names(self.disable_passes, "disable_passes")
        check_pass_names(self.print_ir_after, "print_ir_after")
        for phase, p in passes():
            reason = getattr(p, "required_by", "")
            needed = reason and (not hasattr(p, "enabled") or p.enabled(self)) and \
                PHASES.index(phase) <= PHASES.index(self.to)
            if p.name in self.disable_passes and needed:
                raise ValueError(f"pass '{p.name}' cannot be disabled: {reason}")

    @property
    def dumps(self) -> bool:
        return self.print_ir_after_all or bool(self.print_ir_after)

    def key(self) -> str:
        """What keys the compile cache: every field that changes the Program (the dumps do not;
        a compile that asks for them skips the cache, so that they are printed)."""
        fields = dataclasses.asdict(self)
        fields.pop("print_ir_after_all")
        fields.pop("print_ir_after")
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


def _annotate(graph, placements: dict[int, Any] | None = None) -> None:
    """Attach each op's target, dtypes, quantization, result places and plan to its MLIR
    operation (what the passes so far decided)."""
    for op in graph.ops:
        if op.operation is None:
            continue
        attrs = op.operation.attributes
        attrs["ember.target"] = ir.StringAttr.get(op.target)
        placed = [placements[r] for r in op.results if r in (placements or {})]
        if placed:
            where = ", ".join(f"{p.space}[{p.addr:#x}]" for p in placed)
            in_place = any(r in graph.in_place for r in op.results)
            attrs["ember.placement"] = ir.StringAttr.get(where + (" (in place)" if in_place else ""))
        if op.target == "accelerator" and op.results[0] in graph.storage:      # after dtype-lowering
            ins = ", ".join("none" if v is None else graph.storage.get(v, "?") for v in op.operands)
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


def _dump(state: CompileState, phase: str, name: str) -> str:
    """The IR after a pass: the captured FX graph (ATen IR) after capture, the lowered IR of the
    Program after codegen, and in between the graph-level module with what the passes so far
    attached."""
    if state.graph is None:
        return str(state.ep.graph)
    if name == "codegen":
        from compiler.lowered import lowered_text
        return lowered_text(state.program)
    with state.graph.context:
        if state.has_ops:
            _annotate(state.ops, state.placements)
        return str(state.graph.module)


def compile_model(model: torch.nn.Module, example_inputs: Any, options: CompileOptions, chip: Any,
                  cache: Any = None, resident: dict[str, Any] | None = None) -> CompileResult:
    """Run the pipeline's passes up to the phase `options.to` for `chip` (a ChipSpec).

    `cache` (see `runtime.cache.CompileCache`) is asked for a Program once the graph phase is done,
    keyed by the graph, the options and the chip; on a miss the finished Program is offered to it.
    `resident` (`resident_layout` of another Program; `options.share` is its digest) pins the
    weights and device state the two have in common to that Program's places.
    """
    if layout_digest(resident) != options.share:
        raise ValueError("options.share must be the digest of the resident layout given")
    if (scheme := QUANTIZED.get(options.dtype)) is not None:
        chip.require_dtype(scheme.chip_dtype)       # before the capture: it names the chip field
    elif options.dtype in MX_DTYPES:
        chip.require_dtype(options.dtype)
    state = CompileState(model, check_inputs(model, example_inputs), options, chip, resident)
    ir_after: dict[str, str] = {}
    key = None
    for phase, phase_passes in PIPELINE:
        for p in phase_passes:
            skipped = "disabled" if p.name in options.disable_passes else \
                "not needed by this compile" if hasattr(p, "enabled") and not p.enabled(options) else ""
            if skipped:
                if options.print_ir_after_all or p.name in options.print_ir_after:
                    print(f"// ----- pass '{p.name}' (phase {phase}) skipped: {skipped} -----", file=sys.stderr)
                continue
            t0 = time.perf_counter()
            p.run(state)
            state.timings[p.name] = time.perf_counter() - t0
            if options.print_ir_after_all or p.name in options.print_ir_after:
                print(f"// ----- IR after pass '{p.name}' (phase {phase}) -----\n{_dump(state, phase, p.name)}",
                      file=sys.stderr)
        with state.graph.context:
            if state.has_ops:
                _annotate(state.ops, state.placements)
            ir_after[phase] = str(state.graph.module)
        if phase == "graph" and cache is not None and options.to == "program" and not options.dumps:
            t0 = time.perf_counter()
            key = cache.key(state.graph, options, chip)
            hit = cache.load(key)
            state.timings["cache"] = time.perf_counter() - t0
            if hit is not None:
                state.program = hit
                ir_after.update(hit.meta.get("ir", {}))
                break
        if phase == options.to:
            if key is not None:
                # the tiled IR for a cache hit's cm.ir("tiled"); "program" is built from the Program
                state.program.meta["ir"] = {"tiled": ir_after["tiled"]}
                cache.store(key, state.program)
            break
    return CompileResult(options, state.graph, state.out_spec, ir_after, state.timings, state.program)


__all__ = ["PHASES", "DTYPES", "PIPELINE", "CompileOptions", "CompileResult", "compile_model", "passes",
           "EmberError"]
