// Command costs; every line mirrors Costs in simulator/timing_ref.py (keep them in step).
#include "costs.h"

#include <algorithm>
#include <stdexcept>

namespace ember {

Params Params::from_map(const std::map<std::string, int64_t>& m) {
    auto g = [&](const char* k) {
        auto it = m.find(k);
        if (it == m.end()) throw std::invalid_argument(std::string("missing timing param ") + k);
        return it->second;
    };
    Params p{};
    p.pe_rows = g("pe_rows"); p.pe_cols = g("pe_cols");
    p.dma_latency = g("dma_latency"); p.hop_latency = g("hop_latency");
    p.dram_channels = g("dram_channels"); p.dram_interleave = g("dram_interleave");
    p.sram_banks = g("sram_banks"); p.sram_interleave = g("sram_interleave");
    p.dpe_model = g("dpe_model"); p.dpe_n_tile = g("dpe_n_tile");
    p.dpe_rows = g("dpe_rows"); p.dpe_cols = g("dpe_cols"); p.dpe_overhead = g("dpe_overhead");
    p.simd_width = g("simd_width"); p.simd_lut = g("simd_lut"); p.simd_latency = g("simd_latency");
    p.mlu_bpc = g("mlu_bpc"); p.mlu_latency = g("mlu_latency");
    p.re_width = g("re_width"); p.re_latency = g("re_latency");
    for (int i = 0; i < kNumDtypes; ++i) p.macs[i] = g(("macs_" + std::to_string(i)).c_str());
    p.dram_num = g("dram_num"); p.dram_den = g("dram_den");
    p.sram_num = g("sram_num"); p.sram_den = g("sram_den");
    p.local_num = g("local_num"); p.local_den = g("local_den");
    p.link_num = g("link_num"); p.link_den = g("link_den");
    p.host_num = g("host_num"); p.host_den = g("host_den");
    return p;
}

Costs::Costs(const Params& p, int num_pes) : p_(p) {
    R_ = p.pe_rows; C_ = p.pe_cols; D_ = p.dram_channels; S_ = p.sram_banks; P_ = num_pes;
    base_sram_ = D_;
    base_local_ = D_ + S_;
    base_link_ = base_local_ + P_;
    base_edge_in_ = base_link_ + 4 * P_;
    base_edge_out_ = base_edge_in_ + C_;
    host_ = base_edge_out_ + C_;
}

void Costs::rate(int32_t sid, int64_t& num, int64_t& den) const {
    if (sid == host_) { num = p_.host_num; den = p_.host_den; }
    else if (sid < base_sram_) { num = p_.dram_num; den = p_.dram_den; }
    else if (sid < base_local_) { num = p_.sram_num; den = p_.sram_den; }
    else if (sid < base_link_) { num = p_.local_num; den = p_.local_den; }
    else { num = p_.link_num; den = p_.link_den; }
}

int64_t Costs::spread(Usage& u, int64_t r, int64_t c, int mcast) const {
    if (mcast == 1) {
        for (int64_t cc = c; cc < C_ - 1; ++cc) u.add_new(link(r, cc, 2), 1);
        for (int64_t cc = c; cc > 0; --cc) u.add_new(link(r, cc, 3), 1);
        return std::max(C_ - 1 - c, c);
    }
    if (mcast == 2) {
        for (int64_t rr = r; rr < R_ - 1; ++rr) u.add_new(link(rr, c, 1), 1);
        for (int64_t rr = r; rr > 0; --rr) u.add_new(link(rr, c, 0), 1);
        return std::max(R_ - 1 - r, r);
    }
    return 0;
}

void Costs::mem(Usage& u, int space, int64_t addr, int64_t nbytes) const {
    if (space == HOST) { u.add(static_cast<int32_t>(host_), nbytes); return; }
    int64_t n, il, base;
    if (space == DRAM) { n = D_; il = p_.dram_interleave; base = 0; }
    else { n = S_; il = p_.sram_interleave; base = base_sram_; }
    int64_t nch = std::min(n, ceil_div(nbytes, il));
    int64_t ch = (addr / il) % n;
    const int64_t per = ceil_div(nbytes, nch);
    for (int64_t i = 0; i < nch; ++i) {
        u.add(static_cast<int32_t>(base + ch), per);
        if (++ch == n) ch = 0;
    }
}

void Costs::dma(const Cmd& c, Usage& u) const {
    const int64_t nbytes = c.a[2] * c.a[3];
    u.fixed = p_.dma_latency;
    if (nbytes <= 0) return;
    const int mcast = (c.flags >> 1) & 3;
    const int64_t pe = c.pe, d = c.peer >= 0 ? c.peer : c.pe;
    const int64_t rs = pe / C_, cs = pe % C_, rd = d / C_, cd = d % C_;
    int64_t hops = 0;
    if (c.src_space != LOCAL) mem(u, c.src_space, c.a[0], nbytes);
    else u.add(static_cast<int32_t>(base_local_ + pe), nbytes);
    if (c.dst_space != LOCAL) {
        mem(u, c.dst_space, c.a[1], nbytes);
        if (c.src_space == LOCAL) {
            for (int64_t rr = rs; rr > 0; --rr) u.add_new(link(rr, cs, 0), 1);
            u.add_new(static_cast<int32_t>(base_edge_out_ + cs), 1);
            hops = rs + 1;
        }
    } else {
        if (mcast == 1) for (int64_t cc = 0; cc < C_; ++cc) u.add(static_cast<int32_t>(base_local_ + rd * C_ + cc), nbytes);
        else if (mcast == 2) for (int64_t rr = 0; rr < R_; ++rr) u.add(static_cast<int32_t>(base_local_ + rr * C_ + cd), nbytes);
        else u.add(static_cast<int32_t>(base_local_ + d), nbytes);
        if (c.src_space != LOCAL) {
            u.add_new(static_cast<int32_t>(base_edge_in_ + cd), 1);
            const int64_t last = mcast == 2 ? R_ - 1 : rd;
            for (int64_t rr = 0; rr < last; ++rr) u.add_new(link(rr, cd, 1), 1);
            hops = last + 1 + (mcast == 1 ? spread(u, rd, cd, 1) : 0);
        } else {
            if (cd > cs) for (int64_t cc = cs; cc < cd; ++cc) u.add_new(link(rs, cc, 2), 1);
            else for (int64_t cc = cs; cc > cd; --cc) u.add_new(link(rs, cc, 3), 1);
            if (rd > rs) for (int64_t rr = rs; rr < rd; ++rr) u.add_new(link(rr, cd, 1), 1);
            else for (int64_t rr = rs; rr > rd; --rr) u.add_new(link(rr, cd, 0), 1);
            hops = std::abs(cd - cs) + std::abs(rd - rs) + spread(u, rd, cd, mcast);
        }
    }
    // An indexed DMA is timed at its unmoved addresses; its 4-byte index is read on this PE's
    // local-memory port.
    if ((c.flags >> 3) & 3) u.add(static_cast<int32_t>(base_local_ + pe), 4);
    // Most servers of one transfer carry the same byte count at the same rate: convert once.
    int64_t last_b = -1, last_num = 0, last_den = 0, last_cycles = 0;
    for (int i = 0; i < u.n; ++i) {
        const bool is_link = u.sid[i] >= base_link_ && u.sid[i] < host_;
        const int64_t b = is_link ? nbytes : u.amount[i];  // a link carries the payload once
        int64_t num, den;
        rate(u.sid[i], num, den);
        if (b != last_b || num != last_num || den != last_den) {
            last_b = b; last_num = num; last_den = den;
            last_cycles = ceil_rate(b, num, den);
        }
        u.amount[i] = last_cycles;
    }
    u.fixed += hops * p_.hop_latency;
}

// DIV and EXP .. GELU_ERF (SimdFn 6, 8-17); the functions after them are not tables.
static inline bool is_lut(int fn) { return fn == 6 || (fn >= 8 && fn <= 17); }

void Costs::cost(const Cmd& c, Usage& u) const {
    u.clear();
    const int64_t* a = c.a;
    switch (c.op) {
        case NOP: return;
        case DMA: dma(c, u); return;
        case DPE: {
            const int64_t m = a[3], k = a[4], n = a[5];
            if (p_.dpe_model == 0) {
                const int64_t nt = p_.dpe_n_tile, kt = p_.macs[c.dtype] / nt;
                u.fixed = ceil_div(k, kt) * ceil_div(n, nt) * (m + p_.dpe_overhead);
            } else if (p_.dpe_model == 1) {  // output stationary
                const int64_t R = p_.dpe_rows, C = p_.dpe_cols;
                u.fixed = ceil_div(m, R) * ceil_div(n, C) * (2 * R + C + k - 2);
            } else {                          // weight stationary
                const int64_t R = p_.dpe_rows, C = p_.dpe_cols;
                u.fixed = ceil_div(k, R) * ceil_div(n, C) * (2 * R + C + m - 2);
            }
            return;
        }
        case RE_ACC: u.fixed = ceil_div(a[2], p_.re_width) + p_.re_latency; return;
        case RE_SEND: {
            const int64_t r = c.pe / C_, col = c.pe % C_;
            u.add(link(r, col, c.peer), ceil_rate(a[2] * 4, p_.link_num, p_.link_den));
            u.fixed = p_.re_latency + p_.hop_latency;
            return;
        }
        case S_UN: case S_BIN: case S_SCA: case S_RED: case S_BC: {
            const int64_t w = p_.simd_width;
            int64_t vec;
            if (c.op == S_UN || c.op == S_SCA) vec = ceil_div(a[2], w);
            else if (c.op == S_BIN) vec = ceil_div(a[3], w);
            else if (c.op == S_RED) vec = a[2] * ceil_div(a[3], w);
            else vec = a[3] * ceil_div(a[4], w);
            const int64_t cost = (c.op != S_RED && is_lut(c.fn)) ? p_.simd_lut : 1;
            u.fixed = vec * cost + p_.simd_latency;
            return;
        }
        case S_MXQ:   // two passes over the rows: each block's largest magnitude, then the scaled elements
            u.fixed = 2 * a[2] * ceil_div(a[3], p_.simd_width) + p_.simd_latency;
            return;
        case VEC:     // a vector-core kernel: a[7] holds its cycles, counted from its RVV code
            u.fixed = a[7];
            return;
        case M_T: case M_CP: case M_CAT: {
            static const int64_t esize[kNumDtypes] = {4, 2, 2, 1, 4, 1, 1, 1};
            int64_t nbytes;
            if (c.op == M_T) nbytes = a[2] * a[3] * esize[c.dtype];
            else if (c.op == M_CP) nbytes = a[2] * a[3];
            else nbytes = a[3] * (a[4] + a[5]);
            u.fixed = ceil_div(nbytes, p_.mlu_bpc) + p_.mlu_latency;
            return;
        }
        default: throw std::invalid_argument("unknown opcode");
    }
}

}  // namespace ember
