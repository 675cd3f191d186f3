// Event-driven timing engine: in-order queues per engine per PE, tokens, bandwidth servers.
#pragma once
#include <cstdint>
#include <vector>

#include "cmd.h"
#include "costs.h"

namespace ember {

struct Blocked {
    int64_t pe, engine, index, token, have, need;
};

struct TimingOut {
    int64_t cycles = 0;
    std::vector<int64_t> busy;        // [num_pes * kNumEngines]
    std::vector<Blocked> blocked;     // non-empty on deadlock
};

// Runs the model of simulator/timing_ref.py on n commands; fills start/end (may be null).
TimingOut run_timing(const Cmd* cmds, int64_t n, const Params& p, int num_pes, int64_t* start,
                     int64_t* end);

}  // namespace ember
