"""The GEMM kernel's geometry: the problem (`_gemm`: shapes, epilogue, dtypes), a plan, how a plan
lays the output tiles over the PE grid (`_Layout`), the local buffers it needs (`_Buffers`), its
K steps. Read by the cost model (`matmul_cost`) and the emitter (`matmul_emit`); see
`ops.kernels.matmul` for the schedule."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ops.kernel import ISA_ITEMSIZE, KernelCall
from ops.kernels.elementwise import tile_epilogue
from simulator.isa import LUT_FNS, SimdFn
from simulator.isa.mx import BLOCK as MX_BLOCK, FORMATS as MX_FORMATS, MxFormat


ACC_DTYPE = {"fp32": "fp32", "bf16": "fp32", "fp16": "fp32", "int8": "int32", "fp8": "fp32", "mxfp8": "fp32",
             "mxfp4": "fp32"}
ALIGN = 64
BIAS_ROWS = 32          # rows of the replicated bias tile the epilogue adds per command


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _align(x: int) -> int:
    return _cdiv(x, ALIGN) * ALIGN


@dataclass(frozen=True)
class MatmulPlan:
    """One tiling: layout of jobs over the PE grid, tile sizes, buffering."""
    layout: str          # "rows" | "cols"
    groups: int          # pm (rows layout) or pn (cols layout)
    mt: int
    nt: int
    kt: int
    nbuf: int = 2
    cbufs: int = 1

    def __str__(self) -> str:
        return (f"{self.layout}/{self.groups} {self.mt}x{self.nt}x{self.kt} "
                f"b{self.nbuf}c{self.cbufs}")


@dataclass(frozen=True)
class _EpilogueStep:
    """One fused elementwise step on the fp32 output tile."""
    form: str                # "unary" | "scale" | "binary" (see elementwise.tile_epilogue)
    fn: str = "COPY"         # SIMD function (unary, binary)
    imm: float = 0.0         # scale: the immediate
    operand: int = -1        # binary: input position of the other (result-shaped) operand
    acc_first: bool = True   # binary: the accumulator is the left operand
    dtype: str = "fp32"      # binary: the other operand's dtype

    @property
    def lut(self) -> bool:
        return self.form == "unary" and SimdFn[self.fn] in LUT_FNS


def _epilogue(call: KernelCall) -> tuple[_EpilogueStep, ...]:
    """The call's `epilogue` attribute: ("unary", kind, alpha, beta) and ("binary", kind,
    operand position, side) entries (side 0: the contraction's result is the left operand)."""
    out = []
    for step in call.attrs.get("epilogue") or ():
        how = tile_epilogue(step[0], step[1])
        if how is None:
            raise ValueError(f"ember.{call.op}: epilogue step {tuple(step)} has no SIMD form")
        form, fn = how
        if form == "scale":
            out.append(_EpilogueStep(form, "MUL", imm=float(fn)))
        elif form == "unary":
            out.append(_EpilogueStep(form, fn))
        else:
            pos = int(step[2])
            out.append(_EpilogueStep(form, fn, operand=pos, acc_first=int(step[3]) == 0,
                                     dtype=call.inputs[pos].dtype))
    return tuple(out)


@dataclass(frozen=True)
class _Gemm:
    """The call seen as a batch of GEMMs C[b] = A[b] @ B[b] (B given as [K, N] or W[N, K])."""
    batch: int
    M: int
    K: int
    N: int
    a_offsets: tuple[int, ...]     # byte offset of A[b] from the lhs base, per batch element
    b_offsets: tuple[int, ...]
    transposed_b: bool             # linear: B is W[N, K]
    dtype: str
    out_dtype: str
    acc_dtype: str
    has_bias: bool
    scalar_bias: bool
    bias_dtype: str = "fp32"
    scaled: bool = False           # a dequantization vector d[N] multiplies the accumulator
    epilogue: tuple[_EpilogueStep, ...] = ()
    row_scaled: bool = False       # and a per-row scale s[M] (activations quantized per row)

    @property
    def es(self) -> int:
        return ISA_ITEMSIZE[self.dtype]

    @property
    def mx(self) -> MxFormat | None:
        """The MX block format of both operands, or None. An MX GEMM is always given as A[M, K]
        and W[N, K], each row K / 32 blocks (the DPE reads both K-major: no MLU transposes)."""
        return MX_FORMATS.get(self.dtype)

    def kbytes(self, k: int) -> int:
        """Bytes of k consecutive values of an operand row (A, or W of a linear)."""
        return self.mx.row_bytes(k) if self.mx else k * self.es

    @property
    def mlu_transposes(self) -> bool:
        """Whether the MLU turns each W tile [nt, kt] into the DPE's [kt, nt] operand."""
        return self.transposed_b and self.mx is None

    @property
    def residuals(self) -> tuple[_EpilogueStep, ...]:
        return tuple(st for st in self.epilogue if st.form == "binary")


def _gemm(call: KernelCall) -> _Gemm:
    dt = call.compute_dtype
    es = ISA_ITEMSIZE[dt]
    mx = MX_FORMATS.get(dt)
    if call.op == "linear" or mx is not None:     # an MX matmul's constant B was stored as W[N, K]
        x, w = call.inputs[0], call.inputs[1]
        bias = call.inputs[2] if call.op == "linear" and len(call.inputs) > 2 else None
        K = mx.row_values(x.shape[-1]) if mx else x.shape[-1]
        N = w.shape[0]
        M = int(np.prod(x.shape[:-1], dtype=np.int64))
        return _Gemm(1, M, K, N, (0,), (0,), True, dt, call.output.dtype, ACC_DTYPE[dt],
                     bias is not None, bias is not None and len(bias.shape) == 0,
                     dt if bias is None else bias.dtype, _dequant(call) is not None, _epilogue(call),
                     _row_scale(call) is not None)
    lhs, rhs = call.inputs[0], call.inputs[1]
    M, K = lhs.shape[-2:]
    N = rhs.shape[-1]
    out_batch = tuple(call.output.shape[:-2])
    batch = int(np.prod(out_batch, dtype=np.int64))

    def offsets(shape, tile_bytes):
        bshape = tuple(shape[:-2])
        bshape = (1,) * (len(out_batch) - len(bshape)) + bshape
        strides = np.zeros(len(bshape), np.int64)
        acc = tile_bytes
        for i in range(len(bshape) - 1, -1, -1):
            strides[i] = 0 if bshape[i] == 1 else acc
            acc *= bshape[i]
        return tuple(int(sum(int(i) * int(s) for i, s in zip(idx, strides)))
                     for idx in np.ndindex(*out_batch)) if out_batch else (0,)

    return _Gemm(max(batch, 1), M, K, N, offsets(lhs.shape, M * K * es), offsets(rhs.shape, K * N * es),
                 False, dt, call.output.dtype, ACC_DTYPE[dt], False, False, dt, _dequant(call) is not None,
                 _epilogue(call), _row_scale(call) is not None)


def _dequant(call: KernelCall):
    """The dequantization vector operand of a quantized GEMM (operand 3), or None."""
    return call.inputs[3] if len(call.inputs) > 3 else None


def _row_scale(call: KernelCall):
    """The per-row activation scales of a GEMM quantized per row (operand 4, [..., M, 1] fp32),
    or None."""
    return call.inputs[4] if len(call.inputs) > 4 and _dequant(call) is not None else None


def _output_index(g: "_Gemm", bi: int, m0: int, n0: int) -> int:
    """Element offset of output (and residual) tile (bi, m0, n0)."""
    return bi * g.M * g.N + m0 * g.N + n0


class _Layout:
    """Where the jobs of a plan go on the PE grid, and who fetches what."""

    def __init__(self, g: _Gemm, plan: MatmulPlan, R: int, C: int):
        self.R, self.C = R, C
        self.Tm, self.Tn = _cdiv(g.M, plan.mt), _cdiv(g.N, plan.nt)
        if plan.layout == "tiles":      # every tile of every batch element, round robin
            self.pm = self.pn = 1
            self.a_shared = self.b_shared = False
        elif plan.layout == "rows":
            self.pm = plan.groups
            self.pn = (R // plan.groups) * C
            self.a_shared, self.b_shared = True, plan.groups == R
        else:
            self.pn = plan.groups
            self.pm = (C // plan.groups) * R
            self.a_shared, self.b_shared = plan.groups == C, True
        self.plan = plan
        self.QM, self.QN = _cdiv(self.Tm, self.pm), _cdiv(self.Tn, self.pn)
        self.batch = g.batch

    def tile_jobs(self, pe: int) -> list[tuple[int, int, int]]:
        """`tiles` layout: (batch, M tile, N tile) of PE number `pe`, round robin."""
        P = self.R * self.C
        J = self.batch * self.Tm * self.Tn
        return [(j // (self.Tm * self.Tn), (j // self.Tn) % self.Tm, j % self.Tn) for j in range(pe, J, P)]

    def end_job(self, r: int, c: int, last: bool = False) -> tuple[int, int, int] | None:
        """(batch, M tile, N tile) of PE (r, c)'s first job (its positions, in range or not,
        outside `tiles`) or its last one (None: it has none)."""
        if self.plan.layout == "tiles":
            jobs = self.tile_jobs(r * self.C + c)
            return (jobs[-1] if last else jobs[0]) if jobs else None
        mpos, npos = self.pos(r, c)
        if not last:
            return 0, mpos, npos
        if mpos >= self.Tm or npos >= self.Tn:
            return None
        return (self.batch - 1, mpos + ((self.Tm - 1 - mpos) // self.pm) * self.pm,
                npos + ((self.Tn - 1 - npos) // self.pn) * self.pn)

    def pos(self, r: int, c: int) -> tuple[int, int]:
        """(mpos, npos) of PE (r, c)."""
        R, C, p = self.R, self.C, self.plan
        if p.layout == "rows":
            k = R // p.groups
            return r // k, (r % k) * C + c
        k = C // p.groups
        return (c % k) * R + r, c // k

    def a_issuer(self, r: int, t: int = 0) -> tuple[int, int]:
        """The PE that multicasts row r's A tiles in job t: one per column (one NoC edge each),
        never one that multicasts B tiles too, and a different one each job, so that no PE's
        DMA queue carries both the row's fetches and all of its own stores."""
        shift = self.C // 2 if (self.b_shared and self.C > 1) else 0
        return r, (r + shift + t) % self.C

    def b_issuer(self, c: int, t: int = 0) -> tuple[int, int]:
        return (c - t) % self.R, c


def _tile(i: int, t: int, total: int) -> tuple[int, int]:
    """(start, size) of tile i of size t over `total` (size 0: no such tile)."""
    start = i * t
    return start, max(0, min(t, total - start))


class _Buffers:
    """Local-memory map of one plan (the same on every PE, so multicasts land in place)."""

    def __init__(self, g: _Gemm, p: MatmulPlan):
        es = g.es
        a = _align(p.mt * g.kbytes(p.kt))
        b = _align(p.nt * g.kbytes(p.kt))
        c = _align(p.mt * p.nt * 4)
        self.a = [i * a for i in range(p.nbuf)]
        base = p.nbuf * a
        self.b = [base + i * b for i in range(p.nbuf)]
        base += p.nbuf * b
        self.w = []
        if g.mlu_transposes:        # W tiles [nt, kt] before the MLU transposes them
            self.w = [base + i * b for i in range(p.nbuf)]
            base += p.nbuf * b
        self.c = [base + i * c for i in range(p.cbufs)]
        base += p.cbufs * c
        self.bias_raw = self.bias32 = self.scale = base
        if g.has_bias:
            self.bias32 = base + _align(BIAS_ROWS * p.nt * ISA_ITEMSIZE[g.bias_dtype])
            base = self.bias32 + _align(BIAS_ROWS * p.nt * 4)
        if g.scaled:
            self.scale = base
            base += _align(BIAS_ROWS * p.nt * 4)
        self.row_scale = base
        if g.row_scaled:
            base += _align(p.mt * 4)
        self.res = []           # per residual: (tile as loaded, its fp32 copy)
        for st in g.residuals:
            raw = base
            base += _align(p.mt * p.nt * ISA_ITEMSIZE[st.dtype])
            wide = raw
            if st.dtype != "fp32":
                wide = base
                base += _align(p.mt * p.nt * 4)
            self.res.append((raw, wide))
        self.total = base


def channel_shares(base: int, nbytes: int, channels: int, interleave: int) -> list[tuple[int, int]]:
    """(channel, bytes) of a transfer of `nbytes` from address `base` over `channels` channels
    (banks) interleaved every `interleave` bytes, as the simulator's memory servers charge it."""
    n = min(channels, _cdiv(nbytes, interleave))
    per = _cdiv(nbytes, n)
    first = (base // interleave) % channels
    return [((first + i) % channels, per) for i in range(n)]


def _k_steps(K: int, kt: int) -> list[int]:
    return [min(kt, K - s) for s in range(0, K, kt)]


def _k_groups(K: int, kt: int) -> list[tuple[int, int]]:
    """K steps as (size, count) groups: the full steps, then the short last one."""
    full, rem = divmod(K, kt)
    return [(kt, full)] * (full > 0) + [(rem, 1)] * (rem > 0)


def _column_params(call: KernelCall, g: _Gemm) -> list:
    """The per-column vectors the epilogue reads per N tile: the bias, the dequantization vector."""
    return ([call.inputs[2]] if g.has_bias else []) + ([_dequant(call)] if g.scaled else [])
