"""The GEMM kernel's command emission: per PE, the DMA queue's operand fetches, the MLU's
transposes, the DPE's K loop and the epilogue, with the sync tokens between them (the schedule
is described in `ops.kernels.matmul`)."""
from __future__ import annotations

import itertools

from ops.kernel import ISA_ITEMSIZE, KernelCall
from ops.kernels.matmul_cost import _Rates, _params_load
from ops.kernels.matmul_tiles import (BIAS_ROWS, MatmulPlan, _Buffers, _Gemm, _Layout, _column_params, _k_steps,
                                      _output_index, _row_scale, _tile)
from simulator.isa import Engine
from simulator.isa.program import Strided


def _lin(base: int, stride: int, looped: bool):
    return Strided(base, stride) if looped and stride else base


class _Emitter:
    def __init__(self, call: KernelCall, g: _Gemm, p: MatmulPlan, chip, builder):
        self.call, self.g, self.p, self.chip, self.b = call, g, p, chip, builder
        self.R, self.C = chip.pe_grid.rows, chip.pe_grid.cols
        self.L = _Layout(g, p, self.R, self.C)
        self.buf = _Buffers(g, p)
        self.steps = _k_steps(g.K, p.kt)
        self.nk = len(self.steps)
        self.pe_tok: dict[int, dict] = {}
        self.rates = _Rates(chip)

    # one job list, the same length on every PE
    def jobs(self, r: int, c: int):
        L, p, g = self.L, self.p, self.g
        if p.layout == "tiles":
            return L.tile_jobs(r * self.C + c)
        mpos, npos = L.pos(r, c)
        out = []
        for bi in range(g.batch):
            for u in range(L.QM):
                mi = mpos + u * L.pm
                for v in range(L.QN):
                    nj = npos + v * L.pn
                    out.append((bi, mi, nj))
        return out

    def m_tile(self, mi):
        return _tile(mi, self.p.mt, self.g.M)

    def n_tile(self, nj):
        return _tile(nj, self.p.nt, self.g.N)

    def run(self) -> None:
        p, L, b = self.p, self.L, self.b
        R, C = self.R, self.C
        # group tokens: A per PE row (shared) or per PE; B per PE column (shared) or per PE
        a_full = {}; a_free = {}; b_full = {}; b_free = {}
        for r in range(R):
            for c in range(C):
                ka = ("row", r) if L.a_shared else ("pe", r, c)
                kb = ("col", c) if L.b_shared else ("pe", r, c)
                for d_full, d_free, k in ((a_full, a_free, ka), (b_full, b_free, kb)):
                    if k not in d_full:
                        d_full[k] = [b.token() for _ in range(p.nbuf)]
                        d_free[k] = [b.token() for _ in range(p.nbuf)]
        self.a_full, self.a_free, self.b_full, self.b_free = a_full, a_free, b_full, b_free
        for r in range(R):
            for c in range(C):
                self.emit_pe(r, c)

    def emit_pe(self, r: int, c: int) -> None:
        g, L, bld = self.g, self.L, self.b
        pe = bld.pe(r, c)
        jobs = self.jobs(r, c)
        ka = ("row", r) if L.a_shared else ("pe", r, c)
        kb = ("col", c) if L.b_shared else ("pe", r, c)
        a_cons = self.C if L.a_shared else 1
        b_cons = self.R if L.b_shared else 1
        fetch_a = [(not L.a_shared) or L.a_issuer(r, t) == (r, c) for t in range(len(jobs))]
        fetch_b = [(not L.b_shared) or L.b_issuer(c, t) == (r, c) for t in range(len(jobs))]
        # which operands exist per job for this PE: A if its M tile exists (shared: whole row)
        has_a = [self.m_tile(mi)[1] > 0 and (L.a_shared or self.n_tile(nj)[1] > 0) for _, mi, nj in jobs]
        has_b = [self.n_tile(nj)[1] > 0 and (L.b_shared or self.m_tile(mi)[1] > 0) for _, mi, nj in jobs]
        real = [self.m_tile(mi)[1] > 0 and self.n_tile(nj)[1] > 0 for _, mi, nj in jobs]
        if not any(has_a) and not any(has_b):
            return
        # running load indices (q) of each operand at the start of each job
        qa, qb = [], []
        na = nb_ = 0
        for t in range(len(jobs)):
            qa.append(na); qb.append(nb_)
            na += self.nk if has_a[t] else 0
            nb_ += self.nk if has_b[t] else 0
        self.emit_dma(pe, r, c, jobs, real, has_a, has_b, qa, qb, fetch_a, fetch_b, ka, kb, a_cons, b_cons)
        if g.mlu_transposes:
            self.emit_mlu(pe, jobs, real, has_a, has_b, qb, kb)
        self.emit_dpe(pe, jobs, real, has_a, has_b, qa, qb, ka, kb)
        if any(real):
            self.emit_epilogue(pe, jobs, real)

    # --- tokens private to this PE, created lazily -------------------------------------------
    def _pe_tokens(self, pe):
        if pe.pe not in self.pe_tok:
            b = self.b
            self.pe_tok[pe.pe] = {"dp": b.token(), "ep": b.token(), "st": b.token(), "bias": b.token(),
                                      "scale": b.token(), "bconv": b.token(), "radd": b.token(),
                                      "pre": b.token(), "res": b.token(),
                                      "wt_full": [b.token() for _ in range(self.p.nbuf)],
                                      "wt_free": [b.token() for _ in range(self.p.nbuf)]}
        return self.pe_tok[pe.pe]

    # --- DMA queue ------------------------------------------------------------------------------
    def _load_a(self, pe, job, s, q, ka, a_cons, looped, nbuf_iter):
        """A[m0:m0+m, k0:k0+k] -> [m, k] for step s (q: its load index); looped: operands advance
        per iteration."""
        g, p = self.g, self.p
        bi, mi, _ = job
        m0, m = self.m_tile(mi)
        x, kb = self.call.inputs[0], g.kbytes
        src = x.addr + g.a_offsets[bi] + m0 * kb(g.K) + kb(s * p.kt)
        self._load_tile(pe, x, src, kb(nbuf_iter * p.kt), self.buf.a, m, kb(self.steps[s]), kb(g.K),
                        q, self.a_free[ka], self.a_full[ka], a_cons, looped, "row" if self.L.a_shared else "none")

    def _load_b(self, pe, job, s, q, kb, b_cons, looped, nbuf_iter):
        """B[k0:k0+k, n0:n0+n] -> [k, n], or linear's W[n0:n0+n, k0:k0+k] -> [n, k], for step s."""
        g, p = self.g, self.p
        bi, _, nj = job
        n0, n = self.n_tile(nj)
        k = self.steps[s]
        es = g.es
        w = self.call.inputs[1]
        if g.transposed_b:      # W[n0:n0+n, k0:k0+k]: into the MLU's slot, or the DPE's for MX
            nb = g.kbytes
            src, step = w.addr + n0 * nb(g.K) + nb(s * p.kt), nb(nbuf_iter * p.kt)
            dst = self.buf.w if g.mlu_transposes else self.buf.b
            rows, row_bytes, stride = n, nb(k), nb(g.K)
        else:
            src = w.addr + g.b_offsets[bi] + (s * p.kt * g.N + n0) * es
            step, dst = nbuf_iter * p.kt * g.N * es, self.buf.b
            rows, row_bytes, stride = k, n * es, g.N * es
        self._load_tile(pe, w, src, step, dst, rows, row_bytes, stride,
                        q, self.b_free[kb], self.b_full[kb], b_cons, looped, "col" if self.L.b_shared else "none")

    def _load_tile(self, pe, tensor, src, step, slots, rows, row_bytes, stride, q, free, full, cons, looped, mcast):
        """An operand tile's DMA into local buffer slot q % nbuf (`slots`: the slots' addresses): it
        waits until the slot's `cons` readers freed its previous use, and signals the slot's `full`
        token; looped, the source moves `step` bytes per iteration."""
        slot, use = q % self.p.nbuf, q // self.p.nbuf
        wait = (free[slot], _lin(cons * use, cons, looped)) if use else None
        if looped and not use:
            wait = (free[slot], Strided(0, cons))
        pe.dma(tensor.space, _lin(src, step, looped), "local", slots[slot], rows=rows, row_bytes=row_bytes,
               src_stride=stride, dst_pe=pe.pe, mcast=mcast, wait=wait, signal=full[slot])

    def emit_dma(self, pe, r, c, jobs, real, has_a, has_b, qa, qb, fetch_a, fetch_b, ka, kb, a_cons, b_cons):
        g, p = self.g, self.p
        tok = self._pe_tokens(pe)
        events = []      # (sort key, kind, payload)
        nk = self.nk
        # a run of steps [s0, s1) of job t: loads of this PE, compressed into loops
        for t, job in enumerate(jobs):
            la = fetch_a[t] and has_a[t]
            lb = fetch_b[t] and has_b[t]
            if la or lb:
                events.append(((t * nk, 1), "steps", (t, la, lb)))
        # stores: before the loads that (transitively) wait for this accumulator to drain
        real_idx = [t for t in range(len(jobs)) if real[t]]
        prev_n = prev_key = None
        for i, t in enumerate(real_idx):
            nxt = real_idx[i + 1] if i + 1 < len(real_idx) else None
            # (stores stay in job order: the DPE counts completed stores to reuse an accumulator)
            key = (min(nxt * nk + p.nbuf, len(jobs) * nk) if nxt is not None else len(jobs) * nk + 1, 0, i, 0)
            events.append((key, "store", (t, i)))
            if (g.has_bias or g.scaled) and jobs[t][2] != prev_n:
                # the bias tile of job i replaces that of job i-1 once i-1's epilogue is done,
                # which its store (just before in this queue) waits for
                # (the first one after the job's first nbuf fetches, which the DPE waits for)
                bkey = (t * nk + min(p.nbuf, nk), 0, -2, 0) if i == 0 else prev_key[:3] + (1,)
                events.append((bkey, "bias", (t, i)))
            if g.residuals or g.row_scaled:
                # a fused epilogue's residual tiles (and the rows' scales): after the job's own
                # loads (the epilogue needs them last), and after the store of job i-1, whose
                # epilogue read the buffer
                at = (t + 1) * nk
                rkey = (at, 0, -1, 0) if i == 0 else max((at, 0, -1, 0), prev_key[:3] + (2,))
                events.append((rkey, "residual", (t, i)))
            prev_n, prev_key = jobs[t][2], key
        # split step runs at store positions
        cut_points = sorted(k for k, kind, _ in events if kind in ("store", "bias"))
        items = []
        for key, kind, payload in events:
            if kind != "steps":
                items.append((key, kind, payload))
                continue
            t, la, lb = payload
            bounds = [0, nk]
            for cp in cut_points:
                s = cp[0] - t * nk
                if 0 < s < nk:
                    bounds.append(s)
            bounds = sorted(set(bounds))
            for s0, s1 in itertools.pairwise(bounds):
                items.append(((t * nk + s0, 1), "run", (t, s0, s1, la, lb)))
        items.sort(key=lambda e: e[0])
        self.bias_loads = 0
        for key, kind, payload in items:
            if kind == "run":
                t, s0, s1, la, lb = payload
                self._emit_run(pe, jobs[t], t, s0, s1, la, lb, qa[t], qb[t], ka, kb, a_cons, b_cons)
            elif kind == "store":
                t, i = payload
                self._store(pe, jobs[t], t, i, tok)
            elif kind == "residual":
                self._residual_load(pe, jobs[payload[0]], tok)
            else:
                t, i = payload
                self._column_params_load(pe, jobs[t], tok)

    def _emit_run(self, pe, job, t, s0, s1, la, lb, qa0, qb0, ka, kb, a_cons, b_cons):
        """The loads of steps [s0, s1) of one job; whole groups of nbuf full steps as a loop."""
        p = self.p
        nfull = sum(1 for s in range(s0, s1) if self.steps[s] == p.kt)   # a prefix: only the last step is short
        n_iter = nfull // p.nbuf
        s = s0
        if n_iter >= 2:
            with pe.repeat(n_iter):
                for j in range(p.nbuf):
                    if la:
                        self._load_a(pe, job, s0 + j, qa0 + s0 + j, ka, a_cons, True, p.nbuf)
                    if lb:
                        self._load_b(pe, job, s0 + j, qb0 + s0 + j, kb, b_cons, True, p.nbuf)
            s = s0 + n_iter * p.nbuf
        for s in range(s, s1):  # noqa: B020 (the plain tail after the loop)
            if la:
                self._load_a(pe, job, s, qa0 + s, ka, a_cons, False, 0)
            if lb:
                self._load_b(pe, job, s, qb0 + s, kb, b_cons, False, 0)

    def _store(self, pe, job, t, i, tok):
        g, p = self.g, self.p
        bi, mi, nj = job
        m0, m = self.m_tile(mi)
        n0, n = self.n_tile(nj)
        o = self.call.output
        oes = ISA_ITEMSIZE[g.out_dtype]
        wait_tok = tok["ep"] if self._has_epilogue() else tok["dp"]
        pe.dma("local", self.buf.c[i % p.cbufs], o.space,
               o.addr + (bi * g.M * g.N + m0 * g.N + n0) * oes, rows=m, row_bytes=n * oes,
               dst_stride=g.N * oes, wait=(wait_tok, i + 1), signal=tok["st"])

    def _residual_load(self, pe, job, tok):
        """The job's tile of each residual operand of the fused epilogue, packed [m, n]; and
        the scales of its rows (m fp32) when the activation was quantized per row."""
        g = self.g
        bi, mi, nj = job
        m0, m = self.m_tile(mi)
        n0, n = self.n_tile(nj)
        if g.row_scaled:
            rs = _row_scale(self.call)
            pe.dma(rs.space, rs.addr + (bi * g.M + m0) * 4, "local", self.buf.row_scale, nbytes=m * 4,
                   signal=tok["res"])
        for st, (raw, _) in zip(g.residuals, self.buf.res):
            src = self.call.inputs[st.operand]
            es = ISA_ITEMSIZE[st.dtype]
            pe.dma(src.space, src.addr + _output_index(g, bi, m0, n0) * es, "local", raw, rows=m,
                   row_bytes=n * es, src_stride=g.N * es, signal=tok["res"])

    def _column_params_load(self, pe, job, tok):
        """Bias (and dequantization vector) of the job's N tile, replicated over the rows the
        epilogue adds per command: each read `rows` times from memory, or read once and copied
        local to local, whichever `_params_load` finds sooner on this chip."""
        g, p = self.g, self.p
        n0, n = self.n_tile(job[2])
        rows = min(BIAS_ROWS, p.mt, g.M)
        bufs = ([(self.buf.bias_raw, tok["bias"])] if g.has_bias else []) + (
            [(self.buf.scale, tok["scale"])] if g.scaled else [])
        active = min(self.R * self.C, g.batch * self.L.Tm * self.L.Tn)
        for src_p, (raw, signal) in zip(_column_params(self.call, g), bufs):
            es = ISA_ITEMSIZE[src_p.dtype]
            if len(src_p.shape) == 0:     # a scalar bias
                row, copies, src, direct = es, rows * n - 1, src_p.addr, False
            else:
                row, copies, src = n * es, rows - 1, src_p.addr + n0 * es
                direct = _params_load(self.rates, src_p.space, row, rows, active, self.R)[0]
            if direct:
                pe.dma(src_p.space, src, "local", raw, rows=copies + 1, row_bytes=row, src_stride=0,
                       signal=signal)
                continue
            pe.dma(src_p.space, src, "local", raw, nbytes=row, signal=None if copies else signal)
            if copies:
                pe.dma("local", raw, "local", raw + row, rows=copies, row_bytes=row, src_stride=0,
                       signal=signal)

    # --- MLU queue (linear: transpose W tiles) --------------------------------------------------
    def _steps(self, pe, s0: int, emit_step) -> None:
        """emit_step(s, looped) for steps s0..nk-1: whole groups of nbuf full-size steps as one
        repeat block (operands advance per iteration), the rest plain."""
        p = self.p
        nfull = sum(1 for s in range(s0, self.nk) if self.steps[s] == p.kt)
        n_iter = nfull // p.nbuf
        s = s0
        if n_iter >= 2:
            with pe.repeat(n_iter):
                for j in range(p.nbuf):
                    emit_step(s0 + j, True)
            s = s0 + n_iter * p.nbuf
        for s in range(s, self.nk):  # noqa: B020 (the plain tail after the loop)
            emit_step(s, False)

    def emit_mlu(self, pe, jobs, real, has_a, has_b, qb, kb):
        """linear: transpose each W tile [n, k] into the DPE's [k, n] operand."""
        p, g = self.p, self.g
        tok = self._pe_tokens(pe)
        nw = 0       # transposes done on this PE (its private W^T slots)
        for t, job in enumerate(jobs):
            if not has_b[t]:
                continue
            n = self.n_tile(job[2])[1]

            def dummy(s, looped, q0=qb[t]):
                q = q0 + s
                pe.nop(Engine.MLU, wait=(self.b_full[kb][q % p.nbuf], _lin(q // p.nbuf + 1, 1, looped)),
                       signal=self.b_free[kb][q % p.nbuf])

            def step(s, looped, q0=qb[t], nw0=nw, n=n):
                q, w = q0 + s, nw0 + s
                slot, use = q % p.nbuf, q // p.nbuf
                ws, wu = w % p.nbuf, w // p.nbuf
                if wu or looped:
                    pe.nop(Engine.MLU, wait=(tok["wt_free"][ws], _lin(wu, 1, looped)))
                pe.mlu_transpose(self.buf.w[slot], self.buf.b[ws], n, self.steps[s], dtype=g.dtype,
                                 wait=(self.b_full[kb][slot], _lin(use + 1, 1, looped)),
                                 signal=tok["wt_full"][ws])
                pe.nop(Engine.MLU, signal=self.b_free[kb][slot])

            if real[t]:
                self._steps(pe, 0, step)
                nw += self.nk
            else:
                self._steps(pe, 0, dummy)

    # --- DPE queue ------------------------------------------------------------------------------
    def emit_dpe(self, pe, jobs, real, has_a, has_b, qa, qb, ka, kb):
        g, p = self.g, self.p
        tok = self._pe_tokens(pe)
        i_real = 0
        nw = 0
        for t, job in enumerate(jobs):
            if not real[t]:          # consume the shared tiles this PE has no use for
                def dummy(s, looped, t=t):
                    if has_a[t]:
                        q = qa[t] + s
                        pe.nop(Engine.DPE, wait=(self.a_full[ka][q % p.nbuf], _lin(q // p.nbuf + 1, 1, looped)),
                               signal=self.a_free[ka][q % p.nbuf])
                    if has_b[t] and not g.mlu_transposes:
                        q = qb[t] + s
                        pe.nop(Engine.DPE, wait=(self.b_full[kb][q % p.nbuf], _lin(q // p.nbuf + 1, 1, looped)),
                               signal=self.b_free[kb][q % p.nbuf])
                self._steps(pe, 0, dummy)
                continue
            m = self.m_tile(job[1])[1]
            n = self.n_tile(job[2])[1]
            cb = self.buf.c[i_real % p.cbufs]
            if i_real >= p.cbufs:
                pe.nop(Engine.DPE, wait=(tok["st"], i_real - p.cbufs + 1))
            # steps: 0 plain (no accumulate), full-size middle steps looped, the rest plain
            s = 0
            self._dpe_step(pe, job, s, qa[t], qb[t], nw, ka, kb, m, n, cb, False, False)
            s = 1
            mid = [x for x in range(1, self.nk) if self.steps[x] == p.kt]
            n_iter = len(mid) // p.nbuf
            if n_iter >= 2:
                with pe.repeat(n_iter):
                    for j in range(p.nbuf):
                        self._dpe_step(pe, job, 1 + j, qa[t], qb[t], nw, ka, kb, m, n, cb, True, True)
                s = 1 + n_iter * p.nbuf
            for s in range(s, self.nk):  # noqa: B020 (the plain tail after the loop)
                self._dpe_step(pe, job, s, qa[t], qb[t], nw, ka, kb, m, n, cb, True, False)
            pe.nop(Engine.DPE, signal=tok["dp"])
            nw += self.nk
            i_real += 1

    def _dpe_step(self, pe, job, s, qa0, qb0, nw0, ka, kb, m, n, cb, acc, looped):
        g, p = self.g, self.p
        tok = self._pe_tokens(pe)
        qa, qb = qa0 + s, qb0 + s
        sa, ua = qa % p.nbuf, qa // p.nbuf
        pe.nop(Engine.DPE, wait=(self.a_full[ka][sa], _lin(ua + 1, 1, looped)))
        if g.mlu_transposes:
            q = nw0 + s
            sb, ub = q % p.nbuf, q // p.nbuf
            full, free = tok["wt_full"][sb], tok["wt_free"][sb]
        else:
            sb, ub = qb % p.nbuf, qb // p.nbuf
            full, free = self.b_full[kb][sb], self.b_free[kb][sb]
        pe.dpe_matmul(self.buf.a[sa], self.buf.b[sb], cb, m, self.steps[s], n, dtype=g.dtype,
                      accumulate=acc, wait=(full, _lin(ub + 1, 1, looped)), signal=free)
        pe.nop(Engine.DPE, signal=self.a_free[ka][sa])

    # --- epilogue -------------------------------------------------------------------------------
    def _has_epilogue(self) -> bool:
        return self.g.has_bias or self.g.scaled or self.g.out_dtype != self.g.acc_dtype or bool(self.g.epilogue)

    def emit_epilogue(self, pe, jobs, real):
        """Per job, in place on the accumulator: + bias (or dequantize), the fused elementwise
        steps, round to the output dtype."""
        g, p = self.g, self.p
        if not self._has_epilogue():
            return
        tok = self._pe_tokens(pe)
        i_real = n_bias = 0
        last_n = None
        fused = bool(g.epilogue)
        fin = "fp32" if fused else g.out_dtype         # what the bias add / dequantization write
        done = tok["pre"] if fused else tok["ep"]
        fes = ISA_ITEMSIZE[fin]
        convert = fin != g.acc_dtype
        for t, job in enumerate(jobs):
            if not real[t]:
                continue
            m = self.m_tile(job[1])[1]
            n = self.n_tile(job[2])[1]
            cb = self.buf.c[i_real % p.cbufs]
            dp = (tok["dp"], i_real + 1)
            i_real += 1
            ready = (done, i_real)
            if g.scaled:
                if job[2] != last_n:
                    n_bias += 1
                    last_n = job[2]
                    if g.has_bias:
                        rows = min(BIAS_ROWS, p.mt, g.M)
                        pe.simd_unary("copy", self.buf.bias_raw, self.buf.bias32, rows * n, dtype=g.bias_dtype,
                                      out_dtype="fp32", wait=(tok["bias"], n_bias))
                self._dequantize(pe, cb, m, n, dp, (tok["scale"], n_bias), done, fin,
                                 (tok["res"], self._res_loads() * i_real))
            elif not g.has_bias:
                if convert:
                    pe.simd_unary("copy", cb, cb, m * n, dtype=g.acc_dtype, out_dtype=fin,
                                  wait=dp, signal=done)
                else:
                    ready = dp
            else:
                if job[2] != last_n:       # a new bias tile: widen it to the accumulator dtype
                    n_bias += 1
                    last_n = job[2]
                    rows = min(BIAS_ROWS, p.mt, g.M)
                    pe.simd_unary("copy", self.buf.bias_raw, self.buf.bias32, rows * n, dtype=g.bias_dtype,
                                  out_dtype=g.acc_dtype, wait=(tok["bias"], n_bias), signal=tok["bconv"])
                chunks = list(range(0, m, BIAS_ROWS))
                if g.acc_dtype == "int32":     # exact integer add on the reduction engine
                    pe.nop(Engine.REDUCE, wait=(tok["bconv"], n_bias))
                    for ci, r0 in enumerate(chunks):
                        last = ci == len(chunks) - 1
                        pe.re_acc(cb + r0 * n * 4, self.buf.bias32, min(BIAS_ROWS, m - r0) * n,
                                  dtype="int32", wait=dp if ci == 0 else None,
                                  signal=(tok["radd"] if convert else done) if last else None)
                    if convert:
                        pe.simd_unary("copy", cb, cb, m * n, dtype=g.acc_dtype, out_dtype=fin,
                                      wait=(tok["radd"], i_real), signal=done)
                else:
                    for ci, r0 in enumerate(chunks):
                        pe.simd_binary("add", cb + r0 * n * 4, self.buf.bias32, cb + r0 * n * fes,
                                       min(BIAS_ROWS, m - r0) * n, dtype="fp32", out_dtype=fin,
                                       wait=dp if ci == 0 else None,
                                       signal=done if ci == len(chunks) - 1 else None)
            if fused:
                self._fused_steps(pe, cb, m * n, ready, (tok["res"], self._res_loads() * i_real), tok["ep"])

    def _res_loads(self) -> int:
        """DMAs per job that signal the "res" token: residual tiles and the rows' scales."""
        return len(self.g.residuals) + int(self.g.row_scaled)

    def _fused_steps(self, pe, cb, count, ready, res_ready, done):
        """The fused elementwise steps on the fp32 tile at `cb` (after `ready`; the residual
        tiles after `res_ready`), the last one rounding to the output dtype."""
        g = self.g
        if g.residuals:
            pe.nop(Engine.SIMD, wait=res_ready)
        wait = ready
        k = 0
        for si, st in enumerate(g.epilogue):
            last = si == len(g.epilogue) - 1
            out = g.out_dtype if last else "fp32"
            signal = done if last else None
            if st.form == "unary":
                pe.simd_unary(st.fn, cb, cb, count, dtype="fp32", out_dtype=out, wait=wait, signal=signal)
            elif st.form == "scale":
                pe.simd_scalar("MUL", cb, cb, count, st.imm, dtype="fp32", out_dtype=out, wait=wait,
                               signal=signal)
            else:
                raw, wide = self.buf.res[k]
                k += 1
                if wide != raw:
                    pe.simd_unary("copy", raw, wide, count, dtype=st.dtype, out_dtype="fp32", wait=wait)
                    wait = None
                lhs, rhs = (cb, wide) if st.acc_first else (wide, cb)
                pe.simd_binary(st.fn, lhs, rhs, cb, count, dtype="fp32", out_dtype=out, wait=wait, signal=signal)
            wait = None

    def _dequantize(self, pe, cb, m, n, dp, scale_ready, done, out_dtype, rows_ready):
        """acc[m, n] (int32 -> fp32; an fp8 GEMM's is fp32 already) (-> * s[m]) -> * d[n]
        (+ bias[n]) -> `out_dtype`, packed in place."""
        g = self.g
        oes = ISA_ITEMSIZE[out_dtype]
        acc_ready = dp
        if g.acc_dtype != "fp32":
            pe.simd_unary("copy", cb, cb, m * n, dtype=g.acc_dtype, out_dtype="fp32", wait=dp)
            acc_ready = None
        if g.row_scaled:
            if acc_ready is not None:
                pe.nop(Engine.SIMD, wait=acc_ready)
                acc_ready = None
            pe.simd_row_bcast("MUL", cb, self.buf.row_scale, cb, m, n, dtype="fp32", out_dtype="fp32",
                              wait=rows_ready)
        chunks = list(range(0, m, BIAS_ROWS))
        for ci, r0 in enumerate(chunks):
            last = ci == len(chunks) - 1
            count = min(BIAS_ROWS, m - r0) * n
            src, dst = cb + r0 * n * 4, cb + r0 * n * oes
            wait = scale_ready if ci == 0 else None
            if ci == 0 and acc_ready is not None:
                pe.nop(Engine.SIMD, wait=acc_ready)
            if g.has_bias:
                pe.simd_binary("MUL", src, self.buf.scale, src, count, dtype="fp32", out_dtype="fp32", wait=wait)
                pe.simd_binary("ADD", src, self.buf.bias32, dst, count, dtype="fp32", out_dtype=out_dtype,
                               signal=done if last else None)
            else:
                pe.simd_binary("MUL", src, self.buf.scale, dst, count, dtype="fp32", out_dtype=out_dtype,
                               wait=wait, signal=done if last else None)
