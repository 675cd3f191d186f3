// Python bindings of the simulator's C++ core.
#include <pybind11/pybind11.h>

namespace py = pybind11;

PYBIND11_MODULE(_core, m) {
    m.doc() = "Ember simulator core (timing engine)";
    m.attr("version") = 1;
}
