"""dtype-lowering: decide the ISA dtype every on-chip value is held in, and quantize contractions.

This is the one place of the dtype policy; memory-plan, tile-and-map and codegen read what it
decides (`GraphOps.storage`, `GraphOp.quant`) and decide nothing of their own.

The policy, for a compile dtype D ("fp32" | "bf16" | "int8" | "fp8" | "mxfp8" | "mxfp4"):

* Only the operands of contractions are rounded: the data operands of matmul / linear /
  attention / conv (and the conv bias, which its kernel reads in the operand dtype) are held in
  the narrow dtype (bf16 for D = "bf16", "int8" or "fp8", fp32 for "fp32"). Everything else -- the
  residual stream, norm and softmax inputs and outputs, GEMM results, graph outputs -- stays in
  fp32, as bf16 inference stacks keep their accumulations and residuals. (Rounding everything
  to bf16 also rounded the rotary angles, position * frequency, whose bf16 spacing is 1.0 at
  position 128: that alone was a 3e-2 error on a 176-token prompt.)
* With a quantized D (int8, fp8, MX), the GEMMs that produce a model output (through views only:
  an LM head, a classifier) stay in the narrow float dtype unless `quantize_head` is set, as
  quantization toolkits leave `lm_head` out (`heads`).
* Device state (inputs the model updates in place: a KV cache) is narrow, and so is its new
  value: the prefill and decode Programs that share a cache hold it in one dtype.
* Kernels that cannot convert (data movement, attention, conv, anything not in MIXED_OPS) hold
  all their float operands and their result in one dtype (a quantized conv excepted: it reads
  its bias and dequantization vector in fp32 and writes any float dtype). Such constraints join
  values into classes; a class is narrow when any member must be. A view shares its input's
  class. So a KV cache that attention reads through a concat is bf16, output included.
* D = "int8": each linear (and 2-D matmul) whose weight is a constant becomes an int8 x int8 ->
  int32 GEMM. Weights are quantized symmetrically per output channel (scale = max|W[n, :]| / 127).
  The activation is quantized in one of two ways (`activations`):
    - "per-row" (the default): at run time, each row (token) with its own scale
      s[m] = max|x[m, :]| / 127, by a `quantize_rows` op inserted before the GEMM: one pass
      over x that writes both xq and s (ops/kernels/quantize.py). The epilogue multiplies row m
      by s[m] and column n by weight_scale[n]. Rows differ in magnitude (image, audio and text
      tokens; outlier tokens), and one scale for all of them costs the small rows most of their
      bits: on multimodal-tiny the error is 1.4e-2 against 3.5e-2 with per-tensor scales (mean
      over 60 fresh inputs).
    - "per-tensor": one scale per activation, from the largest magnitude calibration saw on the
      example inputs (scale = amax / 127), by a `quantize` op (a SIMD multiply that rounds and
      saturates to int8). The epilogue multiplies by one fp32 vector, act_scale * weight_scale[n].
  Then the bias is added in fp32. The int8 weight and the dequantization vector are new constant
  values of the graph.
* D = "fp8": the same, in OCP fp8 e4m3 instead of int8: scales map the largest magnitude to
  e4m3's largest finite value, 448 (scale = amax / 448), values round to nearest even and
  saturate, and the DPE accumulates in fp32 (e4m3 products are exact in fp32). Only chips whose
  `dpe.macs_per_cycle` lists fp8 take it.
* Convolutions (D = "int8" or "fp8") whose weight W[O, C/g, *K] is a constant are quantized the
  same way: W per output channel (one scale over C/g * kh * kw per o), the DPE accumulating in
  int32 (fp32 for fp8), an epilogue multiplying output channel o by act_scale * weight_scale[o]
  and adding the fp32 bias. The activation is always scaled per tensor, from calibration, by a
  `quantize` op, whatever `activations` says: the rows of an NCHW input are not tokens, and one
  scale per image (the only run-time scale the epilogue could factor out of the sum over C)
  would put a whole activation through one PE. A per-row compile therefore calibrates its
  convs' inputs too; with the calibrate pass disabled there is no magnitude to scale by, and its
  convs stay bf16 (weights without values, on the meta device, are timed with placeholder
  scales). act_scale = 1.25 * amax / top, a margin over what calibration saw
  (`DtypeLowering.CONV_HEADROOM`). The conv's result and the activation it quantizes stay in
  the narrow dtype, as a bf16 conv's do (on resnet-small, 17% fewer cycles than in fp32, at the
  same SQNR).
* D = "mxfp8" or "mxfp4" (OCP MX block formats): every linear and 2-D matmul with a constant
  weight and whole 32-element blocks along K runs both operands in the format, the weight
  encoded at compile time and the activation by a `quantize_mx` op at run time; the DPE applies
  the block scales and accumulates in fp32 (compiler/passes/dtype_mx.py). Other contractions
  (attention, convolutions) are held in bf16. Only chips whose `dpe.macs_per_cycle` lists the
  format take it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from compiler.graph_ops import GraphOp, GraphOps
from compiler.passes.dtype_mx import MX_DTYPES, quantize_mx
from ops.kernel import ISA_DTYPE
from ops.registry import TensorSpec, numpy_dtype

#: Contractions: op name -> the operand positions the kernel reads in its compute dtype.
CONTRACTION_OPERANDS = {"linear": (0, 1), "matmul": (0, 1), "grouped_matmul": (0, 1), "attention": (0, 1, 2),
                        "conv": (0, 1, 2)}
#: Ops whose kernels read each operand in its own dtype and write the result in any float dtype
#: (they widen to fp32 on the SIMD engine or accumulate in fp32 / int32).
MIXED_OPS = frozenset({"unary", "binary", "softmax", "norm", "batch_norm", "reduce", "linear", "matmul",
                       "grouped_matmul", "quantize", "quantize_rows", "quantize_mx", "rotary"})
#: The narrow dtype contraction operands are held in, per compile dtype.
NARROW = {"fp32": "fp32", "bf16": "bf16", "int8": "bf16", "fp8": "bf16", "mxfp8": "bf16", "mxfp4": "bf16"}
#: Symmetric int8 range (-128 is left out so that the grid is symmetric about 0).
INT8_MAX = 127.0
#: The largest finite fp8 e4m3 value.
FP8_MAX = 448.0


@dataclass(frozen=True)
class Scheme:
    """A quantized compile dtype: the element type its GEMM operands are held in, the largest
    magnitude a scale maps to, and the dtype the chip's DPE must list."""
    element: str
    top: float
    chip_dtype: str

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """x (already divided by its scale) as this scheme's elements: int8 rounds half to even
        and saturates; fp8 rounds to nearest even and saturates at 448."""
        x = np.clip(x, -self.top, self.top)
        if self.element == "i8":
            return np.rint(x).astype(np.int8)
        return x.astype(np.float32).astype(numpy_dtype(self.element))


#: Compile dtypes whose GEMMs are quantized.
QUANTIZED = {"int8": Scheme("i8", INT8_MAX, "int8"), "fp8": Scheme("f8E4M3FN", FP8_MAX, "fp8")}
#: How int8 GEMM activations are scaled (see the module docstring).
ACTIVATION_SCALES = ("per-row", "per-tensor")


@dataclass(frozen=True)
class QuantParams:
    """How a GEMM was quantized: its weight W[n] ~= weight_scale[n] * Wq[n]; its input
    x ~= act_scale * xq (per tensor; the dequantization vector is act_scale * weight_scale), or
    x[m] ~= s[m] * xq[m] with s computed at run time (per row; act_scale and act_amax are None)."""
    act_scale: float | None
    act_amax: float | None
    weight_scale: np.ndarray
    dtype: str = "int8"
    activations: str = "per-tensor"

    def __repr__(self) -> str:
        ws = self.weight_scale
        act = "per-row" if self.act_scale is None else f"{self.act_scale:.4g}"
        return (f"QuantParams({self.dtype}, act_scale={act}, weight_scale[{ws.size}] in "
                f"[{ws.min():.4g}, {ws.max():.4g}])")


def quantize_weight(w: np.ndarray, axis: int, scheme: Scheme = QUANTIZED["int8"]) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel symmetric quantization: (Wq, scale) with W ~= scale * Wq, one scale per index
    of `axis` (int8 unless `scheme` says otherwise)."""
    w = np.asarray(w, dtype=np.float64)
    reduce = tuple(a for a in range(w.ndim) if a != axis % w.ndim)
    amax = np.max(np.abs(w), axis=reduce, keepdims=True)
    scale = np.where(amax > 0, amax / scheme.top, 1.0)
    return scheme.quantize(w / scale), scale.reshape(-1).astype(np.float32)


def activation_scale(amax: float, top: float = INT8_MAX) -> float:
    """Per-tensor symmetric scale of an activation whose largest magnitude is `amax`."""
    return float(amax) / top if amax > 0 else 1.0


class _Classes:
    """Union-find over value ids."""

    def __init__(self):
        self.parent: dict[int, int] = {}

    def find(self, v: int) -> int:
        self.parent.setdefault(v, v)
        while self.parent[v] != v:
            self.parent[v] = self.parent[self.parent[v]]
            v = self.parent[v]
        return v

    def union(self, values: list[int]) -> None:
        roots = [self.find(v) for v in values]
        for r in roots[1:]:
            self.parent[r] = roots[0]


@dataclass(frozen=True)
class DtypeLowering:
    """Storage dtypes of every value an accelerator op touches, and int8 quantization of the
    GEMMs when the compile dtype is "int8" (see the module docstring for the policy)."""
    name: str = "dtype-lowering"

    required_by = "memory-plan sizes every value by the storage dtype this pass gives it"

    def run(self, state) -> GraphOps:
        options = state.options
        constants = state.constants() if options.dtype in QUANTIZED or options.dtype in MX_DTYPES else None
        return self.lower(state.ops, options.dtype, constants, state.amax, options.int8_activations,
                          options.quantize_head)

    def lower(self, graph: GraphOps, dtype: str, constants: dict[int, Any] | None = None,
              amax: dict[int, float] | None = None, activations: str = "per-row",
              quantize_head: bool = False) -> GraphOps:
        """`constants`: value id -> numpy array of the weights and literals (None for weights that
        have no values, e.g. on the meta device); `amax`: calibrated largest magnitudes (int8,
        per-tensor activations); `activations`: "per-row" or "per-tensor" (int8); `quantize_head`:
        quantize the GEMMs that produce a model output too."""
        if activations not in ACTIVATION_SCALES:
            raise ValueError(f"int8 activations must be one of {', '.join(ACTIVATION_SCALES)}, got {activations!r}")
        heads = frozenset() if quantize_head else self.heads(graph)

        def weight_axis(g: GraphOps, op: GraphOp) -> int | None:
            return None if op.results[0] in heads else self._weight_axis(g, op)
        if dtype in QUANTIZED:
            self._quantize(graph, constants or {}, amax or {}, activations == "per-row", QUANTIZED[dtype],
                           weight_axis)
        mx_storage = quantize_mx(graph, constants or {}, dtype, weight_axis, QuantParams) \
            if dtype in MX_DTYPES else {}
        narrow_dtype = NARROW[dtype]
        classes = _Classes()
        narrow: set[int] = set()
        for op in graph.ops:
            if op.target == "view":
                classes.union([op.operands[0], op.results[0]])
                continue
            if op.target != "accelerator":
                continue
            floats = [v for v in (*op.operands, *op.results) if v is not None and graph.specs[v].is_float]
            for i in CONTRACTION_OPERANDS.get(op.name, ()):
                if i < len(op.operands) and op.operands[i] is not None and op.quant is None:
                    narrow.add(op.operands[i])
            if op.name not in MIXED_OPS and op.quant is None and floats:
                classes.union(floats)
        narrow |= self._narrow_around_convs(graph)
        # device state (a KV cache the model updates in place) is held narrow, as serving stacks
        # hold their caches, whatever reads it: a prefill and a decode that share it agree
        for state, new in graph.mutated.items():
            if graph.specs[state].is_float:
                classes.union([state, new])
                narrow.add(state)
        narrow_roots = {classes.find(v) for v in narrow}
        touched = {v for op in graph.ops if op.target in ("accelerator", "view")
                   for v in (*op.operands, *op.results) if v is not None}
        graph.storage = {}
        for v in sorted(touched):
            spec = graph.specs[v]
            if spec.is_float:
                graph.storage[v] = narrow_dtype if classes.find(v) in narrow_roots else "fp32"
            else:
                graph.storage[v] = ISA_DTYPE.get(spec.dtype, "int32")
        graph.storage.update(mx_storage)
        return graph

    # ------------------------------------------------------------------ int8
    def _quantize(self, graph: GraphOps, constants: dict[int, Any], amax: dict[int, float], per_row: bool,
                  scheme: Scheme, weight_axis) -> None:
        quantized: dict[int, tuple[int, int | None]] = {}   # activation -> its int8 value, row scales
        conv_inputs: dict[int, int] = {}                    # conv activation -> its int8 value
        ops: list[GraphOp] = []
        for op in graph.ops:
            if self._is_quantizable_conv(graph, op):
                self._quantize_conv(graph, op, constants, amax, scheme, conv_inputs, ops)
                continue
            w_axis = weight_axis(graph, op)
            if w_axis is None:
                ops.append(op)
                continue
            x, w = op.operands[0], op.operands[1]
            a = None if per_row else amax.get(x, 0.0)
            s_x = None if per_row else activation_scale(a, scheme.top)
            if x not in quantized:
                spec = graph.specs[x]
                xq = graph.new_value(spec.with_(dtype=scheme.element))
                rows = None
                if per_row:
                    rows = graph.new_value(TensorSpec((*spec.shape[:-1], 1), "f32"))
                    ops.append(GraphOp(-1, "quantize_rows", None, {}, [x], [xq, rows], op.location,
                                       target="accelerator"))
                else:
                    ops.append(GraphOp(-1, "quantize", None, {"scale": 1.0 / s_x}, [x], [xq],
                                       op.location, target="accelerator"))
                quantized[x] = (xq, rows)
            xq, rows = quantized[x]
            wq, dq, s_w = self._quantized_weight(graph, w, constants.get(w), w_axis, scheme, s_x)
            bias = op.operands[2] if len(op.operands) > 2 else None
            op.operands = [xq, wq, bias, dq] + ([rows] if per_row else [])
            op.quant = QuantParams(s_x, a, s_w, scheme.chip_dtype, "per-row" if per_row else "per-tensor")
            ops.append(op)
        for i, op in enumerate(ops):
            op.index = i
        graph.ops = ops

    @staticmethod
    def heads(graph: GraphOps) -> set[int]:
        """The results of the GEMMs that produce a model output (through views only): an LM head
        or a classifier. Quantization toolkits leave them in the float dtype (`lm_head` is in the
        ignore list of the usual fp8 / int8 recipes): their error goes straight into the logits.
        On trained-lm with fp8 the head alone halves the mean KL (1.1e-3 -> 4.3e-4)."""
        producer = {r: op for op in graph.ops for r in op.results}
        out = set()
        for v in graph.user_outputs:
            op = producer.get(v)
            while op is not None and op.target == "view":
                op = producer.get(op.operands[0])
            if op is not None and op.name in ("linear", "matmul"):
                out.add(op.results[0])
        return out

    @staticmethod
    def _weight_axis(graph: GraphOps, op: GraphOp) -> int | None:
        """The output-channel axis of the constant weight of a GEMM that int8 can run, else None."""
        if op.target != "accelerator" or op.name not in ("linear", "matmul") or len(op.operands) < 2:
            return None
        x, w = op.operands[0], op.operands[1]
        if x is None or w is None or not (w in graph.weights or w in graph.literals):
            return None
        if not (graph.specs[x].is_float and graph.specs[w].is_float) or graph.specs[w].rank != 2:
            return None
        bias = op.operands[2] if op.name == "linear" and len(op.operands) > 2 else None
        if bias is not None and graph.specs[bias].rank > 1:
            return None
        return 0 if op.name == "linear" else 1      # linear: W[N, K]; matmul: B[K, N]

    # ------------------------------------------------------------------ conv
    #: A conv's activation scale covers this much more than the largest magnitude calibration saw:
    #: a fresh batch exceeds the example batch's largest magnitude half the time (the two are
    #: exchangeable), and one clipped outlier costs more than the 1.9 dB of resolution this gives
    #: up (hf-resnet int8, worst of 4 fresh draws: 29.4 dB at 1.0, 33.3 dB at 1.25).
    CONV_HEADROOM = 1.25

    @staticmethod
    def _quantized_weight(graph: GraphOps, w: int, w_values: Any, axis: int, scheme: Scheme,
                          s_x: float | None) -> tuple[int, int, np.ndarray]:
        """New constant values for weight `w` quantized per output channel (`axis`): (Wq, its
        dequantization vector d = s_x * weight_scale, or weight_scale when the activation's scales
        come at run time (s_x None), weight_scale)."""
        wq = graph.new_value(graph.specs[w].with_(dtype=scheme.element))
        n = graph.specs[w].shape[axis]
        dq = graph.new_value(TensorSpec((n,), "f32"))
        if w_values is not None:
            q, s_w = quantize_weight(w_values, axis, scheme)
            graph.literals[wq] = q
            graph.literals[dq] = s_w if s_x is None else (s_x * s_w.astype(np.float64)).astype(np.float32)
        else:       # no numbers (meta weights): the plan and its timing only
            s_w = np.ones(n, np.float32)
            name = graph.weights.get(w, f"_{scheme.chip_dtype}.{w}")
            graph.weights[wq] = f"{name}.{scheme.chip_dtype}"
            graph.weights[dq] = f"{name}.dequant"
        return wq, dq, s_w

    @staticmethod
    def calibrated_inputs(graph: GraphOps, per_tensor: bool) -> set[int]:
        """The values whose calibrated largest magnitude the quantization reads: every conv's input,
        and with per-tensor activations every GEMM's."""
        return {op.operands[0] for op in graph.ops if DtypeLowering._is_quantizable_conv(graph, op)
                or (per_tensor and DtypeLowering._weight_axis(graph, op) is not None)}

    @staticmethod
    def _is_quantizable_conv(graph: GraphOps, op: GraphOp) -> bool:
        """A conv on the chip whose float weight W[O, C/g, *K] is a constant."""
        if op.target != "accelerator" or op.name != "conv" or len(op.operands) < 2:
            return False
        x, w = op.operands[0], op.operands[1]
        return (x is not None and w is not None and (w in graph.weights or w in graph.literals)
                and graph.specs[x].is_float and graph.specs[w].is_float)

    @staticmethod
    def _narrow_around_convs(graph: GraphOps) -> set[int]:
        """What a quantized conv leaves narrow that a narrow one holds narrow too: its result, and
        the activation its `quantize` reads (rounding it to bf16 costs nothing next to the int8
        step; bf16 ResNets move half the bytes around their convs)."""
        convs = [op for op in graph.ops if op.name == "conv" and op.quant is not None]
        inputs = {op.operands[0] for op in convs}
        return {op.results[0] for op in convs} | {op.operands[0] for op in graph.ops
                                                  if op.name == "quantize" and op.results[0] in inputs}

    def _quantize_conv(self, graph: GraphOps, op: GraphOp, constants: dict[int, Any], amax: dict[int, float],
                       scheme: Scheme, inputs: dict[int, int], ops: list[GraphOp]) -> None:
        """Append `op` to `ops` as a quantized conv (operands xq, wq, bias, d with d[o] = act_scale *
        weight_scale[o]), after the `quantize` op of its input that the convs reading it share;
        or as it is when its input has no calibrated magnitude."""
        x, w = op.operands[0], op.operands[1]
        w_values = constants.get(w)
        if x not in amax and w_values is not None:
            ops.append(op)
            return
        a = amax.get(x, 0.0)
        s_x = activation_scale(a * self.CONV_HEADROOM, scheme.top)
        if x not in inputs:
            inputs[x] = graph.new_value(graph.specs[x].with_(dtype=scheme.element))
            ops.append(GraphOp(-1, "quantize", None, {"scale": 1.0 / s_x}, [x], [inputs[x]], op.location,
                               target="accelerator"))
        wq, dq, s_w = self._quantized_weight(graph, w, w_values, 0, scheme, s_x)
        bias = op.operands[2] if len(op.operands) > 2 else None
        op.operands = [inputs[x], wq, bias, dq]
        op.quant = QuantParams(s_x, a, s_w, scheme.chip_dtype, "per-tensor")
        ops.append(op)
