// Durations and shared-server usage of commands (mirror of Costs in simulator/timing_ref.py).
#pragma once
#include <cstdint>
#include <map>
#include <stdexcept>
#include <string>

#include "cmd.h"

namespace ember {

struct Params {
    int64_t pe_rows, pe_cols, dma_latency, hop_latency, dram_channels, dram_interleave,
        sram_banks, sram_interleave, dpe_model, dpe_n_tile, dpe_rows, dpe_cols, dpe_overhead,
        simd_width, simd_lut, simd_latency, mlu_bpc, mlu_latency, re_width, re_latency,
        macs[4], dram_num, dram_den, sram_num, sram_den, local_num, local_den, link_num,
        link_den;
    static Params from_map(const std::map<std::string, int64_t>& m);
};

// A command's use of shared servers: up to kMaxServers (server id, busy cycles) pairs.
struct Usage {
    static constexpr int kMaxServers = 1024;
    int n = 0;
    int32_t sid[kMaxServers];
    int64_t amount[kMaxServers];   // bytes (links: hop count) while building, cycles after
    int64_t fixed = 0;             // cycles added after the longest reservation
    void add(int32_t s, int64_t v) {
        for (int i = 0; i < n; ++i)
            if (sid[i] == s) { amount[i] += v; return; }
        if (n == kMaxServers) throw std::length_error("command uses too many servers");
        sid[n] = s; amount[n] = v; ++n;
    }
};

class Costs {
  public:
    Costs(const Params& p, int num_pes);
    int num_servers() const { return base_edge_out_ + C_; }
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
    int64_t base_sram_, base_local_, base_link_, base_edge_in_, base_edge_out_;
};

// Operands are validated non-negative before timing, so plain rounding-up division is exact.
inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t ceil_rate(int64_t bytes, int64_t num, int64_t den) {
    return static_cast<int64_t>((static_cast<__int128>(bytes) * den + num - 1) / num);
}

}  // namespace ember
