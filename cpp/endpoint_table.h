// Structure-of-arrays metrics of every endpoint, written by scrapers and the scheduler and
// read by any number of threads without a lock.
//
// Consistency: a seqlock per row. A writer (serialized by one writer mutex) bumps the row's
// sequence to odd, stores the fields, and bumps it to even; a reader loads the sequence,
// copies the fields it needs, and retries if the sequence was odd or changed. All fields are
// std::atomic with relaxed order plus acquire/release fences, so the protocol is race-free
// under the C++ memory model (and ThreadSanitizer-clean).
//
// Why seqlock rather than a double buffer: rows are written rarely (a scrape every ~50 ms per
// endpoint, plus in-flight bumps per request) and read on every pick, so the reader path is
// what matters. Its floor, for any scheme, is a plain copy of the needed columns; a double
// buffer adds a per-row buffer choice to that copy (and still needs a version check, or a
// writer can lap a slow reader), doubles the table, and makes every write copy a whole row.
// cpp/tools/table_bench.cpp measured the seqlock gather of (flags, waiting, kv) against the
// unsynchronized copy on this 2-core machine (median of 2,000 gathers):
//     1,000 rows: seqlock 2.2 us vs plain copy 1.4 us;  10,000 rows: 22.3 us vs 14.1 us,
// the same with a writer thread doing 4-10 M row updates/s, where under 1% of rows needed a
// re-read. So the seqlock costs ~0.8 ns per row over the floor and no extra memory.
//
// Capacity is fixed at construction and columns never move, so add/remove never disturb
// readers: add zeroes a free row under its seqlock and raises `high_water`; remove clears it.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "common.h"

namespace igw {

using AdapterBits = std::array<uint64_t, 4>;

// One row as plain values (what a reader gets and what update() writes).
struct Row {
  bool live = false;
  bool ready = false;
  int32_t waiting = 0;
  int32_t running = 0;
  float kv_util = 0;
  int64_t kv_blocks = 0;
  int32_t block_size = 0;
  int32_t max_lora = 0;
  AdapterBits lora_active{};
  AdapterBits lora_waiting{};
  int32_t inflight_requests = 0;
  int64_t inflight_tokens = 0;
  double updated_at = 0;
  float prefill_rate = 0;
};

// Fields of update(); negative / nullopt-like markers keep the previous value.
struct MetricsUpdate {
  int32_t waiting = 0;
  int32_t running = 0;
  double kv_util = 0;
  double now = 0;
  int64_t kv_blocks = -1;
  int64_t block_size = -1;
  int64_t max_lora = -1;
  const std::vector<int>* lora_active = nullptr;
  const std::vector<int>* lora_waiting = nullptr;
};

// Destination columns for snapshot(); each pointer holds `n` values (lora: n*4).
struct SnapshotOut {
  size_t n = 0;
  bool* active = nullptr;
  bool* ready = nullptr;
  int32_t* waiting = nullptr;
  int32_t* running = nullptr;
  float* kv_util = nullptr;
  int64_t* kv_blocks = nullptr;
  int32_t* block_size = nullptr;
  int32_t* max_lora = nullptr;
  uint64_t* lora_active = nullptr;
  uint64_t* lora_waiting = nullptr;
  int32_t* inflight_requests = nullptr;
  int64_t* inflight_tokens = nullptr;
  double* updated_at = nullptr;
  float* prefill_rate = nullptr;
};

class EndpointTable {
 public:
  explicit EndpointTable(uint32_t capacity);
  EndpointTable(const EndpointTable&) = delete;
  EndpointTable& operator=(const EndpointTable&) = delete;

  uint32_t capacity() const noexcept { return capacity_; }
  uint32_t high_water() const noexcept { return high_water_.load(std::memory_order_acquire); }
  uint32_t size() const noexcept { return live_count_.load(std::memory_order_relaxed); }
  // Incremented (after the write) by every add, remove, update, set_ready and
  // set_prefill_rate; not by add_inflight, which changes on every pick. A reader that loads
  // the version before taking a snapshot and finds it unchanged later knows the snapshot's
  // metrics, membership and readiness are still current (in-flight counters may not be).
  uint64_t version() const noexcept { return version_.load(std::memory_order_acquire); }

  uint32_t add();
  void remove(uint32_t endpoint);
  bool is_live(int64_t endpoint) const noexcept;
  void update(uint32_t endpoint, const MetricsUpdate& m);
  void set_ready(uint32_t endpoint, bool ready);
  void set_prefill_rate(uint32_t endpoint, double tokens_per_second);
  void add_inflight(uint32_t endpoint, int64_t requests, int64_t tokens);

  int adapter_id(const std::string& name);
  // Id of a registered adapter name, -1 if unknown; never registers (client-chosen names
  // must not fill the 256-name registry).
  int find_adapter(const std::string& name) const;
  std::string adapter_name(int adapter) const;
  int adapter_count() const;

  // Consistent copy of one row (seqlock read).
  Row read(uint32_t endpoint) const noexcept;
  // Copies rows [0, out.n) into the columns, each row consistent.
  void snapshot(const SnapshotOut& out) const;
  // Only the in-flight counters of rows [0, n) (each row's pair consistent): what changes on
  // every pick, for callers that keep a snapshot of the slower-moving rest.
  void inflight(size_t n, int32_t* requests, int64_t* tokens) const;
  // igw's in-flight requests on one live endpoint: one load, for a caller that needs just
  // that row (``inflight`` copies every row).
  int32_t inflight_requests_of(uint32_t endpoint) const;

  // Column access for the scheduler's gather (seqlock-protected by begin/validate).
  uint32_t read_begin(uint32_t e) const noexcept {
    uint32_t s;
    while ((s = seq_[e].load(std::memory_order_acquire)) & 1u) {
    }
    return s;
  }
  bool read_valid(uint32_t e, uint32_t s) const noexcept {
    std::atomic_thread_fence(std::memory_order_acquire);
    return seq_[e].load(std::memory_order_relaxed) == s;
  }
  template <class T>
  static T ld(const std::atomic<T>& a) noexcept {
    return a.load(std::memory_order_relaxed);
  }

  // Columns (public for the scheduler's gather; write only through the methods above).
  std::unique_ptr<std::atomic<uint32_t>[]> seq_;
  std::unique_ptr<std::atomic<uint8_t>[]> flags_;  // bit0 live, bit1 ready
  std::unique_ptr<std::atomic<int32_t>[]> waiting_, running_, block_size_, max_lora_,
      inflight_requests_;
  std::unique_ptr<std::atomic<float>[]> kv_util_, prefill_rate_;
  std::unique_ptr<std::atomic<int64_t>[]> kv_blocks_, inflight_tokens_;
  std::unique_ptr<std::atomic<double>[]> updated_at_;
  std::unique_ptr<std::atomic<uint64_t>[]> lora_active_, lora_waiting_;  // 4 words per row
  // popcount(lora_active) + popcount(lora_waiting), kept by write_row: the lora-affinity
  // scorer's "free slot" test reads one int per endpoint instead of counting 8 words (without
  // -mpopcnt each std::popcount is a dozen instructions: ~30 ns per endpoint per pick).
  std::unique_ptr<std::atomic<int32_t>[]> lora_used_;

 private:
  void check_live(uint32_t endpoint, const char* what) const;
  static void put_row(const SnapshotOut& o, size_t i, const Row& r) noexcept;
  void write_begin(uint32_t e) noexcept;
  void write_end(uint32_t e) noexcept;
  void write_row(uint32_t e, const Row& r) noexcept;
  void bump_version() noexcept { version_.fetch_add(1, std::memory_order_acq_rel); }
  AdapterBits bits_of(const std::vector<int>& ids, const char* what) const;

  uint32_t capacity_;
  std::atomic<uint32_t> high_water_{0};
  std::atomic<uint32_t> live_count_{0};
  std::atomic<uint64_t> version_{0};
  mutable std::mutex write_mu_;  // serializes writers; readers never take it
  std::vector<std::string> adapters_;
  std::unordered_map<std::string, int> adapter_ids_;
};

}  // namespace igw
