// Durations and shared-server usage of commands (mirror of Costs in simulator/timing_ref.py).
#pragma once
#include <cstdint>
#include <climits>
#include <map>
#include <stdexcept>
#include <vector>
#include <string>

#include "cmd.h"

namespace ember {

struct Params {
    int64_t pe_rows, pe_cols, dma_latency, hop_latency, dram_channels, dram_interleave,
        sram_banks, sram_interleave, dpe_model, dpe_n_tile, dpe_rows, dpe_cols, dpe_overhead,
        simd_width, simd_lut, simd_latency, mlu_bpc, mlu_latency, re_width, re_latency,
        macs[kNumDtypes], dram_num, dram_den, sram_num, sram_den, local_num, local_den, link_num,
        link_den, host_num, host_den;
    static Params from_map(const std::map<std::string, int64_t>& m);
};

// A command's use of shared servers: (server id, amount) pairs, amounts summed per server.
// Amounts are bytes while a DMA is being routed (links: a hop count), cycles afterwards.
struct Usage {
    int n = 0;
    std::vector<int32_t> sid;
    std::vector<int64_t> amount;
    std::vector<int32_t> slot;      // per server: its index in sid[] when stamp matches
    std::vector<uint32_t> stamp;
    uint32_t gen = 1;
    int64_t fixed = 0;             // cycles added after the longest reservation

    explicit Usage(int num_servers)
        : sid(num_servers), amount(num_servers), slot(num_servers), stamp(num_servers, 0) {}
    void clear() { n = 0; fixed = 0; ++gen; }
    void add(int32_t s, int64_t v) {
        if (stamp[s] == gen) { amount[slot[s]] += v; return; }
        stamp[s] = gen; slot[s] = n; sid[n] = s; amount[n] = v; ++n;
    }
    // For servers a route cannot visit twice (NoC links): no duplicate check.
    void add_new(int32_t s, int64_t v) { sid[n] = s; amount[n] = v; ++n; }
};

class Costs {
  public:
    Costs(const Params& p, int num_pes);
    int num_servers() const { return static_cast<int>(host_) + 1; }
    void cost(const Cmd& c, Usage& u) const;

  private:
    void dma(const Cmd& c, Usage& u) const;
    void mem(Usage& u, int space, int64_t addr, int64_t nbytes) const;
    int64_t spread(Usage& u, int64_t r, int64_t c, int mcast) const;
    int32_t link(int64_t r, int64_t c, int d) const {
        return static_cast<int32_t>(base_link_ + (r * C_ + c) * 4 + d);
    }
    void rate(int32_t sid, int64_t& num, int64_t& den) const;

    Params p_;
    int64_t R_, C_, D_, S_, P_;
    int64_t base_sram_, base_local_, base_link_, base_edge_in_, base_edge_out_, host_;
};

// Operands are validated non-negative before timing, so plain rounding-up division is exact.
inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t ceil_rate(int64_t bytes, int64_t num, int64_t den) {
    if (bytes <= (INT64_MAX - num) / den) return (bytes * den + num - 1) / num;  // common case
    return static_cast<int64_t>((static_cast<__int128>(bytes) * den + num - 1) / num);
}

}  // namespace ember
