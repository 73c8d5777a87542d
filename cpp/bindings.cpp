// Placeholder binding: replaced by the full core bindings.
#include <pybind11/pybind11.h>

#include <stdexcept>

#define IGW_STRINGIFY(x) #x
#define IGW_MACRO_STRINGIFY(x) IGW_STRINGIFY(x)

PYBIND11_MODULE(_core, m) {
  m.doc() = "igw performance core";
  pybind11::register_exception<std::runtime_error>(m, "Error");
  m.attr("__version__") = IGW_MACRO_STRINGIFY(VERSION_INFO);
}
