"""Output-row tiles of the sliding-window kernels (convolution, pooling): which input rows a run
of output rows reads, which of them are padding, and a local tile filled with one value."""
from __future__ import annotations

from dataclasses import dataclass

from ops.kernel import Placement
from ops.kernels.matmul_tiles import _cdiv


@dataclass(frozen=True)
class Window:
    """A sliding window in 2-D terms (1-D: H = kh = 1): an input of H x W, a kernel of kh x kw
    with its stride, padding and dilation per dimension, an output of OH x OW."""
    H: int
    W: int
    kh: int
    kw: int
    sh: int
    sw: int
    ph: int
    pw: int
    dh: int
    dw: int
    OH: int
    OW: int

    @staticmethod
    def of(in_shape, kernel, stride, padding, dilation, out_shape) -> dict:
        """The fields for a window of `len(kernel)` (1 or 2) dimensions over the last dimensions
        of `in_shape`, giving the last dimensions of `out_shape`."""
        if len(kernel) == 1:
            (kw,), (sw,), (pw,), (dw,) = kernel, stride, padding, dilation
            return dict(H=1, W=in_shape[-1], kh=1, kw=kw, sh=1, sw=sw, ph=0, pw=pw, dh=1, dw=dw,
                        OH=1, OW=out_shape[-1])
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
        return dict(H=in_shape[-2], W=in_shape[-1], kh=kh, kw=kw, sh=sh, sw=sw, ph=ph, pw=pw, dh=dh, dw=dw,
                    OH=out_shape[-2], OW=out_shape[-1])


@dataclass(frozen=True)
class RowTile:
    """Output rows [oh0, oh0 + rows) of a windowed op and the input slab they read: `rows_in`
    rows from `ih0`, the first `ztop` and last `zbot` of them outside the input (padding)."""
    oh0: int
    rows: int
    ih0: int
    rows_in: int
    ztop: int
    zbot: int

    @property
    def valid(self) -> int:
        return self.rows_in - self.ztop - self.zbot

    @staticmethod
    def of(oh0: int, rows: int, H: int, kh: int, sh: int, ph: int, dh: int) -> dict:
        """The fields of the tile of `rows` output rows from `oh0` (kernel kh, stride sh,
        padding ph, dilation dh over an input of H rows)."""
        ih0 = oh0 * sh - ph
        rows_in = (rows - 1) * sh + (kh - 1) * dh + 1
        ztop = min(rows_in, max(0, -ih0))
        zbot = min(rows_in - ztop, max(0, ih0 + rows_in - H))
        return {"oh0": oh0, "rows": rows, "ih0": ih0, "rows_in": rows_in, "ztop": ztop, "zbot": zbot}

def emit_fill_tile(pe, src: Placement, raw: int, dst: int, elems: int, value: float, dtype: str,
                   signal: int) -> None:
    """`elems` copies of `value` (as `dtype`) at `dst` in local memory, with no immediate-load
    command: bytes of `src` read as int8 into `raw` (`elems` bytes) are finite whatever they
    hold, so times 0 they are 0. Signals `signal` twice (DMA, then SIMD)."""
    n = min(src.nbytes, elems)
    pe.dma(src.space, src.addr, "local", raw, rows=_cdiv(elems, n), row_bytes=n, src_stride=0,
           dst_stride=n, signal=signal)
    if value:
        pe.simd_scalar("MUL", raw, dst, elems, 0.0, dtype="int8", out_dtype="fp32", wait=(signal, 1))
        pe.simd_scalar("ADD", dst, dst, elems, value, dtype="fp32", out_dtype=dtype, signal=signal)
    else:
        pe.simd_scalar("MUL", raw, dst, elems, 0.0, dtype="int8", out_dtype=dtype, wait=(signal, 1),
                       signal=signal)
