"""The convolution kernel's geometry: the problem as an implicit GEMM (`_geom`), a plan, its jobs
and their order per PE, the MLU's patch copies, the local buffers. Read by the cost model
(`conv_cost`) and the emitter (`conv_emit`); see `ops.kernels.conv` for the schedule."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ops.kernel import ISA_ITEMSIZE, KernelCall, LocalArena
from ops.kernels.matmul_tiles import ACC_DTYPE, _cdiv
from ops.kernels.window_tiles import RowTile, Window


ALIGN = 64


@dataclass(frozen=True)
class ConvPlan:
    """One tiling: output channels per job, output rows per job, input channels per K step,
    buffering of the K loop and of the accumulator."""
    mt: int
    nr: int
    cc: int
    nbuf: int = 2
    cbufs: int = 1
    share: int = 1       # PEs of a column that fetch each weight tile together (1: each PE alone)

    def __str__(self) -> str:
        shared = f" shared/{self.share}" if self.share > 1 else ""
        return f"{self.mt}ch x {self.nr}rows, {self.cc}ch/step b{self.nbuf}c{self.cbufs}{shared}"


@dataclass(frozen=True)
class _Geom(Window):
    """The call's convolution in 2-D terms (a 1-D convolution is one with H = kh = 1): N images
    of C channels in, O out, in G groups. A quantized convolution (int8 or fp8 operands) has a
    dequantization vector d[O] (fp32) that scales output channel o, and an fp32 bias."""
    N: int
    C: int
    O: int
    G: int
    dtype: str
    out_dtype: str
    has_bias: bool
    bias_dtype: str = "fp32"
    scaled: bool = False

    @property
    def acc_dtype(self) -> str:
        return ACC_DTYPE[self.dtype]

    @property
    def has_epilogue(self) -> bool:
        """Whether the accumulator is changed before its store: bias, dequantization, rounding."""
        return self.has_bias or self.scaled or self.out_dtype != self.acc_dtype

    @property
    def Cg(self) -> int:
        return self.C // self.G

    @property
    def Og(self) -> int:
        return self.O // self.G

    @property
    def es(self) -> int:
        return ISA_ITEMSIZE[self.dtype]

    @property
    def taps(self) -> int:
        return self.kh * self.kw

    @property
    def Ws(self) -> int:
        """Slab row length: whole input rows, rounded up to a multiple of the stride so that
        the column phases of all rows are one strided copy each."""
        return _cdiv(self.W, self.sw) * self.sw

    @property
    def direct(self) -> bool:
        """1x1, stride 1, no padding: the input slab is the patch matrix itself."""
        return (self.kh, self.kw, self.sh, self.sw, self.ph, self.pw) == (1, 1, 1, 1, 0, 0)

    def ow_range(self, j: int) -> tuple[int, int]:
        """Output columns [a, b) whose tap j lands inside the input."""
        off = j * self.dw - self.pw
        a = max(0, _cdiv(-off, self.sw))
        b = min(self.OW, (self.W - 1 - off) // self.sw + 1)
        return a, max(a, b)

    @property
    def phases(self) -> list[int]:
        """Column phases (mod sw) that some tap reads."""
        return sorted({(j * self.dw - self.pw) % self.sw for j in range(self.kw)})

    @property
    def clipped(self) -> bool:
        """Whether some tap misses the input for some output column (horizontal padding)."""
        return any(self.ow_range(j) != (0, self.OW) for j in range(self.kw))


def _geom(call: KernelCall) -> _Geom:
    x, w = call.inputs[0], call.inputs[1]
    a = call.attrs
    window = Window.of(x.shape, w.shape[2:], a["stride"], a["padding"], a["dilation"], call.output.shape)
    has_bias = len(call.inputs) > 2 and call.inputs[2] is not None
    return _Geom(**window, N=x.shape[0], C=x.shape[1], O=w.shape[0], G=int(a["groups"]), dtype=x.dtype,
                 out_dtype=call.output.dtype, has_bias=has_bias,
                 bias_dtype=call.inputs[2].dtype if has_bias else x.dtype,
                 scaled=len(call.inputs) > 3 and call.inputs[3] is not None)


def _row_tile(geo: _Geom, nr: int, pi: int) -> RowTile:
    oh0 = pi * nr
    return RowTile(**RowTile.of(oh0, min(nr, geo.OH - oh0), geo.H, geo.kh, geo.sh, geo.ph, geo.dh))

@dataclass(frozen=True)
class _Copy:
    """One MLU strided copy inside local memory (offsets from the slab, phase, patch and zero
    buffers' bases are resolved by the caller)."""
    src: tuple[str, int]
    dst: tuple[str, int]
    rows: int
    row_bytes: int
    src_stride: int
    dst_stride: int


def _im2col(geo: _Geom, t: RowTile, ccs: int, nt: int) -> list[_Copy]:
    """The MLU copies that turn a slab of `ccs` channels into the patch matrix [ccs*kh*kw, nt]."""
    es, Ws = geo.es, geo.Ws
    chan = t.rows_in * Ws * es
    out: list[_Copy] = []
    if t.ztop:
        out.append(_Copy(("zero", 0), ("slab", 0), ccs, t.ztop * Ws * es, 0, chan))
    if t.zbot:
        out.append(_Copy(("zero", 0), ("slab", (t.rows_in - t.zbot) * Ws * es), ccs, t.zbot * Ws * es, 0, chan))
    Wq = Ws // geo.sw
    plane = ccs * t.rows_in * Wq * es      # one column phase of the slab
    if geo.sw > 1:
        for b in geo.phases:
            out.append(_Copy(("slab", b * es), ("phase", b * plane), ccs * t.rows_in * Wq, es, geo.sw * es, es))
    chan = t.rows_in * Wq * es            # a channel's rows in the slab (or in one phase)
    by_rows = t.rows <= ccs                  # one copy per output row (over channels), or per channel
    for i in range(geo.kh):
        for j in range(geo.kw):
            a, e = geo.ow_range(j)
            if a >= e:
                continue
            off = j * geo.dw - geo.pw
            b = off % geo.sw
            col = a + (off - b) // geo.sw
            base = b * plane if geo.sw > 1 else 0
            space = "phase" if geo.sw > 1 else "slab"
            k = i * geo.kw + j
            if by_rows:
                for r in range(t.rows):
                    src = base + ((r * geo.sh + i * geo.dh) * Wq + col) * es
                    out.append(_Copy((space, src), ("patch", (k * nt + r * geo.OW + a) * es), ccs,
                                     (e - a) * es, chan, geo.taps * nt * es))
            else:
                for c in range(ccs):
                    src = base + c * chan + (i * geo.dh * Wq + col) * es
                    out.append(_Copy((space, src), ("patch", ((c * geo.taps + k) * nt + a) * es), t.rows,
                                     (e - a) * es, geo.sh * Wq * es, geo.OW * es))
    return out


def _clears(geo: _Geom, p: ConvPlan, chip: Any) -> list[_Copy]:
    """The MLU copies from the zero tile that clear what the patch copies never write: the
    pixels a tap misses left or right of the input, per tap and output row over the channels,
    and the columns past the last (short) row tile; or the whole buffer when that is cheaper."""
    es, nt, OW = geo.es, p.nr * geo.OW, geo.OW
    out = []
    for k in range(geo.taps):
        a, e = geo.ow_range(k % geo.kw)
        lo = min(a, OW)
        hi = max(min(e, OW), lo)
        for r in range(p.nr):
            for c0, c1 in ((0, lo), (hi, OW)):
                if c1 > c0:
                    out.append(_Copy(("zero", 0), ("patch", (k * nt + r * OW + c0) * es), p.cc, (c1 - c0) * es, 0,
                                     geo.taps * nt * es))
    short = geo.OH % p.nr * OW
    if short:
        out.append(_Copy(("zero", 0), ("patch", short * es), p.cc * geo.taps, (nt - short) * es, 0, nt * es))
    whole = [_Copy(("zero", 0), ("patch", 0), p.cc * geo.taps, nt * es, 0, nt * es)]

    def cycles(copies):
        return sum(_cdiv(c.rows * c.row_bytes, chip.mlu.bytes_per_cycle) + chip.mlu.latency_cycles for c in copies)

    return out if cycles(out) < cycles(whole) else whole


class _Buffers:
    """Local-memory map of one plan (the same on every PE)."""

    def __init__(self, geo: _Geom, p: ConvPlan):
        es, nt = geo.es, p.nr * geo.OW
        kt = p.cc * geo.taps
        rows_in = _row_tile(geo, p.nr, 0).rows_in
        arena = LocalArena(ALIGN)
        self.a = [arena.take(p.mt * kt * es) for _ in range(p.nbuf)]
        self.slab_bytes = p.cc * rows_in * geo.Ws * es
        if geo.direct:
            self.patch = [arena.take(kt * nt * es) for _ in range(p.nbuf)]
            self.slab = self.patch
            self.phase = 0
        else:
            self.slab = [arena.take(self.slab_bytes) for _ in range(p.nbuf)]
            self.phase = arena.take(self.slab_bytes) if geo.sw > 1 else 0
            self.patch = [arena.take(kt * nt * es) for _ in range(p.nbuf)]
        self.acc = [arena.take(p.mt * nt * 4) for _ in range(p.cbufs)]
        self.zero_elems = self.zero_elems_of(geo, p)
        self.zero = arena.take(self.zero_elems * es)
        self.zero_raw = arena.take(self.zero_elems)          # int8 scratch it is made from
        self.bias_raw = self.bias32 = self.scale = 0
        if geo.has_bias:      # as loaded, and widened to fp32 (the same buffer when it is fp32)
            self.bias_raw = arena.take(geo.O * ISA_ITEMSIZE[geo.bias_dtype])
            self.bias32 = self.bias_raw if geo.bias_dtype == "fp32" else arena.take(geo.O * 4)
        if geo.scaled:
            self.scale = arena.take(geo.O * 4)
        self.total = arena.end

    @staticmethod
    def zero_elems_of(geo: _Geom, p: ConvPlan) -> int:
        """Elements of the zero tile: a patch row, or the most slab rows a tile pads with."""
        first, last = _row_tile(geo, p.nr, 0), _row_tile(geo, p.nr, _cdiv(geo.OH, p.nr) - 1)
        # the first tile starts highest; no tile reaches lower than the last one
        zrows = max(first.ztop, min(first.rows_in, last.ih0 + last.rows_in - geo.H), 1)
        return max(p.nr * geo.OW, zrows * geo.Ws)

    def at(self, ref: tuple[str, int], slot: int) -> int:
        name, off = ref
        base = {"zero": self.zero, "slab": self.slab[slot], "phase": self.phase,
                "patch": self.patch[slot]}[name]
        return base + off


def _jobs(geo: _Geom, p: ConvPlan) -> list[tuple[int, int, int, int]]:
    """(image, group, output-channel tile, row tile) of every job, in order."""
    return [(n, g, oi, pi) for n in range(geo.N) for g in range(geo.G)
            for oi in range(_cdiv(geo.Og, p.mt)) for pi in range(_cdiv(geo.OH, p.nr))]


def _k_steps(geo: _Geom, p: ConvPlan) -> list[int]:
    """Input channels of each K step."""
    return [min(p.cc, geo.Cg - c0) for c0 in range(0, geo.Cg, p.cc)]


def _inits(geo: _Geom, p: ConvPlan) -> tuple[bool, bool]:
    """Whether the patch buffers and the slabs need clearing before the first step."""
    short = geo.OH % p.nr != 0
    return short or (geo.clipped and not geo.direct), geo.Ws != geo.W and not geo.direct


def _jobs_of(geo: _Geom, p: ConvPlan, R: int, C: int, q: int) -> list[tuple]:
    """The jobs of PE q in order, as (group, output-channel tile, image, row tile).

    ``share`` 1: jobs round robin over the PEs. ``share`` R: work units (a weight tile, R row
    tiles) round robin over the PE columns, the unit's row tiles one per PE of the column, so a
    column's PEs run jobs on the same weight tiles in step; a PE past the last row tile gets
    (group, tile, None, None): it only takes part in fetching the column's weights.
    """
    n_o, n_r = _cdiv(geo.Og, p.mt), _cdiv(geo.OH, p.nr)
    if p.share == 1:
        out = []
        for j in range(q, geo.N * geo.G * n_o * n_r, R * C):
            rest, pi = divmod(j, n_r)
            rest, oi = divmod(rest, n_o)
            n, g = divmod(rest, geo.G)
            out.append((g, oi, n, pi))
        return out
    r, c = divmod(q, C)
    n_vb = _cdiv(geo.N * n_r, R)
    out = []
    for w in range(c, geo.G * n_o * n_vb, C):
        u, vb = divmod(w, n_vb)
        g, oi = divmod(u, n_o)
        j = vb * R + r
        out.append((g, oi) + (divmod(j, n_r) if j < geo.N * n_r else (None, None)))
    return out
