#include "demand.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

namespace igw {

PrefixDemand::PrefixDemand(double window, size_t max_keys) : max_keys_(max_keys) {
  if (!(std::isfinite(window) && window >= 1.0))
    throw std::invalid_argument("window must be a finite number >= 1, got " +
                                std::to_string(window));
  if (max_keys < 1) throw std::invalid_argument("max_keys must be >= 1");
  decay_ = 1.0 - 1.0 / window;
}

bool PrefixDemand::is_hot(uint64_t key, size_t endpoints, double factor) {
  const uint64_t seen = ++seen_;
  total_ = total_ * decay_ + 1.0;
  auto [it, fresh] = counts_.try_emplace(key, 0.0, seen);
  double value = 1.0;
  if (!fresh) value = it->second.first * std::pow(decay_, static_cast<double>(seen - it->second.second)) + 1.0;
  it->second = {value, seen};
  const double share = value / total_ * static_cast<double>(std::max<size_t>(endpoints, 1));
  if (counts_.size() > max_keys_) prune();
  return share > factor;
}

void PrefixDemand::prune() {
  const uint64_t now = seen_;
  std::erase_if(counts_, [&](const auto& kv) {
    return !(kv.second.first * std::pow(decay_, static_cast<double>(now - kv.second.second)) >= 1.0);
  });
}

}  // namespace igw
