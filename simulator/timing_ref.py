"""Python reference model of the timing engine (the C++ engine must agree cycle for cycle).

Model ("cycle-approximate", DESIGN.md): each engine of each PE is an in-order queue. The head
command of a queue issues once the previous command of that queue has completed and its sync
wait (token count >= wait_cnt) is met. A command uses shared servers (DRAM channels, SRAM
banks, local-memory ports, NoC links), each for ``ceil(bytes / bytes_per_cycle)`` cycles. Each
server serves its requests one after another in request order (FCFS): a command's share on
server s runs from max(issue, s free) for its occupancy, and the command completes when its
last share is done, plus its fixed latency (DMA latency, hops). No server ever carries more
than its bandwidth, and a server that is not the bottleneck of a transfer is not held idle
for the whole transfer. An indexed DMA is timed at its unmoved addresses (timing never reads data)
and also reads its 4-byte index on the PE's local-memory port. Completion signals the command's token. An engine counts as busy
from issue to completion (stalls on busy servers included).

Events are processed in the order (time, kind, queue) with completions (kind 0) before issue
attempts (kind 1); each queue has at most one pending event, so the order is total and both
engines make the same decisions.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

NUM_ENGINES = 6
# opcodes and enums, by value (see simulator/isa/opcodes.py)
NOP, DMA, DPE, RE_ACC, RE_SEND, S_UN, S_BIN, S_SCA, S_RED, S_BC, M_T, M_CP, M_CAT, S_MXQ, VEC = range(15)
DRAM, SRAM, LOCAL, HOST = 0, 1, 2, 3
ESIZE = (4, 2, 2, 1, 4, 1, 1, 1)
INDEXED_SHIFT = 3         # DMA flags bits 3-4: an index moves the source or the destination
INDEX_BYTES = 4           # what an indexed DMA reads from its PE's local memory (an int32)


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def is_lut(fn: int) -> bool:
    """DIV and EXP .. GELU_ERF (SimdFn 6, 8-17); the functions after them are not tables."""
    return fn == 6 or 8 <= fn <= 17


class Costs:
    """Durations and server usage of commands on one chip (shared by tests and stats)."""

    def __init__(self, p: dict[str, int], num_pes: int):
        self.p = p
        self.R, self.C = p["pe_rows"], p["pe_cols"]
        self.D, self.S, self.P = p["dram_channels"], p["sram_banks"], num_pes
        self.base_sram = self.D
        self.base_local = self.D + self.S
        self.base_link = self.base_local + self.P
        self.base_edge_in = self.base_link + 4 * self.P
        self.base_edge_out = self.base_edge_in + self.C
        self.host = self.base_edge_out + self.C
        self.num_servers = self.host + 1

    def rate(self, sid: int) -> tuple[int, int]:
        p = self.p
        if sid == self.host:
            return p["host_num"], p["host_den"]
        if sid < self.base_sram:
            return p["dram_num"], p["dram_den"]
        if sid < self.base_local:
            return p["sram_num"], p["sram_den"]
        if sid < self.base_link:
            return p["local_num"], p["local_den"]
        return p["link_num"], p["link_den"]

    def link(self, r: int, c: int, d: int) -> int:
        return self.base_link + (r * self.C + c) * 4 + d

    def _spread(self, acc: dict, r: int, c: int, mcast: int) -> int:
        """Broadcast from PE (r, c) along its row (mcast 1) or column (2); returns hops."""
        if mcast == 1:
            for cc in range(c, self.C - 1):
                _add(acc, self.link(r, cc, 2))
            for cc in range(c, 0, -1):
                _add(acc, self.link(r, cc, 3))
            return max(self.C - 1 - c, c)
        if mcast == 2:
            for rr in range(r, self.R - 1):
                _add(acc, self.link(rr, c, 1))
            for rr in range(r, 0, -1):
                _add(acc, self.link(rr, c, 0))
            return max(self.R - 1 - r, r)
        return 0

    def _mem(self, acc: dict, space: int, addr: int, nbytes: int) -> None:
        p = self.p
        if space == HOST:
            acc[self.host] = acc.get(self.host, 0) + nbytes
            return
        if space == DRAM:
            n, il, base = self.D, p["dram_interleave"], 0
        else:
            n, il, base = self.S, p["sram_interleave"], self.base_sram
        nch = min(n, ceil_div(nbytes, il))
        first = (addr // il) % n
        per = ceil_div(nbytes, nch)
        for i in range(nch):
            acc[base + (first + i) % n] = acc.get(base + (first + i) % n, 0) + per

    def dma(self, pe: int, a, peer: int, src: int, dst: int, flags: int):
        nbytes = a[2] * a[3]
        fixed = self.p["dma_latency"]
        if nbytes <= 0:
            return {}, fixed
        acc: dict[int, int] = {}
        mcast = (flags >> 1) & 3
        d = peer if peer >= 0 else pe
        rs, cs, rd, cd = pe // self.C, pe % self.C, d // self.C, d % self.C
        hops = 0
        if src != LOCAL:
            self._mem(acc, src, a[0], nbytes)
        else:
            acc[self.base_local + pe] = nbytes
        if dst != LOCAL:
            self._mem(acc, dst, a[1], nbytes)
            if src == LOCAL:      # up the column to the north edge
                for rr in range(rs, 0, -1):
                    _add(acc, self.link(rr, cs, 0))
                _add(acc, self.base_edge_out + cs)
                hops = rs + 1
        else:
            if mcast == 1:
                targets = [rd * self.C + cc for cc in range(self.C)]
            elif mcast == 2:
                targets = [rr * self.C + cd for rr in range(self.R)]
            else:
                targets = [d]
            for t in targets:
                acc[self.base_local + t] = acc.get(self.base_local + t, 0) + nbytes
            if src != LOCAL:      # in at the north edge of the column, down to row rd
                _add(acc, self.base_edge_in + cd)
                last = self.R - 1 if mcast == 2 else rd
                for rr in range(0, last):
                    _add(acc, self.link(rr, cd, 1))
                hops = last + 1 + (self._spread(acc, rd, cd, 1) if mcast == 1 else 0)
            else:                 # XY routing: along the row, then the column
                step = 1 if cd > cs else -1
                for cc in range(cs, cd, step):
                    _add(acc, self.link(rs, cc, 2 if step > 0 else 3))
                step = 1 if rd > rs else -1
                for rr in range(rs, rd, step):
                    _add(acc, self.link(rr, cd, 1 if step > 0 else 0))
                hops = abs(cd - cs) + abs(rd - rs) + self._spread(acc, rd, cd, mcast)
        if (flags >> INDEXED_SHIFT) & 3:   # the index, read from this PE's local memory
            acc[self.base_local + pe] = acc.get(self.base_local + pe, 0) + INDEX_BYTES
        servers = {}
        for sid, b in acc.items():
            if self.base_link <= sid < self.host:
                b = nbytes     # a link carries the payload once, whatever the fan-out
            num, den = self.rate(sid)
            servers[sid] = ceil_div(b * den, num)
        return servers, fixed + hops * self.p["hop_latency"]

    def cost(self, pe: int, op: int, a, dtype: int, fn: int, peer: int, src: int, dst: int,
             flags: int):
        """(servers {id: busy cycles}, fixed cycles) of one command."""
        p = self.p
        if op == NOP:
            return {}, 0
        if op == DMA:
            return self.dma(pe, a, peer, src, dst, flags)
        if op == DPE:
            m, k, n = a[3], a[4], a[5]
            model = p["dpe_model"]
            if model == 0:
                nt = p["dpe_n_tile"]
                kt = p[f"macs_{dtype}"] // nt
                return {}, ceil_div(k, kt) * ceil_div(n, nt) * (m + p["dpe_overhead"])
            R, C = p["dpe_rows"], p["dpe_cols"]
            if model == 1:   # output stationary: M on rows, N on columns, K streams
                return {}, ceil_div(m, R) * ceil_div(n, C) * (2 * R + C + k - 2)
            return {}, ceil_div(k, R) * ceil_div(n, C) * (2 * R + C + m - 2)  # weight stationary
        if op == RE_ACC:
            return {}, ceil_div(a[2], p["re_width"]) + p["re_latency"]
        if op == RE_SEND:
            r, c = pe // self.C, pe % self.C
            num, den = p["link_num"], p["link_den"]
            return ({self.link(r, c, peer): ceil_div(a[2] * 4 * den, num)},
                    p["re_latency"] + p["hop_latency"])
        if S_UN <= op <= S_BC:
            w = p["simd_width"]
            if op in (S_UN, S_SCA):
                vec = ceil_div(a[2], w)
            elif op == S_BIN:
                vec = ceil_div(a[3], w)
            elif op == S_RED:
                vec = a[2] * ceil_div(a[3], w)
            else:
                vec = a[3] * ceil_div(a[4], w)
            cost = p["simd_lut"] if (op != S_RED and is_lut(fn)) else 1
            return {}, vec * cost + p["simd_latency"]
        if op == S_MXQ:   # two passes over the rows: each block's largest magnitude, then the scaled elements
            return {}, 2 * a[2] * ceil_div(a[3], p["simd_width"]) + p["simd_latency"]
        if op == VEC:     # a vector-core kernel: a[7] holds its cycles, counted from its RVV code
            return {}, a[7]
        if op == M_T:
            nbytes = a[2] * a[3] * ESIZE[dtype]
        elif op == M_CP:
            nbytes = a[2] * a[3]
        else:
            nbytes = a[3] * (a[4] + a[5])
        return {}, ceil_div(nbytes, p["mlu_bpc"]) + p["mlu_latency"]


def _add(acc: dict, sid: int) -> None:
    acc[sid] = acc.get(sid, 0) + 1


@dataclass
class TimingResult:
    """What a timing engine returns: per-command start/end cycles and per-queue busy cycles."""
    cycles: int
    start: np.ndarray          # int64 per command (-1: never issued)
    end: np.ndarray
    busy: np.ndarray           # int64 [num_pes, NUM_ENGINES]
    blocked: list[dict]        # non-empty on deadlock: what each stuck queue waits for


def run_timing_ref(cmds: np.ndarray, params: dict[str, int], num_pes: int) -> TimingResult:
    """Reference event loop; see the module docstring for the model."""
    costs = Costs(params, num_pes)
    n = len(cmds)
    nq = num_pes * NUM_ENGINES
    qidx = (cmds["pe"].astype(np.int64) * NUM_ENGINES + cmds["engine"]).tolist()
    queues: list[list[int]] = [[] for _ in range(nq)]
    for i, q in enumerate(qidx):
        queues[q].append(i)
    ops = cmds["op"].tolist(); args = cmds["a"].tolist(); dts = cmds["dtype"].tolist()
    fns = cmds["fn"].tolist(); peers = cmds["peer"].tolist(); srcs = cmds["src_space"].tolist()
    dsts = cmds["dst_space"].tolist(); flags = cmds["flags"].tolist(); pes = cmds["pe"].tolist()
    wtok = cmds["wait_tok"].tolist(); wcnt = cmds["wait_cnt"].tolist(); stok = cmds["sig_tok"].tolist()
    ntok = int(max(cmds["wait_tok"].max(initial=-1), cmds["sig_tok"].max(initial=-1))) + 1
    count = [0] * ntok
    waiters: list[list[int]] = [[] for _ in range(ntok)]
    free = [0] * costs.num_servers
    head = [0] * nq
    start = np.full(n, -1, np.int64); end = np.full(n, -1, np.int64)  # -1: never issued
    busy = [0] * nq
    heap = [(0, 1, q) for q in range(nq) if queues[q]]
    heapq.heapify(heap)
    while heap:
        t, kind, q = heapq.heappop(heap)
        i = queues[q][head[q]]
        if kind == 0:        # completion
            s = stok[i]
            if s >= 0:
                count[s] += 1
                keep = []
                for w in waiters[s]:
                    if count[s] >= wcnt[queues[w][head[w]]]:
                        heapq.heappush(heap, (t, 1, w))
                    else:
                        keep.append(w)
                waiters[s] = keep
            head[q] += 1
            if head[q] < len(queues[q]):
                heapq.heappush(heap, (t, 1, q))
            continue
        w = wtok[i]
        if w >= 0 and count[w] < wcnt[i]:
            waiters[w].append(q)
            continue
        servers, fixed = costs.cost(pes[i], ops[i], args[i], dts[i], fns[i], peers[i], srcs[i],
                                    dsts[i], flags[i])
        fin = t
        for sid, occ in servers.items():
            f = (free[sid] if free[sid] > t else t) + occ
            free[sid] = f
            if f > fin:
                fin = f
        e = fin + fixed
        start[i] = t; end[i] = e
        busy[q] += e - t
        heapq.heappush(heap, (e, 0, q))
    blocked = []
    for q in range(nq):
        if head[q] < len(queues[q]):
            i = queues[q][head[q]]
            blocked.append({"pe": q // NUM_ENGINES, "engine": q % NUM_ENGINES, "index": i,
                            "token": wtok[i], "have": count[wtok[i]] if wtok[i] >= 0 else 0,
                            "need": wcnt[i]})
    cycles = max(int(end.max()), 0) if n else 0
    return TimingResult(cycles, start, end, np.array(busy, np.int64).reshape(num_pes, NUM_ENGINES),
                        blocked)
