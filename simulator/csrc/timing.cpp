// The timing engine. Same model and event order as simulator/timing_ref.py: events sorted by
// (time, kind, queue) with completions (kind 0) before issue attempts (kind 1).
#include "timing.h"

#include <algorithm>
#include <functional>
#include <queue>
#include <stdexcept>
#include <string>

namespace ember {

namespace {
// An event packed into one integer so that integer order is (time, kind, queue) order.
constexpr int kQueueBits = 16;
constexpr int64_t kMaxTime = int64_t(1) << (63 - kQueueBits - 1);
inline uint64_t pack(int64_t time, int kind, int q) {
    if (time >= kMaxTime) throw std::overflow_error("simulated time exceeds 2^46 cycles");
    return (uint64_t(time) << (kQueueBits + 1)) | (uint64_t(kind) << kQueueBits) | uint64_t(q);
}
// Memory safety of the engine (simulator/validate.py gives the friendly messages).
void check_command(const Cmd& c, int64_t i, const Params& p, int num_pes) {
    auto bad = [&](const char* why) {
        throw std::invalid_argument("command #" + std::to_string(i) + ": " + why);
    };
    if (c.pe < 0 || c.pe >= num_pes) bad("PE out of range");
    if (c.engine >= kNumEngines) bad("unknown engine");
    if (c.op > VEC) bad("unknown opcode");
    if (c.wait_tok < -1 || c.sig_tok < -1) bad("bad token");
    if (c.dtype >= kNumDtypes || c.dtype2 >= kNumDtypes || (c.op == DPE && p.macs[c.dtype] <= 0)) bad("bad dtype");
    for (int k = 0; k < 8; ++k)
        if (c.a[k] < 0 && !(c.op == S_SCA && k == 3)) bad("negative operand");  // a[3]: fp64 bits of the immediate
    if (c.op == DMA) {
        if (c.peer < -1 || c.peer >= num_pes) bad("DMA destination PE out of range");
        if (c.src_space > HOST || c.dst_space > HOST || ((c.flags >> 1) & 3) == 3 || ((c.flags >> 3) & 3) == 3)
            bad("bad DMA space, multicast or indexed mode");
    }
    if (c.op == RE_SEND) {
        const int64_t r = c.pe / p.pe_cols, col = c.pe % p.pe_cols;
        const bool ok = (c.peer == 0 && r > 0) || (c.peer == 1 && r < p.pe_rows - 1) ||
                        (c.peer == 2 && col < p.pe_cols - 1) || (c.peer == 3 && col > 0);
        if (!ok) bad("reduction send off the PE grid");
    }
    if (c.op == DPE && (c.a[3] <= 0 || c.a[4] <= 0 || c.a[5] <= 0)) bad("empty matmul");
}

}  // namespace

TimingOut run_timing(const Cmd* cmds, int64_t n, const Params& p, int num_pes, int64_t* start,
                     int64_t* end) {
    const int nq = num_pes * kNumEngines;
    if (nq > (1 << kQueueBits)) throw std::invalid_argument("too many PEs for the event encoding");
    Costs costs(p, num_pes);
    // Queues as index lists in CSR form: program order within each (pe, engine).
    std::vector<int64_t> qcount(nq + 1, 0);
    int32_t ntok = 0;
    for (int64_t i = 0; i < n; ++i) {
        check_command(cmds[i], i, p, num_pes);
        ++qcount[cmds[i].pe * kNumEngines + cmds[i].engine + 1];
        ntok = std::max({ntok, cmds[i].wait_tok + 1, cmds[i].sig_tok + 1});
    }
    for (int q = 0; q < nq; ++q) qcount[q + 1] += qcount[q];
    std::vector<int64_t> qcmds(n), fill(qcount.begin(), qcount.end() - 1);
    for (int64_t i = 0; i < n; ++i) qcmds[fill[cmds[i].pe * kNumEngines + cmds[i].engine]++] = i;

    std::vector<int64_t> head(qcount.begin(), qcount.end() - 1);  // position into qcmds
    std::vector<int64_t> count(ntok, 0);
    std::vector<std::vector<int32_t>> waiters(ntok);
    std::vector<int64_t> free_at(costs.num_servers(), 0);
    TimingOut out;
    out.busy.assign(nq, 0);

    std::priority_queue<uint64_t, std::vector<uint64_t>, std::greater<uint64_t>> heap;
    for (int q = 0; q < nq; ++q)
        if (qcount[q + 1] > qcount[q]) heap.push(pack(0, 1, q));
    Usage u(costs.num_servers());
    int64_t cycles = 0;
    // The event a handler pushed last is often the earliest of all; keep it out of the heap
    // then (same order, fewer heap operations).
    uint64_t next = 0;
    bool have_next = false;
    auto push_last = [&](uint64_t k) {
        if (heap.empty() || k < heap.top()) { next = k; have_next = true; }
        else heap.push(k);
    };
    while (have_next || !heap.empty()) {
        uint64_t key;
        if (have_next) { key = next; have_next = false; }
        else { key = heap.top(); heap.pop(); }
        const int q = static_cast<int>(key & ((1u << kQueueBits) - 1));
        const int kind = static_cast<int>((key >> kQueueBits) & 1);
        const int64_t now = static_cast<int64_t>(key >> (kQueueBits + 1));
        const int64_t i = qcmds[head[q]];
        const Cmd& c = cmds[i];
        if (kind == 0) {  // completion
            if (c.sig_tok >= 0) {
                const int64_t have = ++count[c.sig_tok];
                auto& ws = waiters[c.sig_tok];
                size_t keep = 0;
                for (size_t j = 0; j < ws.size(); ++j) {
                    const int w = ws[j];
                    if (have >= cmds[qcmds[head[w]]].wait_cnt) heap.push(pack(now, 1, w));
                    else ws[keep++] = w;
                }
                ws.resize(keep);
            }
            if (++head[q] < qcount[q + 1]) push_last(pack(now, 1, q));
            continue;
        }
        if (c.wait_tok >= 0 && count[c.wait_tok] < c.wait_cnt) {
            waiters[c.wait_tok].push_back(q);
            continue;
        }
        // This queue's next command is read when this one completes: fetch it now (the
        // program is far larger than the caches, and queues interleave in it).
        if (head[q] + 1 < qcount[q + 1]) {
            const char* nxt = reinterpret_cast<const char*>(&cmds[qcmds[head[q] + 1]]);
            __builtin_prefetch(nxt);
            __builtin_prefetch(nxt + 64);
        }
        costs.cost(c, u);
        // Each server serves its share in request order; done when the last share is.
        int64_t fin = now;
        for (int j = 0; j < u.n; ++j) {
            int64_t& f = free_at[u.sid[j]];
            f = std::max(f, now) + u.amount[j];
            fin = std::max(fin, f);
        }
        const int64_t e = fin + u.fixed;
        if (start) start[i] = now;
        if (end) end[i] = e;
        out.busy[q] += e - now;
        cycles = std::max(cycles, e);
        push_last(pack(e, 0, q));
    }
    for (int q = 0; q < nq; ++q) {
        if (head[q] < qcount[q + 1]) {
            const int64_t i = qcmds[head[q]];
            const Cmd& c = cmds[i];
            out.blocked.push_back({q / kNumEngines, q % kNumEngines, i, c.wait_tok,
                                   c.wait_tok >= 0 ? count[c.wait_tok] : 0, c.wait_cnt});
        }
    }
    out.cycles = cycles;
    return out;
}

}  // namespace ember
