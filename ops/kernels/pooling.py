"""Pooling kernel template for `ember.pool` (max and average windows over the last one or two
dimensions) on the SIMD engine, with the memory layout unit (MLU) lining up the windows.

The input is a stack of planes [planes, H, W] (every leading dimension is a plane). Jobs are
``pt`` planes x ``nr`` output rows; PE q runs jobs q, q + P, ... Per job:

* DMA: the input rows the job's output rows read, into a slab [pt, rows, Wp] whose border
  columns (padding, and what ceil_mode's last window reaches past it) hold the pad value
  (-inf for max, 0 for avg): they are set once at the start and never written again.
* SIMD: for averages, a bf16/fp16 slab is widened to fp32 (sums are fp32); maxima are exact in
  the input's dtype and stay in it.
* MLU: slab rows above or below the input are set to the pad value; a horizontal stride splits
  the slab into its column phases (one strided copy per phase).
* SIMD, horizontal pass: one elementwise max/add per kernel column over the whole flat slab;
  a window's column j is the same flat buffer shifted by j's offset in its phase.
* MLU: a vertical stride splits the rows into their phases; SIMD, vertical pass: one
  elementwise op per kernel row, then the scale by 1/count for averages, rounding to the
  output dtype.
* DMA: the job's output rows back, one DMA per plane (or per row when that is fewer).

A window over the whole plane (global pooling, as CNN heads do) is one SIMD row reduction per
job instead. Every stage has two buffers, and a job's load waits only for the store of the job
two before it, so consecutive jobs overlap. Buffers read at a shift carry a tail of pad values
past their end, so the flat passes never read memory nothing wrote (the outputs there are not
stored). Average pools whose count varies over the output (padding not counted, ceil_mode
past the padding) stay on the host, as do 3-D pools and `ember.adaptive_pool` (non-divisible
bins; divisible ones, the global average included, are `ember.pool`s).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ops.kernel import (
    ISA_DTYPE,
    ISA_ITEMSIZE,
    KernelCall,
    KernelTemplate,
    LocalArena,
    Placement,
    local_bytes,
    register_kernel,
    streaming_dma_cycles,
)
from ops.kernels.matmul_tiles import _cdiv
from ops.kernels.window_tiles import RowTile, Window, emit_fill_tile
from simulator.isa import Engine

ALIGN = 64
NBUF = 2


@dataclass(frozen=True)
class PoolPlan:
    pt: int       # planes per job
    nr: int       # output rows per job

    def __str__(self) -> str:
        return f"{self.pt}planes x {self.nr}rows"


@dataclass(frozen=True)
class _Geom(Window):
    planes: int
    kind: str
    scale: float           # 1 / count for averages
    dtype: str
    out_dtype: str

    @property
    def es(self) -> int:
        return ISA_ITEMSIZE[self.dtype]

    @property
    def work(self) -> str:
        """The dtype the window passes compute in: fp32 for sums, the input's own for maxima
        (exact in any dtype)."""
        return self.dtype if self.kind == "max" else "fp32"

    @property
    def ws(self) -> int:
        return ISA_ITEMSIZE[self.work]

    @property
    def widen(self) -> bool:
        return self.work != self.dtype

    @property
    def is_global(self) -> bool:
        return (self.kh, self.kw, self.OH, self.OW, self.ph, self.pw) == (self.H, self.W, 1, 1, 0, 0)

    @property
    def Wp(self) -> int:
        """Slab row length: the padded row and what the last window reaches, in whole strides."""
        reach = max(self.W + 2 * self.pw, (self.OW - 1) * self.sw + (self.kw - 1) * self.dw + 1)
        return _cdiv(reach, self.sw) * self.sw

    @property
    def Wq(self) -> int:
        return self.Wp // self.sw

    @property
    def fill(self) -> float:
        return -math.inf if self.kind == "max" else 0.0


def _geom(call: KernelCall) -> _Geom:
    a = call.attrs
    x = call.inputs[0]
    window = Window.of(x.shape, a["kernel"], a["stride"], a["padding"], a["dilation"], call.output.shape)
    count = a["divisor"] or window["kh"] * window["kw"]
    return _Geom(**window, planes=math.prod(x.shape[:-len(a["kernel"])]), kind=a["kind"], scale=1.0 / count,
                 dtype=x.dtype, out_dtype=call.output.dtype)


def _constant_count(geo: _Geom, attrs) -> bool:
    """Whether every average window divides by the same count (the scale)."""
    if geo.kind == "max" or attrs["divisor"]:
        return True
    hi_h = (geo.OH - 1) * geo.sh + (geo.kh - 1) * geo.dh + 1
    hi_w = (geo.OW - 1) * geo.sw + (geo.kw - 1) * geo.dw + 1
    if attrs["count_include_pad"]:     # windows must stay inside the padded input
        return hi_h <= geo.H + 2 * geo.ph and hi_w <= geo.W + 2 * geo.pw
    return geo.ph == geo.pw == 0 and hi_h <= geo.H and hi_w <= geo.W


@dataclass(frozen=True)
class _Tile(RowTile):
    """A job: output rows of `planes` planes from plane `p0`."""
    p0: int
    planes: int


def _tiles(geo: _Geom, p: PoolPlan) -> list[_Tile]:
    return [_Tile(**RowTile.of(oh0, min(p.nr, geo.OH - oh0), geo.H, geo.kh, geo.sh, geo.ph, geo.dh),
                  p0=p0, planes=min(p.pt, geo.planes - p0))
            for p0 in range(0, geo.planes, p.pt) for oh0 in range(0, geo.OH, p.nr)]


class _Buffers:
    def __init__(self, geo: _Geom, p: PoolPlan):
        arena = LocalArena(ALIGN)
        if geo.is_global:
            n = p.pt * geo.H * geo.W
            self.raw = [arena.take(n * geo.es) for _ in range(NBUF)]
            self.red = [arena.take(p.pt * 4) for _ in range(NBUF)]
            self.total = arena.end
            return
        rows = (p.nr - 1) * geo.sh + (geo.kh - 1) * geo.dh + 1
        self.rows = _cdiv(rows, geo.sh) * geo.sh          # slab rows per plane, in whole strides
        n = p.pt * self.rows * geo.Wp
        self.n = n
        # buffers read at a shift (a window's column or row offset) carry a tail of pad values
        self.tail = self.rows * geo.Wp
        ws = geo.ws
        tail = self.tail * ws

        def fp32(elems):
            return [arena.take(elems * ws + tail) for _ in range(NBUF)]

        nq = n // geo.sw
        self.phase_stride = nq * ws + tail           # one column phase and its tail
        self.rphase_stride = nq // geo.sh * ws + tail  # one row phase and its tail
        self.slab = fp32(n)
        self.raw = [arena.take(n * geo.es) for _ in range(NBUF)] if geo.widen else self.slab
        if geo.sw > 1:
            self.phase = [arena.take(geo.sw * self.phase_stride) for _ in range(NBUF)]
        else:
            self.phase = self.slab
        self.hbuf = fp32(nq)
        if geo.sh > 1:
            self.rphase = [arena.take(geo.sh * self.rphase_stride) for _ in range(NBUF)]
        else:
            self.rphase, self.rphase_stride = self.hbuf, nq * ws + tail
        self.vbuf = [arena.take(nq // geo.sh * 4) for _ in range(NBUF)]
        tails = {b + n * ws for b in self.slab} | {b + nq * ws for b in self.hbuf}
        tails |= {b + i * self.phase_stride + nq * ws for b in self.phase for i in range(geo.sw)}
        tails |= {b + i * self.rphase_stride + nq // geo.sh * ws for b in self.rphase for i in range(geo.sh)}
        self.tails = sorted(tails)
        self.fill_elems = self.rows * geo.Wp
        self.fill = arena.take(self.fill_elems * ws)
        self.fill_raw = arena.take(self.fill_elems * geo.es)
        self.total = arena.end


@dataclass(frozen=True)
class _Cmd:
    """One command of a stage: its engine, cost in cycles and how to emit it."""
    engine: Engine
    cycles: float
    emit: Callable[..., Any]       # emit(pe, wait=..., signal=...)


class _Stages:
    """The commands of every stage of a job, for the emitter and the cost model alike."""

    def __init__(self, call: KernelCall, geo: _Geom, p: PoolPlan, chip, buf: _Buffers, active: int):
        self.call, self.geo, self.p, self.chip, self.buf, self.active = call, geo, p, chip, buf, active

    def _dma(self, nbytes: int, space: str) -> float:
        return streaming_dma_cycles(nbytes, space, self.active, self.chip)

    def _simd(self, n: int, rows: int = 0) -> float:
        w = self.chip.simd.elems_per_cycle
        return (rows * _cdiv(n, w) if rows else _cdiv(n, w)) + self.chip.simd.latency_cycles

    def _mlu(self, nbytes: int) -> float:
        return _cdiv(nbytes, self.chip.mlu.bytes_per_cycle) + self.chip.mlu.latency_cycles

    def stages(self, t: _Tile, slot: int) -> list[list[_Cmd]]:
        return self._global(t, slot) if self.geo.is_global else self._windows(t, slot)

    def _global(self, t: _Tile, slot: int) -> list[list[_Cmd]]:
        geo, buf = self.geo, self.buf
        x, o = self.call.inputs[0], self.call.output
        hw = geo.H * geo.W
        oes = ISA_ITEMSIZE[geo.out_dtype]
        raw, red = buf.raw[slot], buf.red[slot]
        load = [_Cmd(Engine.DMA, self._dma(t.planes * hw * geo.es, x.space),
                     lambda pe, **kw: pe.dma(x.space, x.addr + t.p0 * hw * geo.es, "local", raw,
                                             nbytes=t.planes * hw * geo.es, **kw))]
        fn = "MAX" if geo.kind == "max" else "ADD"
        if geo.kind == "max":
            compute = [_Cmd(Engine.SIMD, self._simd(hw, t.planes),
                            lambda pe, **kw: pe.simd_row_reduce(fn, raw, red, t.planes, hw, dtype=geo.dtype,
                                                                out_dtype=geo.out_dtype, **kw))]
        else:
            compute = [_Cmd(Engine.SIMD, self._simd(hw, t.planes),
                            lambda pe, **kw: pe.simd_row_reduce(fn, raw, red, t.planes, hw, dtype=geo.dtype,
                                                                out_dtype="fp32", **kw)),
                       _Cmd(Engine.SIMD, self._simd(t.planes),
                            lambda pe, **kw: pe.simd_scalar("MUL", red, red, t.planes, geo.scale, dtype="fp32",
                                                            out_dtype=geo.out_dtype, **kw))]
        store = [_Cmd(Engine.DMA, self._dma(t.planes * oes, o.space),
                      lambda pe, **kw: pe.dma("local", red, o.space, o.addr + t.p0 * oes, nbytes=t.planes * oes,
                                              **kw))]
        return [load, compute, store]

    def _windows(self, t: _Tile, slot: int) -> list[list[_Cmd]]:
        geo, buf, p = self.geo, self.buf, self.p
        x, o = self.call.inputs[0], self.call.output
        es, oes, ws = geo.es, ISA_ITEMSIZE[geo.out_dtype], geo.ws
        Wp, Wq, R = geo.Wp, geo.Wq, buf.rows
        plane_in = geo.H * geo.W * es
        raw, slab, phase = buf.raw[slot], buf.slab[slot], buf.phase[slot]
        hbuf, rphase, vbuf = buf.hbuf[slot], buf.rphase[slot], buf.vbuf[slot]
        stages: list[list[_Cmd]] = []
        # load the valid input rows into the slab's interior: per plane, or per row if fewer
        load = []
        if t.valid > 0:
            src = x.addr + t.p0 * plane_in + (t.ih0 + t.ztop) * geo.W * es
            dst = raw + (t.ztop * Wp + geo.pw) * es
            if t.planes <= t.valid:
                for q in range(t.planes):
                    load.append(_Cmd(Engine.DMA, self._dma(t.valid * geo.W * es, x.space),
                                     lambda pe, q=q, **kw: pe.dma(x.space, src + q * plane_in, "local",
                                                                  dst + q * R * Wp * es, rows=t.valid,
                                                                  row_bytes=geo.W * es, dst_stride=Wp * es, **kw)))
            else:
                for r in range(t.valid):
                    load.append(_Cmd(Engine.DMA, self._dma(t.planes * geo.W * es, x.space),
                                     lambda pe, r=r, **kw: pe.dma(x.space, src + r * geo.W * es, "local",
                                                                  dst + r * Wp * es, rows=t.planes,
                                                                  row_bytes=geo.W * es, src_stride=plane_in,
                                                                  dst_stride=R * Wp * es, **kw)))
        stages.append(load)
        n = buf.n
        if geo.widen:
            stages.append([_Cmd(Engine.SIMD, self._simd(n),
                                lambda pe, **kw: pe.simd_unary("copy", raw, slab, n, dtype=geo.dtype,
                                                               out_dtype=geo.work, **kw))])
        mlu = []
        for z, r0 in ((t.ztop, 0), (t.zbot, t.rows_in - t.zbot)):
            if z:
                mlu.append(_Cmd(Engine.MLU, self._mlu(p.pt * z * Wp * ws),
                                lambda pe, z=z, r0=r0, **kw: pe.mlu_copy2d(buf.fill, slab + r0 * Wp * ws, p.pt,
                                                                           z * Wp * ws, src_stride=0,
                                                                           dst_stride=R * Wp * ws, **kw)))
        col = [(j * geo.dw) % geo.sw for j in range(geo.kw)]
        if geo.sw > 1:
            for b in sorted(set(col)):
                mlu.append(_Cmd(Engine.MLU, self._mlu(n // geo.sw * ws),
                                lambda pe, b=b, **kw: pe.mlu_copy2d(slab + b * ws, phase + b * buf.phase_stride,
                                                                    n // geo.sw, ws, src_stride=geo.sw * ws,
                                                                    dst_stride=ws, **kw)))
        stages.append(mlu)           # (empty for some jobs: every job has the same stages)
        fn = "MAX" if geo.kind == "max" else "ADD"
        nq = n // geo.sw                      # flat elements of one phase
        shift = [(j * geo.dw) // geo.sw for j in range(geo.kw)]
        nh = nq

        def src_h(j):
            return phase + col[j] * buf.phase_stride + shift[j] * ws

        stages.append(self._reduce(fn, [src_h(j) for j in range(geo.kw)], hbuf, nh, geo.work))
        rows_q = nq // Wq                     # rows of hbuf
        if geo.sh > 1:
            stages.append([_Cmd(Engine.MLU, self._mlu(nq // geo.sh * ws),
                                lambda pe, b=b, **kw: pe.mlu_copy2d(hbuf + b * Wq * ws, rphase + b * buf.rphase_stride,
                                                                    rows_q // geo.sh, Wq * ws,
                                                                    src_stride=geo.sh * Wq * ws, dst_stride=Wq * ws,
                                                                    **kw))
                           for b in sorted({(i * geo.dh) % geo.sh for i in range(geo.kh)})])
        nv_all = nq // geo.sh
        rsh = [(i * geo.dh) // geo.sh * Wq for i in range(geo.kh)]
        rph = [(i * geo.dh) % geo.sh * buf.rphase_stride for i in range(geo.kh)]
        nv = nv_all
        last = "fp32" if geo.kind == "avg" else geo.out_dtype
        vert = self._reduce(fn, [rphase + rph[i] + rsh[i] * ws for i in range(geo.kh)], vbuf, nv, last)
        if geo.kind == "avg":
            vert.append(_Cmd(Engine.SIMD, self._simd(nv),
                             lambda pe, **kw: pe.simd_scalar("MUL", vbuf, vbuf, nv, geo.scale, dtype="fp32",
                                                             out_dtype=geo.out_dtype, **kw)))
        stages.append(vert)
        # store: output (q, oh, ow) is vbuf[(q * R / sh + oh) * Wq + ow] in the output dtype
        store = []
        per_plane = R // geo.sh * Wq
        out = o.addr + (t.p0 * geo.OH + t.oh0) * geo.OW * oes
        if t.planes <= t.rows:
            for q in range(t.planes):
                store.append(_Cmd(Engine.DMA, self._dma(t.rows * geo.OW * oes, o.space),
                                  lambda pe, q=q, **kw: pe.dma("local", vbuf + q * per_plane * oes, o.space,
                                                               out + q * geo.OH * geo.OW * oes, rows=t.rows,
                                                               row_bytes=geo.OW * oes, src_stride=Wq * oes,
                                                               dst_stride=geo.OW * oes, **kw)))
        else:
            for r in range(t.rows):
                store.append(_Cmd(Engine.DMA, self._dma(t.planes * geo.OW * oes, o.space),
                                  lambda pe, r=r, **kw: pe.dma("local", vbuf + r * Wq * oes, o.space,
                                                               out + r * geo.OW * oes, rows=t.planes,
                                                               row_bytes=geo.OW * oes, src_stride=per_plane * oes,
                                                               dst_stride=geo.OH * geo.OW * oes, **kw)))
        stages.append(store)
        return stages

    def _reduce(self, fn: str, srcs: list[int], dst: int, n: int, out_dtype: str) -> list[_Cmd]:
        """dst = fn over the buffers at srcs (n elements each of the work dtype; the partial
        results are in the work dtype too, which is exact for maxima and fp32 for sums)."""
        work = self.geo.work
        if len(srcs) == 1:
            return [_Cmd(Engine.SIMD, self._simd(n),
                         lambda pe, **kw: pe.simd_unary("copy", srcs[0], dst, n, dtype=work, out_dtype=out_dtype,
                                                        **kw))]
        cmds = []
        for i in range(1, len(srcs)):
            a = srcs[0] if i == 1 else dst
            od = out_dtype if i == len(srcs) - 1 else work
            cmds.append(_Cmd(Engine.SIMD, self._simd(n),
                             lambda pe, a=a, b=srcs[i], od=od, **kw: pe.simd_binary(fn, a, b, dst, n, dtype=work,
                                                                                     out_dtype=od, **kw)))
        return cmds


def _job_stages(call, geo, p, chip, active):
    buf = _Buffers(geo, p)
    return buf, _Stages(call, geo, p, chip, buf, active)


class PoolTemplate(KernelTemplate):
    """Max and average pooling: slabs by DMA, window columns lined up by the MLU, separable
    max/add passes on the SIMD engine."""
    ops = ("pool",)

    def accepts(self, op: str, operands, result, attrs, chip=None) -> bool:
        x = operands[0]
        if x is None or len(attrs["kernel"]) not in (1, 2):
            return False
        call = KernelCall(op, (Placement("sram", 0, tuple(x.shape), ISA_DTYPE.get(x.dtype, "fp32")),),
                          Placement("sram", 0, tuple(result.shape), ISA_DTYPE.get(result.dtype, "fp32")),
                          dict(attrs))
        geo = _geom(call)
        if not _constant_count(geo, attrs):
            return False
        return _Buffers(geo, PoolPlan(1, 1)).total <= local_bytes(chip)

    def flops(self, call: KernelCall) -> int:
        geo = _geom(call)
        return geo.planes * geo.OH * geo.OW * geo.kh * geo.kw

    def _tile_options(self, geo: _Geom, chip) -> Iterator[PoolPlan]:
        P = chip.num_pes
        if geo.is_global:
            for pt in sorted({_cdiv(geo.planes, P * k) for k in (1, 2, 4, 8)} | {1}):
                yield PoolPlan(pt, 1)
            return
        for nr in sorted({min(geo.OH, r) for r in (1, 2, 4, 8, 16, 32)} | {_cdiv(geo.OH, d) for d in (1, 2, 4)}):
            for pt in sorted({1, 2, 4, 8, 16} | {_cdiv(geo.planes, P * k) for k in (1, 2, 4)}):
                if pt > 1 and nr < geo.OH:
                    continue
                yield PoolPlan(min(pt, geo.planes), nr)

    def plans(self, call: KernelCall, chip: Any) -> Iterator[PoolPlan]:
        geo = _geom(call)
        for p in self._tile_options(geo, chip):
            if _Buffers(geo, p).total <= chip.local_mem.bytes:
                yield p

    def predict(self, call: KernelCall, plan: PoolPlan, chip: Any) -> int:
        """The busiest PE's jobs as a pipeline of stages on their engines: each engine's busy
        time per job bounds the period, and a job's whole chain over the buffers it cycles
        through bounds it too; plus the first job's chain and the last job's store."""
        geo = _geom(call)
        tiles = _tiles(geo, plan)
        P = chip.num_pes
        active = min(P, len(tiles))
        _, st = _job_stages(call, geo, plan, chip, active)
        memo: dict = {}

        def cost(t):
            key = (t.planes, t.rows, t.ztop, t.zbot, t.valid)
            if key not in memo:
                stages = st.stages(t, 0)
                busy: dict = {}
                for s in stages:
                    for c in s:
                        busy[c.engine] = busy.get(c.engine, 0.0) + c.cycles
                chain = sum(c.cycles for s in stages for c in s)
                memo[key] = (max(max(busy.values()), chain / NBUF), chain)
            return memo[key]

        mine = tiles[::P]
        total = sum(cost(t)[0] for t in mine)
        period, chain = cost(mine[0])
        return int(self._setup_cycles(call, geo, plan, chip, st) + total + chain - period)

    def _setup_cycles(self, call, geo: _Geom, p: PoolPlan, chip, st: _Stages) -> float:
        """The pad-value tile and the slabs set to it, before the first load (`_emit_setup`)."""
        if geo.is_global:
            return 0.0
        buf = st.buf
        k = buf.fill_elems
        cyc = st._dma(min(call.inputs[0].nbytes, k), call.inputs[0].space) + (2 + geo.widen) * st._simd(k)
        cyc += NBUF * st._mlu(p.pt * buf.rows * geo.Wp * geo.es) + len(buf.tails) * st._mlu(buf.tail * geo.ws)
        return cyc

    def emit(self, call: KernelCall, plan: PoolPlan, chip: Any, builder: Any) -> None:
        geo = _geom(call)
        tiles = _tiles(geo, plan)
        P = chip.num_pes
        buf, st = _job_stages(call, geo, plan, chip, min(P, len(tiles)))
        for q in range(min(P, len(tiles))):
            pe = builder.pe(q)
            mine = tiles[q::P]
            ready = self._emit_setup(call, geo, plan, buf, pe, builder)
            jobs = [st.stages(t, i % NBUF) for i, t in enumerate(mine)]
            n_st = len(jobs[0])
            done = [[builder.token() for _ in range(NBUF)] for _ in range(n_st)]
            # per engine, in queue order: loads run one job ahead of stores
            order = []
            for i, stages in enumerate(jobs):
                for k in range(n_st):
                    key = i + 1.5 if k == n_st - 1 else i
                    order.append((key, k, i))
            order.sort()
            first = True
            for _, k, i in order:
                slot, use = i % NBUF, i // NBUF
                cmds = jobs[i][k]
                eng = cmds[0].engine if cmds else (Engine.DMA if k == 0 else Engine.SIMD)
                if k == 0 and first and ready is not None:
                    pe.nop(Engine.DMA, wait=ready)
                    first = False
                if k == 0 and use:      # every buffer of this slot is free once its last job is stored
                    pe.nop(eng, wait=(done[n_st - 1][slot], use))
                prev = (done[k - 1][slot], use + 1) if k else None
                if not cmds:
                    pe.nop(eng, wait=prev, signal=done[k][slot])
                    continue
                for ci, c in enumerate(cmds):
                    c.emit(pe, wait=prev if ci == 0 else None, signal=done[k][slot] if ci == len(cmds) - 1 else None)

    def _emit_setup(self, call, geo: _Geom, p: PoolPlan, buf: _Buffers, pe, builder):
        """The pad-value tile, and every slab set to it (their borders are never written again).
        Returns the wait the first load needs."""
        if geo.is_global:
            return None
        x = call.inputs[0]
        tok = builder.token()
        k = buf.fill_elems
        emit_fill_tile(pe, x, buf.fill_raw, buf.fill, k, geo.fill, geo.work, tok)
        # slabs: fp32 ones directly, narrow ones through a rounding copy of the tile
        row = geo.Wp
        src, es = buf.fill, geo.ws
        if geo.widen:
            pe.simd_unary("copy", buf.fill, buf.fill_raw, k, dtype=geo.work, out_dtype=geo.dtype, signal=tok)
            src, es = buf.fill_raw, geo.es
        pe.nop(Engine.MLU, wait=(tok, 2 + geo.widen))
        for slot in range(NBUF):
            pe.mlu_copy2d(src, buf.raw[slot], p.pt * buf.rows, row * es, src_stride=0, dst_stride=row * es)
        for addr in buf.tails:
            pe.mlu_copy2d(buf.fill, addr, 1, buf.tail * geo.ws)
        pe.nop(Engine.MLU, signal=tok)
        return (tok, 3 + geo.widen)


register_kernel(PoolTemplate())
