// Shared definitions of the igw core: the one error type and small helpers.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

namespace igw {

// Every failure the core reports (bad argument, unknown id, full table) is an igw::Error;
// the bindings register it as igw._core.Error. Messages name the argument and what was
// expected, because they surface verbatim in config errors and HTTP 500 bodies.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

inline constexpr uint32_t kMaxEndpoints = 65535;  // ids fit in u16; 0xFFFF is "none"
inline constexpr int kMaxAdapters = 256;

}  // namespace igw
