// Recent demand per prompt prefix group: whether a group takes more than `factor` endpoints'
// fair share of a pool's recent requests (so one replica cannot serve it alone).
//
// Count-based exponential decay over roughly the last `window` requests, no clock: each
// request multiplies the total by (1 - 1/window) and adds one; a group's own count decays by
// the same factor per request seen since it was last touched. Memory is bounded: past
// `max_keys` groups, those whose decayed count fell below one request are dropped.
// igw.scheduling.demand.PrefixDemand is the same model in Python (the reference twin); both
// compute in double in the same order, so they agree on every answer.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <unordered_map>
#include <utility>

namespace igw {

// A prompt's prefix group is the hash of its first kDemandKeyBlocks blocks (never the last
// block, which may be partial and holds the request's own words): enough to tell system
// prompts apart. Index of that hash among a prompt's n >= 1 block hashes.
inline constexpr size_t kDemandKeyBlocks = 8;
inline size_t demand_key_index(size_t n) noexcept {
  return std::max<size_t>(std::min(n - 1, kDemandKeyBlocks), 1) - 1;
}

class PrefixDemand {
 public:
  explicit PrefixDemand(double window = 256.0, size_t max_keys = 4096);
  // Count one request of group `key`; true when its share of recent requests times
  // `endpoints` (at least 1) exceeds `factor`.
  bool is_hot(uint64_t key, size_t endpoints, double factor);
  size_t size() const noexcept { return counts_.size(); }

 private:
  void prune();
  double decay_;
  size_t max_keys_;
  double total_ = 0.0;
  uint64_t seen_ = 0;
  std::unordered_map<uint64_t, std::pair<double, uint64_t>> counts_;  // key -> (count, seen)
};

}  // namespace igw
