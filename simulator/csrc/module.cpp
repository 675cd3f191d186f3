// Python bindings of the simulator's C++ core (the timing engine).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <map>
#include <string>

#include "timing.h"

namespace py = pybind11;
using namespace ember;

static py::dict run_timing_py(py::array cmds, const std::map<std::string, int64_t>& params,
                              int num_pes, bool record) {
    if (cmds.itemsize() != static_cast<py::ssize_t>(sizeof(Cmd)) || cmds.ndim() != 1)
        throw std::invalid_argument("cmds must be a 1-D array of CMD_DTYPE records (88 bytes)");
    if (!(cmds.flags() & py::array::c_style))
        throw std::invalid_argument("cmds must be C-contiguous");
    const Params p = Params::from_map(params);
    const int64_t n = cmds.shape(0);
    const Cmd* data = static_cast<const Cmd*>(cmds.data());
    py::array_t<int64_t> start(record ? n : 0), end(record ? n : 0);
    int64_t* sp = record ? start.mutable_data() : nullptr;
    int64_t* ep = record ? end.mutable_data() : nullptr;
    std::fill(sp, sp + (record ? n : 0), -1);  // -1: never issued (deadlock)
    std::fill(ep, ep + (record ? n : 0), -1);
    TimingOut out;
    {
        py::gil_scoped_release release;
        out = run_timing(data, n, p, num_pes, sp, ep);
    }
    py::array_t<int64_t> busy({static_cast<py::ssize_t>(num_pes), static_cast<py::ssize_t>(kNumEngines)});
    std::copy(out.busy.begin(), out.busy.end(), busy.mutable_data());
    py::list blocked;
    for (const auto& b : out.blocked) {
        py::dict d;
        d["pe"] = b.pe; d["engine"] = b.engine; d["index"] = b.index;
        d["token"] = b.token; d["have"] = b.have; d["need"] = b.need;
        blocked.append(d);
    }
    py::dict r;
    r["cycles"] = out.cycles;
    r["start"] = start;
    r["end"] = end;
    r["busy"] = busy;
    r["blocked"] = blocked;
    return r;
}

PYBIND11_MODULE(_core, m) {
    m.doc() = "Ember simulator core: the event-driven timing engine";
    m.attr("version") = 2;
    m.def("run_timing", &run_timing_py, py::arg("cmds"), py::arg("params"), py::arg("num_pes"),
          py::arg("record") = true,
          "Time a program (CMD_DTYPE array); returns cycles, start, end, busy, blocked.");
}
