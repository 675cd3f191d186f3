"""The dtype pass's MX block formats ("mxfp8", "mxfp4"; OCP MX, simulator/isa/mx.py): each GEMM
with a constant weight runs both operands in the format.

* The weight is encoded at compile time as W[N, K]: a linear's weight as it is, a 2-D matmul's
  B[K, N] transposed, so that the DPE reads both operands K-major, 32-element blocks with their
  scales in place; it becomes a new constant of the graph (uint8 rows).
* The activation is encoded at run time by a `quantize_mx` op (ops/kernels/quantize_mx.py)
  inserted before the GEMM; a value that feeds several GEMMs is encoded once.
* The GEMM accumulates in fp32 and applies each pair of blocks' scales inside the DPE: no
  dequantization epilogue; a bias is added in fp32.
* GEMMs whose K is not a whole number of 32-element blocks stay in the narrow float dtype (bf16).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from compiler.graph_ops import GraphOp, GraphOps
from ops.registry import TensorSpec
from simulator.isa.mx import BLOCK, E8M0_BIAS, FORMATS

#: The MX compile dtypes (each is also the chip's `dpe.macs_per_cycle` field).
MX_DTYPES = tuple(FORMATS)
#: Graph element type of a value held in an MX format: its rows of bytes.
MX_ELEMENT = "ui8"


def quantize_mx(graph: GraphOps, constants: dict[int, Any], dtype: str,
                weight_axis: Callable[[GraphOps, GraphOp], int | None], quant_params: Callable[..., Any]) -> dict[int, str]:
    """Rewrite the GEMMs `weight_axis` accepts (it gives the weight's output-channel axis) into
    `dtype`; returns the storage dtype of every value now held in the format."""
    fmt = FORMATS[dtype]
    encoded: dict[int, int] = {}        # activation -> its encoded value
    ops: list[GraphOp] = []
    for op in graph.ops:
        axis = weight_axis(graph, op)
        k = graph.specs[op.operands[0]].shape[-1] if axis is not None else 0
        if axis is None or k % BLOCK:
            ops.append(op)
            continue
        x, w = op.operands[0], op.operands[1]
        if x not in encoded:
            spec = graph.specs[x]
            xq = graph.new_value(TensorSpec((*spec.shape[:-1], fmt.row_bytes(k)), MX_ELEMENT))
            ops.append(GraphOp(-1, "quantize_mx", None, {}, [x], [xq], op.location, target="accelerator"))
            encoded[x] = xq
        n = graph.specs[w].shape[axis]
        wq = graph.new_value(TensorSpec((n, fmt.row_bytes(k)), MX_ELEMENT))
        values = constants.get(w)
        if values is not None:
            rows = np.asarray(values, np.float32)
            graph.literals[wq] = fmt.encode(rows if axis == 0 else rows.T)
            scales = np.exp2(graph.literals[wq].reshape(n, -1, fmt.block_bytes)[..., 0].astype(np.float64) - E8M0_BIAS)
        else:       # no numbers (meta weights): the plan and its timing only
            graph.weights[wq] = f"{graph.weights.get(w, f'_{dtype}.{w}')}.{dtype}"
            scales = np.ones(n, np.float64)
        bias = op.operands[2:3] if op.name == "linear" else []     # matmul has none
        op.operands = [encoded[x], wq, *bias]
        op.quant = quant_params(None, None, scales.reshape(-1).astype(np.float32), dtype, "mx-blocks")
        ops.append(op)
    for i, op in enumerate(ops):
        op.index = i
    graph.ops = ops
    return {v: dtype for op in ops if op.quant is not None and op.quant.dtype == dtype for v in op.operands[:2]}
