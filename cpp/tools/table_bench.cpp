// Why the endpoint table uses a per-row seqlock: measures a reader copying the columns a
// pick needs (flags, waiting, kv) for every row while a writer thread updates rows flat out,
//   (a) through the seqlock (EndpointTable's column gather: sequence, columns, re-check),
//   (b) as a plain unsynchronized copy of the same columns -- the floor for any scheme,
//       including a double buffer, whose read path is the same copy plus a buffer pick.
// If (a) is close to (b) and retries are rare, the seqlock costs readers next to nothing and
// needs no second copy of the table. Not built by default:
//   g++ -std=c++20 -O3 -Icpp cpp/tools/table_bench.cpp cpp/endpoint_table.cpp -o /tmp/tb -pthread
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <thread>
#include <vector>

#include "endpoint_table.h"

using namespace igw;

int main() {
  for (bool writing : {false, true})
  for (uint32_t n : {1000u, 10000u}) {
    EndpointTable t(n);
    for (uint32_t i = 0; i < n; ++i) t.add();
    std::atomic<bool> stop{false};
    std::atomic<uint64_t> writes{0};
    std::thread writer([&] {
      uint32_t e = 0;
      while (writing && !stop.load(std::memory_order_relaxed)) {
        MetricsUpdate u{static_cast<int32_t>(e % 50), 0, 0.5, 1.0};
        t.update(e, u);
        e = (e + 7919) % n;
        writes.fetch_add(1, std::memory_order_relaxed);
      }
    });
    std::vector<uint32_t> ids(n), seqs(n);
    std::vector<int32_t> w(n);
    std::vector<float> kv(n);
    const int rounds = 2000;
    uint64_t retries = 0;
    std::vector<double> seq_t, raw_t;
    using clk = std::chrono::steady_clock;
    auto t0 = clk::now();
    for (int r = 0; r < rounds; ++r) {
      const auto r0 = clk::now();
      uint32_t c = 0;
      for (uint32_t e = 0; e < n; ++e) {
        const uint32_t s = t.read_begin(e);
        if (EndpointTable::ld(t.flags_[e]) & 1) { ids[c] = e; seqs[c] = s; ++c; }
      }
      for (uint32_t j = 0; j < c; ++j) w[j] = EndpointTable::ld(t.waiting_[ids[j]]);
      for (uint32_t j = 0; j < c; ++j) kv[j] = EndpointTable::ld(t.kv_util_[ids[j]]);
      std::atomic_thread_fence(std::memory_order_acquire);
      for (uint32_t j = 0; j < c; ++j) {
        if (t.seq_[ids[j]].load(std::memory_order_relaxed) == seqs[j]) continue;
        ++retries;
        for (;;) {
          const uint32_t s = t.read_begin(ids[j]);
          w[j] = EndpointTable::ld(t.waiting_[ids[j]]);
          kv[j] = EndpointTable::ld(t.kv_util_[ids[j]]);
          if (t.read_valid(ids[j], s)) break;
        }
      }
      seq_t.push_back(std::chrono::duration<double, std::micro>(clk::now() - r0).count());
    }
    auto t1 = clk::now();
    for (int r = 0; r < rounds; ++r) {
      const auto r0 = clk::now();
      uint32_t c = 0;
      for (uint32_t e = 0; e < n; ++e)
        if (EndpointTable::ld(t.flags_[e]) & 1) ids[c++] = e;
      for (uint32_t j = 0; j < c; ++j) w[j] = EndpointTable::ld(t.waiting_[ids[j]]);
      for (uint32_t j = 0; j < c; ++j) kv[j] = EndpointTable::ld(t.kv_util_[ids[j]]);
      raw_t.push_back(std::chrono::duration<double, std::micro>(clk::now() - r0).count());
    }
    auto t2 = clk::now();
    stop = true;
    writer.join();
    std::sort(seq_t.begin(), seq_t.end());
    std::sort(raw_t.begin(), raw_t.end());
    const double seq_us = seq_t[seq_t.size() / 2], raw_us = raw_t[raw_t.size() / 2];
    std::printf("writer %s rows=%u seqlock gather p50 %.2f us, plain copy p50 %.2f us, retries/gather %.3f, "
                "writes/s %.2fM\n",
                writing ? "on " : "off", n, seq_us, raw_us, double(retries) / rounds,
                writes.load() / std::chrono::duration<double>(t2 - t0).count() / 1e6);
  }
}
