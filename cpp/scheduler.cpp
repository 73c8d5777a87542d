#include "scheduler.h"

#include <algorithm>
#include <cmath>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#include <limits>
#include <tuple>

namespace igw {

namespace {

// A built-in plugin: its type name, kind, and up to two parameters with their defaults.
template <typename Kind>
struct PluginInfo {
  const char* type;
  Kind kind;
  const char* p1;
  double d1;
  const char* p2;
  double d2;
};
using ScorerInfo = PluginInfo<ScorerKind>;
using FilterInfo = PluginInfo<FilterKind>;

// The built-in scorers, their parameters and defaults (must match _core.pyi).
constexpr ScorerInfo kScorers[] = {
    {"queue-scorer", ScorerKind::Queue, nullptr, 0, nullptr, 0},
    {"running-requests-size-scorer", ScorerKind::RunningRequests, nullptr, 0, nullptr, 0},
    {"kv-cache-utilization-scorer", ScorerKind::KvCache, nullptr, 0, nullptr, 0},
    {"prefix-cache-scorer", ScorerKind::Prefix, "matchLengthWeight", 0.0, "scaleTokens", 8192},
    {"lora-affinity-scorer", ScorerKind::Lora, nullptr, 0, nullptr, 0},
    {"active-request-scorer", ScorerKind::ActiveRequest, "idleThreshold", 0, "maxBusyScore", 1},
    {"token-load-scorer", ScorerKind::TokenLoad, "queueThresholdTokens", 4194304, nullptr, 0},
    {"load-aware-scorer", ScorerKind::LoadAware, "queueThreshold", 128, nullptr, 0},
    {"predicted-ttft-scorer", ScorerKind::PredictedTtft, "defaultPrefillRate", 8000,
     "waitingTokens", 512},
};

// The built-in filters, their parameters and defaults (must match _core.pyi).
constexpr FilterInfo kFilters[] = {
    {"new-prefix-spread-filter", FilterKind::NewPrefixSpread, "newPrefixFraction", 0.3,
     "tolerance", 0.0},
};

template <typename Kind, size_t N>
const PluginInfo<Kind>* find_plugin(const PluginInfo<Kind> (&table)[N], const std::string& type) {
  for (const auto& info : table)
    if (type == info.type) return &info;
  return nullptr;
}

template <typename Kind, size_t N>
std::string type_names(const PluginInfo<Kind> (&table)[N]) {
  std::string names;
  for (const auto& info : table) names += (names.empty() ? "" : ", ") + std::string(info.type);
  return names;
}

void check_param(const std::string& type, const std::string& key, double v) {
  auto fail = [&](const char* what) {
    throw Error(type + ": parameter " + key + " must be " + what + ", got " +
                std::to_string(v));
  };
  if (!std::isfinite(v)) fail("finite");
  if ((key == "scaleTokens" || key == "queueThresholdTokens" || key == "queueThreshold" ||
       key == "defaultPrefillRate") && !(v > 0))
    fail("> 0");
  if ((key == "matchLengthWeight" || key == "newPrefixFraction") && !(v >= 0 && v <= 1))
    fail("within 0..1");
  if ((key == "idleThreshold" || key == "maxBusyScore" || key == "waitingTokens" ||
       key == "tolerance") && v < 0)
    fail(">= 0");
}

inline double clamp01(double v) noexcept { return std::min(1.0, std::max(0.0, v)); }

// x = clamp(x, 0, 1); total += w * x. SSE2 max/min map NaN to 0 like clamp01 does.
void accumulate(double w, double* __restrict x, double* __restrict total, size_t m) noexcept {
  size_t j = 0;
#if defined(__SSE2__)
  const __m128d zero = _mm_setzero_pd(), one = _mm_set1_pd(1.0), wv = _mm_set1_pd(w);
  for (; j + 2 <= m; j += 2) {
    const __m128d c = _mm_min_pd(_mm_max_pd(_mm_loadu_pd(x + j), zero), one);
    _mm_storeu_pd(x + j, c);
    _mm_storeu_pd(total + j, _mm_add_pd(_mm_loadu_pd(total + j), _mm_mul_pd(wv, c)));
  }
#endif
  for (; j < m; ++j) {
    x[j] = clamp01(x[j]);
    total[j] += w * x[j];
  }
}

enum Need : uint32_t {
  kWaiting = 1, kRunning = 2, kKv = 4, kInflightReq = 8, kInflightTok = 16, kRate = 32,
  kLora = 64, kUncached = 128,
};

uint32_t needs_of(ScorerKind k) {
  switch (k) {
    case ScorerKind::Queue: return kWaiting;
    case ScorerKind::RunningRequests: return kRunning;
    case ScorerKind::KvCache: return kKv;
    case ScorerKind::Prefix: return 0;
    case ScorerKind::Lora: return kLora;
    case ScorerKind::ActiveRequest: return kInflightReq;
    case ScorerKind::TokenLoad: return kInflightTok | kUncached;
    case ScorerKind::LoadAware: return kWaiting;
    case ScorerKind::PredictedTtft: return kWaiting | kInflightTok | kRate | kUncached;
  }
  return 0;
}

}  // namespace

// ---------------------------------------------------------------------------- Profile

Profile::Profile(
    const std::vector<std::tuple<std::string, double, std::vector<std::pair<std::string, double>>>>&
        scorers,
    const std::string& picker) {
  for (size_t n = 0; n < scorers.size(); ++n) {
    const auto& [type, weight, params] = scorers[n];
    const ScorerInfo* info = find_plugin(kScorers, type);
    const FilterInfo* finfo = find_plugin(kFilters, type);
    if (!info && !finfo)
      throw Error("scorers[" + std::to_string(n) + "]: unknown scorer type '" + type +
                  "'; known: " + type_names(kScorers) + "; filters: " + type_names(kFilters));
    if (!std::isfinite(weight) || weight < 0)
      throw Error("scorers[" + std::to_string(n) + "] (" + type +
                  "): weight must be finite and >= 0, got " + std::to_string(weight));
    auto declared = [](const auto& plugin) {
      return std::tuple{plugin.p1, plugin.d1, plugin.p2, plugin.d2};
    };
    auto [p1, v1, p2, v2] = info ? declared(*info) : declared(*finfo);
    for (const auto& [key, value] : params) {
      if (p1 && key == p1) {
        v1 = value;
      } else if (p2 && key == p2) {
        v2 = value;
      } else {
        std::string allowed;
        if (p1) allowed += p1;
        if (p2) allowed += std::string(", ") + p2;
        throw Error(type + ": unknown parameter '" + key + "'; allowed: " +
                    (allowed.empty() ? "none" : allowed));
      }
      check_param(type, key, value);
    }
    if (finfo)
      filters_.push_back(FilterSpec{finfo->kind, type, v1, v2});
    else
      scorers_.push_back(ScorerSpec{info->kind, type, weight, v1, v2});
  }
  if (picker == "max-score-picker") picker_ = PickerKind::MaxScore;
  else if (picker == "weighted-random-picker") picker_ = PickerKind::WeightedRandom;
  else if (picker == "random-picker") picker_ = PickerKind::Random;
  else
    throw Error("unknown picker '" + picker +
                "'; known: max-score-picker, weighted-random-picker, random-picker");
}

std::vector<std::string> Profile::scorer_types() const {
  std::vector<std::string> out;
  for (const auto& s : scorers_) out.push_back(s.type);
  return out;
}

std::vector<std::string> Profile::filter_types() const {
  std::vector<std::string> out;
  for (const auto& f : filters_) out.push_back(f.type);
  return out;
}

// -------------------------------------------------------------------------- Scheduler

Scheduler::Scheduler(std::shared_ptr<EndpointTable> table, std::shared_ptr<PrefixIndex> index,
                     uint64_t seed)
    : table_(std::move(table)), index_(std::move(index)), rng_state_(seed) {
  if (!table_ || !index_) throw Error("Scheduler needs an EndpointTable and a PrefixIndex");
  if (index_->max_endpoints() < table_->capacity())
    throw Error("PrefixIndex max_endpoints (" + std::to_string(index_->max_endpoints()) +
                ") must be >= EndpointTable capacity (" + std::to_string(table_->capacity()) +
                ")");
}

uint64_t Scheduler::rng() noexcept {
  uint64_t z = (rng_state_ += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

uint64_t Scheduler::below(uint64_t n) noexcept {  // Lemire's multiply-shift reduction
  return static_cast<uint64_t>((static_cast<unsigned __int128>(rng()) * n) >> 64);
}

double Scheduler::uniform01() noexcept {
  return 1.0 - static_cast<double>(rng() >> 11) * 0x1.0p-53;
}

void Scheduler::gather(uint32_t need, const PickRequest& req, uint32_t n) {
  const EndpointTable& t = *table_;
  ids_.resize(n);
  seqs_.resize(n);
  // Pass 1: eligible rows and their seqlock sequence. Pass 2: one tight loop per needed
  // column. Pass 3: re-check each row's sequence; the rare row written meanwhile is re-read
  // on its own. Per row this is the classic seqlock read, split into column loops so the
  // common case streams through memory instead of hopping across 14 columns per row.
  const bool* cand = req.has_candidates ? req.candidates.data() : nullptr;
  const uint32_t cand_n = static_cast<uint32_t>(req.candidates.size());
  uint32_t c = 0;
  uint32_t* const ids = ids_.data();  // locals: atomics would otherwise force reloads
  uint32_t* const seqs = seqs_.data();
  const std::atomic<uint32_t>* const seq = t.seq_.get();
  const std::atomic<uint8_t>* const flags = t.flags_.get();
  for (uint32_t e = 0; e < n; ++e) {
    if (cand && (e >= cand_n || !cand[e])) continue;
    uint32_t sq = seq[e].load(std::memory_order_acquire);
    if (sq & 1u) sq = t.read_begin(e);  // a writer is mid-row: wait for it
    if ((flags[e].load(std::memory_order_relaxed) & 3) == 3) {
      ids[c] = e;
      seqs[c] = sq;
      ++c;
    }
  }
  ids_.resize(c);
  load_columns(need, req.lora, 0, c);
  std::atomic_thread_fence(std::memory_order_acquire);
  bool dropped = false;
  for (uint32_t j = 0; j < c; ++j) {
    const uint32_t e = ids[j];
    if (seq[e].load(std::memory_order_relaxed) == seqs[j]) continue;
    for (;;) {  // written while we read: redo this row alone
      const uint32_t sq = t.read_begin(e);
      const bool ok = (EndpointTable::ld(t.flags_[e]) & 3) == 3;
      if (ok) load_columns(need, req.lora, j, j + 1);
      if (t.read_valid(e, sq)) {
        if (!ok) {
          ids_[j] = kDropped;
          dropped = true;
        }
        break;
      }
    }
  }
  for (auto* v : {&waiting_, &running_, &inflight_req_, &max_lora_}) v->resize(c);
  kv_.resize(c); rate_.resize(c); inflight_tok_.resize(c); lora_state_.resize(c);
  uncached_.resize(c);
  if (dropped) compact();  // the rows that stopped being live/ready while we read
  c = static_cast<uint32_t>(ids_.size());
  if (need & kUncached) {
    for (size_t j = 0; j < c; ++j)
      uncached_[j] = std::max<int64_t>(
          0, req.prompt_tokens - int64_t{matched_full_[ids_[j]]} * req.block_tokens);
  }
}

void Scheduler::compact() {
  const size_t c = ids_.size();
  size_t w = 0;
  for (size_t j = 0; j < c; ++j) {
    if (ids_[j] == kDropped) continue;
    ids_[w] = ids_[j];
    waiting_[w] = waiting_[j]; running_[w] = running_[j];
    inflight_req_[w] = inflight_req_[j]; max_lora_[w] = max_lora_[j];
    kv_[w] = kv_[j]; rate_[w] = rate_[j]; inflight_tok_[w] = inflight_tok_[j];
    lora_state_[w] = lora_state_[j]; uncached_[w] = uncached_[j];
    ++w;
  }
  for (auto* v : {&waiting_, &running_, &inflight_req_, &max_lora_}) v->resize(w);
  kv_.resize(w); rate_.resize(w); inflight_tok_.resize(w); lora_state_.resize(w);
  uncached_.resize(w);
  ids_.resize(w);
}

// new-prefix-spread-filter (igw.scheduling.plugins.spread says why): a request is new when
// no endpoint -- eligible or not, as the Python plugin matched the whole index -- holds more
// than newPrefixFraction of its blocks; then only the eligible rows whose prefix-index entry
// count is within (1 + tolerance) of the smallest stay. No prompt or fewer than two eligible
// rows: nothing is dropped. Marks dropped rows kDropped; returns whether any was.
bool Scheduler::spread_keep(const FilterSpec& f, const PickRequest& req, uint32_t n) {
  const size_t m = ids_.size();
  if (req.hashes.empty() || m < 2) return false;
  int32_t most = 0;
  for (uint32_t e = 0; e < n; ++e) most = std::max(most, matched_full_[e]);
  if (static_cast<double>(most) > f.p1 * static_cast<double>(req.hashes.size())) return false;
  sizes_.resize(m);
  index_->endpoint_entries(ids_, sizes_);
  const double limit =
      static_cast<double>(*std::min_element(sizes_.begin(), sizes_.end())) * (1.0 + f.p2);
  bool dropped = false;
  for (size_t j = 0; j < m; ++j) {
    if (!(static_cast<double>(sizes_[j]) <= limit)) {
      ids_[j] = kDropped;
      dropped = true;
    }
  }
  return dropped;
}

void Scheduler::apply_filters(const Profile& profile, const PickRequest& req, uint32_t n) {
  for (const auto& f : profile.filters()) {
    bool dropped = false;
    switch (f.kind) {
      case FilterKind::NewPrefixSpread:
        dropped = spread_keep(f, req, n);
        break;
    }
    if (dropped) compact();
  }
}

void Scheduler::filter(const Profile& profile, const PickRequest& req, std::span<bool> keep) {
  std::lock_guard lock(mu_);
  const uint32_t n = table_->high_water();
  matched_full_.resize(n);
  index_->match(req.hashes, std::span<int32_t>(matched_full_.data(), n));
  gather(0, req, n);
  order_.assign(ids_.begin(), ids_.end());  // eligible before the filters (ascending)
  apply_filters(profile, req, n);
  size_t k = 0;  // ids_ is an ordered subsequence of order_: clear what is missing
  for (uint32_t e : order_) {
    if (k < ids_.size() && ids_[k] == e) {
      ++k;
    } else if (e < keep.size()) {
      keep[e] = false;
    }
  }
}

void Scheduler::load_columns(uint32_t need, int lora, uint32_t from, uint32_t to) {
  const EndpointTable& t = *table_;
  if (waiting_.size() < to) {
    const size_t n = ids_.size();
    waiting_.resize(n); running_.resize(n); inflight_req_.resize(n); max_lora_.resize(n);
    kv_.resize(n); rate_.resize(n); inflight_tok_.resize(n); lora_state_.resize(n);
  }
  const uint32_t* ids = ids_.data();
  auto column = [&](auto* dst, const auto* src) {
    for (uint32_t j = from; j < to; ++j) dst[j] = EndpointTable::ld(src[ids[j]]);
  };
  if (need & kWaiting) column(waiting_.data(), t.waiting_.get());
  if (need & kRunning) column(running_.data(), t.running_.get());
  if (need & kKv) column(kv_.data(), t.kv_util_.get());
  if (need & kInflightReq) column(inflight_req_.data(), t.inflight_requests_.get());
  if (need & kInflightTok) column(inflight_tok_.data(), t.inflight_tokens_.get());
  if (need & kRate) column(rate_.data(), t.prefill_rate_.get());
  if ((need & kLora) && lora >= 0) {
    const uint64_t bit = uint64_t{1} << (lora % 64);
    for (uint32_t j = from; j < to; ++j) {
      const size_t e = ids[j];
      const int32_t pop = EndpointTable::ld(t.lora_used_[e]);
      // lora == kMaxAdapters: an adapter no endpoint has (not in the registry), so only
      // the free-slot rule can score it.
      const bool known = lora < kMaxAdapters;
      const bool act = known && (EndpointTable::ld(t.lora_active_[e * 4 + lora / 64]) & bit);
      const bool wai = known && (EndpointTable::ld(t.lora_waiting_[e * 4 + lora / 64]) & bit);
      lora_state_[j] = (act ? 1u : 0u) | (wai ? 2u : 0u) | (static_cast<uint32_t>(pop) << 8);
      max_lora_[j] = EndpointTable::ld(t.max_lora_[e]);
    }
  }
}

namespace {
// Min-max over integer columns. Queue lengths span a small range, so when the range is
// narrower than the candidate list the scores come from a per-value table: the same
// division per distinct value instead of per endpoint, bit-identical results.
void minmax_score(const std::vector<int32_t>& x, std::vector<double>& v, std::vector<double>& lut) {
  if (x.empty()) return;
  const auto [lo_it, hi_it] = std::minmax_element(x.begin(), x.end());
  const int32_t lo = *lo_it, hi = *hi_it;
  const double dlo = lo, dhi = hi;
  const size_t m = x.size();
  if (hi == lo) {
    std::fill(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(m), 1.0);
  } else if (static_cast<uint64_t>(int64_t{hi} - lo) < m) {
    lut.resize(static_cast<size_t>(int64_t{hi} - lo) + 1);
    for (size_t i = 0; i < lut.size(); ++i)
      lut[i] = (dhi - static_cast<double>(lo + static_cast<int64_t>(i))) / (dhi - dlo);
    for (size_t j = 0; j < m; ++j) v[j] = lut[static_cast<size_t>(x[j] - lo)];
  } else {
    for (size_t j = 0; j < m; ++j) v[j] = (dhi - static_cast<double>(x[j])) / (dhi - dlo);
  }
}
}  // namespace

void Scheduler::score(const ScorerSpec& s, const PickRequest& req, std::vector<double>& v) {
  const size_t m = ids_.size();
  v.resize(m);
  if (m == 0) return;  // nothing eligible: min/max over candidates is undefined
  switch (s.kind) {
    case ScorerKind::Queue:
      minmax_score(waiting_, v, lut_);
      break;
    case ScorerKind::RunningRequests:
      minmax_score(running_, v, lut_);
      break;
    case ScorerKind::KvCache:
      for (size_t j = 0; j < m; ++j) v[j] = 1.0 - static_cast<double>(kv_[j]);
      break;
    case ScorerKind::LoadAware: {
      const double t = s.p1;
      for (size_t j = 0; j < m; ++j)
        v[j] = waiting_[j] == 0 ? 0.5 : 0.5 * (1.0 - std::min<double>(waiting_[j], t) / t);
      break;
    }
    case ScorerKind::ActiveRequest: {
      const int32_t top = *std::max_element(inflight_req_.begin(), inflight_req_.end());
      for (size_t j = 0; j < m; ++j)
        v[j] = inflight_req_[j] <= s.p1
                   ? 1.0
                   : static_cast<double>(top - inflight_req_[j]) / static_cast<double>(top) *
                         s.p2;
      break;
    }
    case ScorerKind::TokenLoad: {
      const double t = s.p1;
      for (size_t j = 0; j < m; ++j) {
        const int64_t tokens = inflight_tok_[j] + uncached_[j];
        v[j] = tokens == 0 ? 1.0 : 1.0 - std::min(static_cast<double>(tokens), t) / t;
      }
      break;
    }
    case ScorerKind::Lora:
      for (size_t j = 0; j < m; ++j) {
        if (req.lora < 0) { v[j] = 1.0; continue; }
        const uint32_t ls = lora_state_[j];
        if (ls & 1u) v[j] = 1.0;
        else if (static_cast<int64_t>(ls >> 8) < max_lora_[j]) v[j] = 0.8;
        else if (ls & 2u) v[j] = 0.6;
        else v[j] = 0.0;
      }
      break;
    case ScorerKind::Prefix: {
      if (req.hashes.empty()) {
        std::fill(v.begin(), v.end(), 0.0);
        break;
      }
      const double total = static_cast<double>(req.hashes.size());
      const double w = s.p1, scale = s.p2, bt = static_cast<double>(req.block_tokens);
      auto f = [&](int32_t matched) {
        const double mb = matched;
        const double x = std::min(1.0, mb * bt / scale);
        return w * (x * x) + (1.0 - w) * mb / total;
      };
      if (req.hashes.size() < m) {  // per-length table, as for the queue scorer
        lut_.resize(req.hashes.size() + 1);
        for (size_t i = 0; i < lut_.size(); ++i) lut_[i] = f(static_cast<int32_t>(i));
        for (size_t j = 0; j < m; ++j) v[j] = lut_[static_cast<size_t>(matched_full_[ids_[j]])];
      } else {
        for (size_t j = 0; j < m; ++j) v[j] = f(matched_full_[ids_[j]]);
      }
      break;
    }
    case ScorerKind::PredictedTtft: {
      double best = std::numeric_limits<double>::infinity();
      for (size_t j = 0; j < m; ++j) {
        const double rate = rate_[j] != 0.0f ? static_cast<double>(rate_[j]) : s.p1;
        const double work = static_cast<double>(inflight_tok_[j]) +
                            static_cast<double>(waiting_[j]) * s.p2 +
                            static_cast<double>(uncached_[j]);
        v[j] = work / rate;
        best = std::min(best, v[j]);
      }
      for (size_t j = 0; j < m; ++j) v[j] = v[j] <= 0.0 ? 1.0 : best / v[j];
      break;
    }
  }
}

void Scheduler::rank(PickerKind picker, uint32_t k, std::vector<uint32_t>& ranked) {
  const size_t m = ids_.size();
  ranked.clear();
  if (m == 0) return;
  const size_t take = std::min<size_t>(k, m);
  if (picker == PickerKind::WeightedRandom) {
    bool any = false;
    for (double t : total_) any |= t > 0;
    if (!any) picker = PickerKind::Random;
  }
  if (picker == PickerKind::WeightedRandom && take == 1) {
    // A-Res's first key is distributed in proportion to the scores: one uniform draw over
    // the cumulative sum gives the same distribution without a log per endpoint.
    double sum = 0;
    for (size_t j = 0; j < m; ++j) sum += total_[j] > 0 ? total_[j] : 0.0;
    const double r = (1.0 - uniform01()) * sum;  // [0, sum)
    double acc = 0;
    size_t chosen = m;
    for (size_t j = 0; j < m; ++j) {
      if (total_[j] <= 0) continue;
      chosen = j;  // the last positive one absorbs rounding at the top end
      acc += total_[j];
      if (r < acc) break;
    }
    ranked.push_back(ids_[chosen]);
    return;
  }
  if (picker == PickerKind::MaxScore && take == 1) {
    // One pass; ties broken uniformly by reservoir sampling.
    size_t best = 0, ties = 1;
    for (size_t j = 1; j < m; ++j) {
      if (total_[j] > total_[best]) {
        best = j;
        ties = 1;
      } else if (total_[j] == total_[best] && below(++ties) == 0) {
        best = j;
      }
    }
    ranked.push_back(ids_[best]);
    return;
  }
  order_.resize(m);
  for (size_t j = 0; j < m; ++j) order_[j] = static_cast<uint32_t>(j);
  if (picker == PickerKind::Random) {
    for (size_t i = 0; i < take; ++i) {
      const size_t r = i + below(m - i);
      std::swap(order_[i], order_[r]);
    }
  } else {
    keys_.resize(m);
    if (picker == PickerKind::MaxScore) {
      for (size_t j = 0; j < m; ++j) keys_[j] = static_cast<double>(rng() >> 11);  // tie-break
      std::partial_sort(order_.begin(), order_.begin() + take, order_.end(),
                        [&](uint32_t a, uint32_t b) {
                          return total_[a] != total_[b] ? total_[a] > total_[b]
                                                        : keys_[a] < keys_[b];
                        });
    } else {
      // A-Res: key = U^(1/score), compared as log(U)/score; score <= 0 gets the lowest key.
      for (size_t j = 0; j < m; ++j)
        keys_[j] = total_[j] > 0 ? std::log(uniform01()) / total_[j]
                                 : -std::numeric_limits<double>::infinity();
      std::partial_sort(order_.begin(), order_.begin() + take, order_.end(),
                        [&](uint32_t a, uint32_t b) { return keys_[a] > keys_[b]; });
    }
  }
  for (size_t i = 0; i < take; ++i) ranked.push_back(ids_[order_[i]]);
}

void Scheduler::pick(const Profile& profile, const PickRequest& req, PickOutput& out) {
  if (req.k < 1) throw Error("k must be >= 1");
  if (req.prompt_tokens < 0) throw Error("prompt_tokens must be >= 0");
  if (req.charge < 0) throw Error("charge must be >= 0, got " + std::to_string(req.charge));
  if (req.block_tokens < 1) throw Error("block_tokens must be >= 1");
  if (req.lora > kMaxAdapters)
    throw Error("lora must be -1 (none), an adapter id in 0..255 or 256 (unknown adapter), got " +
                std::to_string(req.lora));
  if (req.extra_weights.size() != req.extra_rows)
    throw Error("extra_scores rows must match extra_weights");
  for (size_t j = 0; j < req.extra_weights.size(); ++j)
    if (!std::isfinite(req.extra_weights[j]) || req.extra_weights[j] < 0)
      throw Error("extra_weights[" + std::to_string(j) + "] must be finite and >= 0, got " +
                  std::to_string(req.extra_weights[j]));

  std::lock_guard lock(mu_);
  const uint32_t n = table_->high_water();
  matched_full_.resize(n);
  index_->match(req.hashes, std::span<int32_t>(matched_full_.data(), n));
  uint32_t need = 0;
  for (const auto& s : profile.scorers()) need |= needs_of(s.kind);
  gather(need, req, n);
  if (!profile.filters().empty()) apply_filters(profile, req, n);
  const size_t m = ids_.size();
  total_.assign(m, 0.0);
  out.scores.clear();
  for (const auto& s : profile.scorers()) {
    score(s, req, tmp_);
    accumulate(s.weight, tmp_.data(), total_.data(), m);
    if (req.with_scores) {
      auto& row = out.scores.emplace_back(n, 0.0f);
      for (size_t j = 0; j < m; ++j) row[ids_[j]] = static_cast<float>(tmp_[j]);
    }
  }
  for (size_t r = 0; r < req.extra_rows; ++r) {
    const float* row = req.extra + r * req.extra_stride;
    const double w = req.extra_weights[r];
    std::vector<float>* srow = nullptr;
    if (req.with_scores) srow = &out.scores.emplace_back(n, 0.0f);
    for (size_t j = 0; j < m; ++j) {
      const uint32_t e = ids_[j];
      const float x = e < req.extra_stride ? row[e] : 0.0f;
      const double v = std::isnan(x) ? 0.0 : clamp01(static_cast<double>(x));
      total_[j] += w * v;
      if (srow) (*srow)[e] = static_cast<float>(v);
    }
  }
  if (req.with_scores) {
    auto& row = out.scores.emplace_back(n, 0.0f);
    for (size_t j = 0; j < m; ++j) row[ids_[j]] = static_cast<float>(total_[j]);
  }
  rank(profile.picker(), req.k, out.endpoints);
  out.matched.assign(matched_full_.begin(), matched_full_.end());
  out.total_blocks = static_cast<int64_t>(req.hashes.size());
  out.uncached_tokens = 0;
  if (out.endpoints.empty()) return;
  const uint32_t primary = out.endpoints[0];
  out.uncached_tokens =
      std::max<int64_t>(0, req.prompt_tokens - int64_t{matched_full_[primary]} * req.block_tokens);
  if (req.reserve) {
    try {
      table_->add_inflight(primary, 1, out.uncached_tokens + req.charge);
    } catch (const Error&) {
      // Removed between gather and now: the caller learns it from the endpoint list.
    }
  }
  if (req.record && !req.hashes.empty()) index_->record(primary, req.hashes);
}

bool Scheduler::hot(uint64_t key, double factor) {
  std::lock_guard lock(mu_);
  return demand_.is_hot(key, table_->size(), factor);
}

size_t Scheduler::demand_groups() {
  std::lock_guard lock(mu_);
  return demand_.size();
}

}  // namespace igw
