// Scheduler: filters as masks, scorers as arrays in [0, 1], a weighted sum and a picker, run
// over every eligible endpoint in one pass. Filters run first, in profile order, and narrow
// the eligible rows every scorer then sees (a filter never empties a non-empty set).
// Formulas follow the reference picker (REFERENCE.md Part 2, 1.2-1.3) and are computed in
// double in the same operation order as igw.core_reference, so both implementations agree
// bit for bit on totals.
//
// Atomicity: one mutex around pick. Inside it: gather rows (seqlock reads), match the
// prefix index, filter, score, pick, add the winner's in-flight counters and record its blocks, so
// a burst of simultaneous picks sees each other's load. Picks take microseconds, so the
// mutex is not a bottleneck; all per-pick buffers are members reused under that mutex.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "demand.h"
#include "endpoint_table.h"
#include "prefix_index.h"

namespace igw {

enum class ScorerKind : uint8_t {
  Queue,
  RunningRequests,
  KvCache,
  Prefix,
  Lora,
  ActiveRequest,
  TokenLoad,
  LoadAware,
  PredictedTtft,
};
enum class PickerKind : uint8_t { MaxScore, WeightedRandom, Random };
enum class FilterKind : uint8_t { NewPrefixSpread };

struct ScorerSpec {
  ScorerKind kind;
  std::string type;
  double weight;
  double p1 = 0, p2 = 0;  // the type's parameters, in the order of kScorerParams
};

struct FilterSpec {
  FilterKind kind;
  std::string type;
  double p1 = 0, p2 = 0;  // the type's parameters, in the order of kFilters
};

// A profile's plugins come as one ordered list of (type, weight, params): scorer types become
// scorers, filter types filters (their weight is validated and otherwise unused), each kind
// keeping its order. One list, because that is how a config's profile lists them.
class Profile {
 public:
  Profile(const std::vector<std::tuple<std::string, double, std::vector<std::pair<std::string, double>>>>&
              scorers,
          const std::string& picker);
  const std::vector<ScorerSpec>& scorers() const noexcept { return scorers_; }
  const std::vector<FilterSpec>& filters() const noexcept { return filters_; }
  PickerKind picker() const noexcept { return picker_; }
  std::vector<std::string> scorer_types() const;
  std::vector<std::string> filter_types() const;

 private:
  std::vector<ScorerSpec> scorers_;
  std::vector<FilterSpec> filters_;
  PickerKind picker_;
};

struct PickRequest {
  std::span<const uint64_t> hashes;
  int64_t prompt_tokens = 0;
  int64_t block_tokens = 64;
  int lora = -1;  // -1: none requested; 0..255: adapter id; 256 (kMaxAdapters): unknown adapter
  std::span<const bool> candidates;  // empty = all
  bool has_candidates = false;
  uint32_t k = 1;
  const float* extra = nullptr;  // [m, extra_stride]
  size_t extra_rows = 0;
  size_t extra_stride = 0;
  std::span<const double> extra_weights;
  bool reserve = true;
  bool record = true;
  bool with_scores = false;
  // With reserve: in-flight tokens added to the primary on top of its uncached prompt tokens
  // (a per-request charge), in the same step as the pick.
  int64_t charge = 0;
};

struct PickOutput {
  std::vector<uint32_t> endpoints;
  std::vector<int32_t> matched;  // length n (table high water at pick time)
  int64_t total_blocks = 0;
  int64_t uncached_tokens = 0;
  // with_scores: one row per scorer (profile order), then extras, then total; each length n.
  std::vector<std::vector<float>> scores;
};

class Scheduler {
 public:
  Scheduler(std::shared_ptr<EndpointTable> table, std::shared_ptr<PrefixIndex> index,
            uint64_t seed);
  void pick(const Profile& profile, const PickRequest& req, PickOutput& out);
  // Only the profile's filters, over the live, ready candidates (req.hashes and
  // req.candidates are read; nothing is reserved or recorded). keep[e] for e < keep.size()
  // starts as the candidate mask (all true without one); the endpoints a filter drops are
  // cleared, the rest (not live or ready ones included) left as given.
  void filter(const Profile& profile, const PickRequest& req, std::span<bool> keep);
  // Count one request of prefix group `key` in the pool's recent demand; true when the group
  // wants more than `factor` endpoints' fair share (see demand.h). The endpoint count is the
  // table's live rows.
  bool hot(uint64_t key, double factor);
  size_t demand_groups();  // groups tracked (bounded; for tests and stats)
  const std::shared_ptr<EndpointTable>& table() const noexcept { return table_; }
  const std::shared_ptr<PrefixIndex>& index() const noexcept { return index_; }

 private:
  void gather(uint32_t need, const PickRequest& req, uint32_t n);
  void apply_filters(const Profile& profile, const PickRequest& req, uint32_t n);
  bool spread_keep(const FilterSpec& f, const PickRequest& req, uint32_t n);
  void compact();  // drop the rows of ids_ marked kDropped from ids_ and every column
  void load_columns(uint32_t need, int lora, uint32_t from, uint32_t to);
  void score(const ScorerSpec& s, const PickRequest& req, std::vector<double>& v);
  void rank(PickerKind picker, uint32_t k, std::vector<uint32_t>& ranked);
  double uniform01() noexcept;  // (0, 1]

  std::shared_ptr<EndpointTable> table_;
  std::shared_ptr<PrefixIndex> index_;
  std::mutex mu_;
  PrefixDemand demand_;  // guarded by mu_
  uint64_t rng_state_;
  uint64_t rng() noexcept;          // splitmix64: tiny, fast, good enough for tie-breaks
  uint64_t below(uint64_t n) noexcept;  // uniform in [0, n)
  // Per-pick scratch, reused (guarded by mu_). Columns are compacted to eligible rows.
  static constexpr uint32_t kDropped = 0xFFFFFFFFu;
  std::vector<uint32_t> ids_, seqs_;
  std::vector<int32_t> waiting_, running_, inflight_req_, max_lora_;
  std::vector<float> kv_, rate_;
  std::vector<int64_t> inflight_tok_, uncached_;
  std::vector<uint32_t> lora_state_;  // bit0 active, bit1 waiting, bits 8..: popcount sum
  std::vector<int32_t> matched_full_;
  std::vector<double> total_, tmp_, keys_, lut_;
  std::vector<uint32_t> order_;
  std::vector<uint32_t> sizes_;  // filters: prefix-index entries per eligible row
};

}  // namespace igw
