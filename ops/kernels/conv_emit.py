"""The convolution kernel's command emission: per PE, weight tiles and input slabs by DMA,
patches by the MLU, the DPE's K loop, the epilogue (dequantization, bias, rounding) and the
store."""
from __future__ import annotations

from ops.kernel import ISA_ITEMSIZE, KernelCall
from ops.kernels.conv_tiles import (ConvPlan, _Buffers, _Geom, _clears, _im2col, _inits, _jobs_of, _k_steps,
                                    _row_tile)
from ops.kernels.matmul_emit import _lin
from ops.kernels.matmul_tiles import _cdiv
from ops.kernels.window_tiles import emit_fill_tile
from simulator.isa import Engine


class _Emitter:
    def __init__(self, call: KernelCall, geo: _Geom, p: ConvPlan, chip, builder):
        self.call, self.geo, self.p, self.chip, self.b = call, geo, p, chip, builder
        self.R, self.C = chip.pe_grid.rows, chip.pe_grid.cols
        self.buf = _Buffers(geo, p)
        self.steps = _k_steps(geo, p)
        self.nk = len(self.steps)
        self.nt = p.nr * geo.OW
        self.tiles = [_row_tile(geo, p.nr, i) for i in range(_cdiv(geo.OH, p.nr))]

    def run(self) -> None:
        b, p = self.b, self.p
        pe_jobs = [_jobs_of(self.geo, p, self.R, self.C, q) for q in range(self.R * self.C)]
        # weight-tile tokens per sharing group (a PE, or a PE column): "full" counts the parts
        # fetched, "free" the consumers done with a slot
        self.a_full, self.a_free = {}, {}
        for q in range(self.R * self.C):
            key = self.group(q)
            if key not in self.a_full:
                self.a_full[key] = [b.token() for _ in range(p.nbuf)]
                self.a_free[key] = [b.token() for _ in range(p.nbuf)]
        for q, jobs in enumerate(pe_jobs):
            if jobs:
                self.emit_pe(q, jobs)

    def group(self, q: int):
        return ("pe", q) if self.p.share == 1 else ("col", q % self.C)

    def emit_pe(self, q: int, jobs) -> None:
        b, p = self.b, self.p
        pe = b.pe(q)
        tok = {name: b.token() for name in ("zero", "bias", "scale", "dp", "ep", "st")}
        for name in ("ld_s", "mlu", "dpe"):
            tok[name] = [b.token() for _ in range(p.nbuf)]
        self.tok = tok
        self.part = q // self.C if p.share > 1 else 0     # which rows of a weight tile this PE fetches
        self.a_full_pe, self.a_free_pe = self.a_full[self.group(q)], self.a_free[self.group(q)]
        real = [j for j in jobs if j[2] is not None]
        if real:
            self.emit_setup(pe)
        self.emit_dma(pe, jobs)
        if real and not self.geo.direct:
            self.emit_mlu(pe, real)
        self.emit_dpe(pe, jobs)
        if real:
            self.emit_epilogue(pe, real)

    # --- setup: the zero tile, cleared patch buffers, the bias in fp32, the dequantization ----
    def emit_setup(self, pe) -> None:
        geo, buf, tok, p = self.geo, self.buf, self.tok, self.p
        x = self.call.inputs[0]
        es, nt = geo.es, self.nt
        init_patch, init_slab = _inits(geo, p)
        if init_patch or init_slab or any(t.ztop or t.zbot for t in self.tiles):
            emit_fill_tile(pe, x, buf.zero_raw, buf.zero, buf.zero_elems, 0.0, geo.dtype, tok["zero"])
            pe.nop(Engine.MLU, wait=(tok["zero"], 2))
        # patch buffers start as zeros: pixels whose taps miss the input are never written, and
        # columns past a short row tile are multiplied but not stored
        for slot in range(p.nbuf):
            if init_patch and geo.direct:     # (else the MLU clears each slot before its first use)
                pe.mlu_copy2d(buf.zero, buf.patch[slot], p.cc * geo.taps, nt * es, src_stride=0,
                              dst_stride=nt * es)
            if init_slab:      # slab columns past the input are read by the phase split
                pe.mlu_copy2d(buf.zero, buf.slab[slot], buf.slab_bytes // (geo.Ws * es), geo.Ws * es,
                              src_stride=0, dst_stride=geo.Ws * es)
        if geo.direct and init_patch or init_slab:   # the DMA writes these buffers next
            pe.nop(Engine.MLU, signal=tok["zero"])
            pe.nop(Engine.DMA, wait=(tok["zero"], 3))
        # the epilogue's per-channel vectors, whole; the SIMD engine (in order) waits for them here
        if geo.has_bias:
            bias = self.call.inputs[2]
            pe.dma(bias.space, bias.addr, "local", buf.bias_raw, nbytes=geo.O * ISA_ITEMSIZE[geo.bias_dtype],
                   signal=tok["bias"])
            if buf.bias32 == buf.bias_raw:
                pe.nop(Engine.SIMD, wait=(tok["bias"], 1))
            else:
                pe.simd_unary("copy", buf.bias_raw, buf.bias32, geo.O, dtype=geo.bias_dtype, out_dtype="fp32",
                              wait=(tok["bias"], 1))
        if geo.scaled:
            d = self.call.inputs[3]
            pe.dma(d.space, d.addr, "local", buf.scale, nbytes=geo.O * 4, signal=tok["scale"])
            pe.nop(Engine.SIMD, wait=(tok["scale"], 1))

    # --- helpers ----------------------------------------------------------------------------
    def m_of(self, oi: int) -> int:
        return min(self.p.mt, self.geo.Og - oi * self.p.mt)

    def _steps(self, pe, s0: int, s1: int, emit_step, first_plain: bool = False) -> None:
        """emit_step(s, looped) for steps s0..s1-1: whole groups of nbuf full-size steps as one
        repeat block (operands advance per iteration), the rest plain."""
        p = self.p
        s = s0
        if first_plain and s < s1:
            emit_step(s, False)
            s += 1
        nfull = sum(1 for x in range(s, s1) if self.steps[x] == p.cc)
        n_iter = nfull // p.nbuf
        if n_iter >= 2:
            with pe.repeat(n_iter):
                for j in range(p.nbuf):
                    emit_step(s + j, True)
            s += n_iter * p.nbuf
        for s in range(s, s1):  # noqa: B020 (the plain tail after the loop)
            emit_step(s, False)

    def _wait(self, token, use: int, looped: bool):
        if looped:
            return (token, _lin(use, 1, True))
        return (token, use) if use else None

    # --- DMA queue ----------------------------------------------------------------------------
    def emit_dma(self, pe, jobs) -> None:
        p = self.p
        qa = qr = 0              # steps so far: all (weight slots), of real jobs (slab/patch slots)
        pending = None           # (job, index among real jobs) whose store is still to emit
        n_real = 0
        for job in jobs:
            real = job[2] is not None
            head = min(p.nbuf, self.nk) if pending is not None else self.nk

            def load(s, looped, job=job, qa=qa, qr=qr, real=real):
                if real:
                    self._load_slab(pe, job, s, qr + s, looped)
                self._load_weights(pe, job, s, qa + s, looped)

            self._steps(pe, 0, head, load)
            if pending is not None:
                self._store(pe, *pending)
                pending = None
            self._steps(pe, head, self.nk, load)
            qa += self.nk
            if real:
                qr += self.nk
                pending = (job, n_real)
                n_real += 1
        if pending is not None:
            self._store(pe, *pending)

    def _load_slab(self, pe, job, s, q, looped) -> None:
        geo, p, buf, tok = self.geo, self.p, self.buf, self.tok
        g, _, n, pi = job
        es = geo.es
        slot, use = q % p.nbuf, q // p.nbuf
        stride_iter = p.nbuf * p.cc          # channels a loop iteration advances
        c0 = s * p.cc
        ccs = self.steps[s]
        t = self.tiles[pi]
        x = self.call.inputs[0]
        # the valid input rows of ccs channels, behind the MLU's (or DPE's) use of the slot
        free = tok["dpe"] if geo.direct else tok["mlu"]
        wait = self._wait(free[slot], use, looped)
        src = x.addr + ((n * geo.C + g * geo.Cg + c0) * geo.H * geo.W + (t.ih0 + t.ztop) * geo.W) * es
        chan = geo.H * geo.W * es
        dst = buf.slab[slot] + t.ztop * geo.Ws * es
        if t.valid <= 0:
            pe.nop(Engine.DMA, wait=wait, signal=tok["ld_s"][slot])
        elif geo.Ws == geo.W:
            pe.dma(x.space, _lin(src, stride_iter * chan, looped), "local", dst, rows=ccs,
                   row_bytes=t.valid * geo.W * es, src_stride=chan,
                   dst_stride=self.nt * es if geo.direct else t.rows_in * geo.W * es,
                   wait=wait, signal=tok["ld_s"][slot])
        else:
            for c in range(ccs):
                pe.dma(x.space, _lin(src + c * chan, stride_iter * chan, looped), "local",
                       dst + c * t.rows_in * geo.Ws * es, rows=t.valid, row_bytes=geo.W * es,
                       src_stride=geo.W * es, dst_stride=geo.Ws * es, wait=wait if c == 0 else None,
                       signal=tok["ld_s"][slot] if c == ccs - 1 else None)

    def _load_weights(self, pe, job, s, q, looped) -> None:
        """This PE's part of the weight tile [m, ccs*kh*kw] of step s: all of it, or (shared) a
        block of its rows, multicast down the PE column."""
        geo, p, buf = self.geo, self.p, self.buf
        g, oi = job[0], job[1]
        es = geo.es
        slot, use = q % p.nbuf, q // p.nbuf
        m = self.m_of(oi)
        per = _cdiv(m, p.share)
        r0, r1 = min(m, self.part * per), min(m, (self.part + 1) * per)
        k = self.steps[s] * geo.taps
        kk = geo.Cg * geo.taps
        w = self.call.inputs[1]
        wait = (self.a_free_pe[slot], _lin(p.share * use, p.share, looped)) if use or looped else None
        if r1 <= r0:
            pe.nop(Engine.DMA, wait=wait, signal=self.a_full_pe[slot])
            return
        src = w.addr + ((g * geo.Og + oi * p.mt + r0) * kk + s * p.cc * geo.taps) * es
        pe.dma(w.space, _lin(src, p.nbuf * p.cc * geo.taps * es, looped), "local", buf.a[slot] + r0 * k * es,
               rows=r1 - r0, row_bytes=k * es, src_stride=kk * es, dst_pe=pe.pe,
               mcast="col" if p.share > 1 else "none", wait=wait, signal=self.a_full_pe[slot])

    def _store(self, pe, job, i) -> None:
        geo, p, buf, tok = self.geo, self.p, self.buf, self.tok
        g, oi, n, pi = job
        t = self.tiles[pi]
        o = self.call.output
        oes = ISA_ITEMSIZE[geo.out_dtype]
        wait = (tok["ep"], i + 1) if geo.has_epilogue else (tok["dp"], i + 1)
        plane = geo.OH * geo.OW
        dst = o.addr + ((n * geo.O + g * geo.Og + oi * p.mt) * plane + t.oh0 * geo.OW) * oes
        pe.dma("local", buf.acc[i % p.cbufs], o.space, dst, rows=self.m_of(oi), row_bytes=t.rows * geo.OW * oes,
               src_stride=self.nt * oes, dst_stride=plane * oes, wait=wait, signal=tok["st"])

    # --- MLU queue ----------------------------------------------------------------------------
    def emit_mlu(self, pe, jobs) -> None:
        geo, p, buf, tok = self.geo, self.p, self.buf, self.tok
        clear = _inits(geo, p)[0] and not geo.direct
        q0 = 0
        for job in jobs:
            t = self.tiles[job[3]]

            def step(s, looped, q0=q0, t=t):
                q = q0 + s
                slot, use = q % p.nbuf, q // p.nbuf
                # the patch slot is free once the DPE has used it
                pe.nop(Engine.MLU, wait=self._wait(tok["dpe"][slot], use, looped))
                for c in _clears(geo, p, self.chip) if clear and q < p.nbuf else ():   # a slot's first use
                    pe.mlu_copy2d(buf.at(c.src, slot), buf.at(c.dst, slot), c.rows, c.row_bytes,
                                  src_stride=c.src_stride, dst_stride=c.dst_stride)
                copies = _im2col(geo, t, self.steps[s], self.nt)
                for ci, c in enumerate(copies):
                    pe.mlu_copy2d(buf.at(c.src, slot), buf.at(c.dst, slot), c.rows, c.row_bytes,
                                  src_stride=c.src_stride, dst_stride=c.dst_stride,
                                  wait=(tok["ld_s"][slot], _lin(use + 1, 1, looped)) if ci == 0 else None)
                pe.nop(Engine.MLU, signal=tok["mlu"][slot])

            first = min(p.nbuf, self.nk) if q0 == 0 else 0      # plain, for the clearing
            self._steps(pe, 0, first, step)
            self._steps(pe, first, self.nk, step)
            q0 += self.nk

    # --- DPE queue ----------------------------------------------------------------------------
    def emit_dpe(self, pe, jobs) -> None:
        geo, p, buf, tok = self.geo, self.p, self.buf, self.tok
        ready = tok["ld_s"] if geo.direct else tok["mlu"]
        full, free = self.a_full_pe, self.a_free_pe
        qa = qr = i = 0
        for job in jobs:
            if job[2] is None:       # no rows of this unit: consume the shared weight tiles
                def skip(s, looped, qa=qa):
                    slot, use = (qa + s) % p.nbuf, (qa + s) // p.nbuf
                    pe.nop(Engine.DPE, wait=(full[slot], _lin(p.share * (use + 1), p.share, looped)),
                           signal=free[slot])

                self._steps(pe, 0, self.nk, skip)
                qa += self.nk
                continue
            m = self.m_of(job[1])
            cb = buf.acc[i % p.cbufs]
            if i >= p.cbufs:
                pe.nop(Engine.DPE, wait=(tok["st"], i - p.cbufs + 1))

            def step(s, looped, qa=qa, qr=qr, m=m, cb=cb):
                sa, ua = (qa + s) % p.nbuf, (qa + s) // p.nbuf
                slot, use = (qr + s) % p.nbuf, (qr + s) // p.nbuf
                pe.nop(Engine.DPE, wait=(full[sa], _lin(p.share * (ua + 1), p.share, looped)))
                pe.dpe_matmul(buf.a[sa], buf.patch[slot], cb, m, self.steps[s] * geo.taps, self.nt,
                              dtype=geo.dtype, accumulate=s > 0,
                              wait=(ready[slot], _lin(use + 1, 1, looped)), signal=tok["dpe"][slot])
                pe.nop(Engine.DPE, signal=free[sa])

            self._steps(pe, 0, self.nk, step, first_plain=True)
            pe.nop(Engine.DPE, signal=tok["dp"])
            qa += self.nk
            qr += self.nk
            i += 1

    # --- epilogue (SIMD) ----------------------------------------------------------------------
    def emit_epilogue(self, pe, jobs) -> None:
        """Per job, in place on the accumulator [m, nt] (rows are output channels): widen an int32
        one to fp32, times d[o] per row (quantized), + bias[o] per row, round to the output dtype."""
        geo, p, buf, tok = self.geo, self.p, self.buf, self.tok
        if not geo.has_epilogue:
            return
        nt = self.nt
        for i, job in enumerate(jobs):
            m = self.m_of(job[1])
            cb = buf.acc[i % p.cbufs]
            o_abs = job[0] * geo.Og + job[1] * p.mt
            wait = (tok["dp"], i + 1)
            if geo.acc_dtype != "fp32" and (geo.scaled or geo.has_bias):
                pe.simd_unary("copy", cb, cb, m * nt, dtype=geo.acc_dtype, out_dtype="fp32", wait=wait)
                wait = None
            if geo.scaled:
                out = "fp32" if geo.has_bias else geo.out_dtype
                pe.simd_row_bcast("MUL", cb, buf.scale + o_abs * 4, cb, m, nt, dtype="fp32", out_dtype=out,
                                  wait=wait, signal=None if geo.has_bias else tok["ep"])
                wait = None
            if geo.has_bias:
                pe.simd_row_bcast("add", cb, buf.bias32 + o_abs * 4, cb, m, nt, dtype="fp32",
                                  out_dtype=geo.out_dtype, wait=wait, signal=tok["ep"])
            elif not geo.scaled:
                pe.simd_unary("copy", cb, cb, m * nt, dtype=geo.acc_dtype, out_dtype=geo.out_dtype,
                              wait=wait, signal=tok["ep"])
