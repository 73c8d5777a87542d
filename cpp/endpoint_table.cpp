#include "endpoint_table.h"

#include <algorithm>
#include <bit>
#include <cmath>

namespace igw {

namespace {
template <class T>
std::unique_ptr<std::atomic<T>[]> column(size_t n) {
  auto p = std::make_unique<std::atomic<T>[]>(n);
  for (size_t i = 0; i < n; ++i) p[i].store(T{}, std::memory_order_relaxed);
  return p;
}
}  // namespace

EndpointTable::EndpointTable(uint32_t capacity) : capacity_(capacity) {
  if (capacity < 1 || capacity > kMaxEndpoints)
    throw Error("capacity must be in 1..65535, got " + std::to_string(capacity));
  seq_ = column<uint32_t>(capacity);
  flags_ = column<uint8_t>(capacity);
  waiting_ = column<int32_t>(capacity);
  running_ = column<int32_t>(capacity);
  block_size_ = column<int32_t>(capacity);
  max_lora_ = column<int32_t>(capacity);
  inflight_requests_ = column<int32_t>(capacity);
  kv_util_ = column<float>(capacity);
  prefill_rate_ = column<float>(capacity);
  kv_blocks_ = column<int64_t>(capacity);
  inflight_tokens_ = column<int64_t>(capacity);
  updated_at_ = column<double>(capacity);
  lora_active_ = column<uint64_t>(size_t{capacity} * 4);
  lora_waiting_ = column<uint64_t>(size_t{capacity} * 4);
  lora_used_ = column<int32_t>(capacity);
}

void EndpointTable::write_begin(uint32_t e) noexcept {
  seq_[e].store(seq_[e].load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_release);
}

void EndpointTable::write_end(uint32_t e) noexcept {
  seq_[e].store(seq_[e].load(std::memory_order_relaxed) + 1, std::memory_order_release);
}

void EndpointTable::write_row(uint32_t e, const Row& r) noexcept {
  auto st = [](auto& a, auto v) { a.store(v, std::memory_order_relaxed); };
  st(flags_[e], static_cast<uint8_t>((r.live ? 1 : 0) | (r.ready ? 2 : 0)));
  st(waiting_[e], r.waiting);
  st(running_[e], r.running);
  st(kv_util_[e], r.kv_util);
  st(kv_blocks_[e], r.kv_blocks);
  st(block_size_[e], r.block_size);
  st(max_lora_[e], r.max_lora);
  int32_t used = 0;
  for (int w = 0; w < 4; ++w) {
    st(lora_active_[size_t{e} * 4 + w], r.lora_active[w]);
    st(lora_waiting_[size_t{e} * 4 + w], r.lora_waiting[w]);
    used += std::popcount(r.lora_active[w]) + std::popcount(r.lora_waiting[w]);
  }
  st(lora_used_[e], used);
  st(inflight_requests_[e], r.inflight_requests);
  st(inflight_tokens_[e], r.inflight_tokens);
  st(updated_at_[e], r.updated_at);
  st(prefill_rate_[e], r.prefill_rate);
}

Row EndpointTable::read(uint32_t e) const noexcept {
  Row r;
  for (;;) {
    const uint32_t s = read_begin(e);
    const uint8_t f = ld(flags_[e]);
    r.live = f & 1;
    r.ready = (f & 2) != 0;
    r.waiting = ld(waiting_[e]);
    r.running = ld(running_[e]);
    r.kv_util = ld(kv_util_[e]);
    r.kv_blocks = ld(kv_blocks_[e]);
    r.block_size = ld(block_size_[e]);
    r.max_lora = ld(max_lora_[e]);
    for (int w = 0; w < 4; ++w) {
      r.lora_active[w] = ld(lora_active_[size_t{e} * 4 + w]);
      r.lora_waiting[w] = ld(lora_waiting_[size_t{e} * 4 + w]);
    }
    r.inflight_requests = ld(inflight_requests_[e]);
    r.inflight_tokens = ld(inflight_tokens_[e]);
    r.updated_at = ld(updated_at_[e]);
    r.prefill_rate = ld(prefill_rate_[e]);
    if (read_valid(e, s)) return r;
  }
}

void EndpointTable::check_live(uint32_t endpoint, const char* what) const {
  if (endpoint >= capacity_ || !(ld(flags_[endpoint]) & 1))
    throw Error(std::string(what) + ": endpoint " + std::to_string(endpoint) +
                " is not a live endpoint id");
}

bool EndpointTable::is_live(int64_t endpoint) const noexcept {
  return endpoint >= 0 && endpoint < capacity_ && (ld(flags_[endpoint]) & 1);
}

uint32_t EndpointTable::add() {
  std::lock_guard lock(write_mu_);
  const uint32_t hw = high_water_.load(std::memory_order_relaxed);
  uint32_t id = hw;
  for (uint32_t e = 0; e < hw; ++e) {
    if (!(ld(flags_[e]) & 1)) {
      id = e;
      break;
    }
  }
  if (id >= capacity_)
    throw Error("endpoint table is full (capacity " + std::to_string(capacity_) + ")");
  Row fresh;
  fresh.live = true;
  write_begin(id);
  write_row(id, fresh);
  write_end(id);
  if (id >= hw) high_water_.store(id + 1, std::memory_order_release);
  live_count_.fetch_add(1, std::memory_order_relaxed);
  bump_version();
  return id;
}

void EndpointTable::remove(uint32_t endpoint) {
  std::lock_guard lock(write_mu_);
  check_live(endpoint, "remove");
  write_begin(endpoint);
  write_row(endpoint, Row{});
  write_end(endpoint);
  live_count_.fetch_sub(1, std::memory_order_relaxed);
  uint32_t hw = high_water_.load(std::memory_order_relaxed);
  while (hw > 0 && !(ld(flags_[hw - 1]) & 1)) --hw;
  high_water_.store(hw, std::memory_order_release);
  bump_version();
}

AdapterBits EndpointTable::bits_of(const std::vector<int>& ids, const char* what) const {
  AdapterBits b{};
  for (int a : ids) {
    if (a < 0 || a >= static_cast<int>(adapters_.size()))
      throw Error(std::string(what) + ": adapter id " + std::to_string(a) +
                  " is not registered (see adapter_id)");
    b[a / 64] |= uint64_t{1} << (a % 64);
  }
  return b;
}

void EndpointTable::update(uint32_t endpoint, const MetricsUpdate& m) {
  std::lock_guard lock(write_mu_);
  check_live(endpoint, "update");
  if (m.waiting < 0 || m.running < 0)
    throw Error("waiting and running must be >= 0, got " + std::to_string(m.waiting) + ", " +
                std::to_string(m.running));
  if (!(m.kv_util >= -1e-6 && m.kv_util <= 1 + 1e-6))
    throw Error("kv_util must be within 0..1, got " + std::to_string(m.kv_util));
  if (!std::isfinite(m.now)) throw Error("now must be finite");
  const std::pair<const char*, int64_t> opts[] = {
      {"kv_blocks", m.kv_blocks}, {"block_size", m.block_size}, {"max_lora", m.max_lora}};
  for (auto [name, v] : opts)
    if (v < -1) throw Error(std::string(name) + " must be >= 0 (or -1 to keep), got " +
                            std::to_string(v));
  if (m.block_size > INT32_MAX || m.max_lora > INT32_MAX)
    throw Error("block_size and max_lora must fit in int32");
  Row r = read(endpoint);
  if (m.lora_active) r.lora_active = bits_of(*m.lora_active, "lora_active");
  if (m.lora_waiting) r.lora_waiting = bits_of(*m.lora_waiting, "lora_waiting");
  r.waiting = m.waiting;
  r.running = m.running;
  r.kv_util = static_cast<float>(std::clamp(m.kv_util, 0.0, 1.0));
  r.updated_at = m.now;
  if (m.kv_blocks >= 0) r.kv_blocks = m.kv_blocks;
  if (m.block_size >= 0) r.block_size = static_cast<int32_t>(m.block_size);
  if (m.max_lora >= 0) r.max_lora = static_cast<int32_t>(m.max_lora);
  write_begin(endpoint);
  write_row(endpoint, r);
  write_end(endpoint);
  bump_version();
}

void EndpointTable::set_ready(uint32_t endpoint, bool ready) {
  std::lock_guard lock(write_mu_);
  check_live(endpoint, "set_ready");
  write_begin(endpoint);
  flags_[endpoint].store(static_cast<uint8_t>(1 | (ready ? 2 : 0)), std::memory_order_relaxed);
  write_end(endpoint);
  bump_version();
}

void EndpointTable::set_prefill_rate(uint32_t endpoint, double tps) {
  if (!std::isfinite(tps) || tps < 0)
    throw Error("tokens_per_second must be finite and >= 0, got " + std::to_string(tps));
  std::lock_guard lock(write_mu_);
  check_live(endpoint, "set_prefill_rate");
  write_begin(endpoint);
  prefill_rate_[endpoint].store(static_cast<float>(tps), std::memory_order_relaxed);
  write_end(endpoint);
  bump_version();
}

int32_t EndpointTable::inflight_requests_of(uint32_t endpoint) const {
  check_live(endpoint, "inflight_requests_of");
  return ld(inflight_requests_[endpoint]);
}

void EndpointTable::add_inflight(uint32_t endpoint, int64_t requests, int64_t tokens) {
  std::lock_guard lock(write_mu_);
  check_live(endpoint, "add_inflight");
  const int64_t r = std::clamp<int64_t>(ld(inflight_requests_[endpoint]) + requests, 0,
                                        INT32_MAX);
  const int64_t t = std::max<int64_t>(0, ld(inflight_tokens_[endpoint]) + tokens);
  write_begin(endpoint);
  inflight_requests_[endpoint].store(static_cast<int32_t>(r), std::memory_order_relaxed);
  inflight_tokens_[endpoint].store(t, std::memory_order_relaxed);
  write_end(endpoint);
}

int EndpointTable::adapter_id(const std::string& name) {
  std::lock_guard lock(write_mu_);
  if (auto it = adapter_ids_.find(name); it != adapter_ids_.end()) return it->second;
  if (adapters_.size() >= kMaxAdapters)
    throw Error("adapter registry is full (256 names); cannot add '" + name + "'");
  const int id = static_cast<int>(adapters_.size());
  adapters_.push_back(name);
  adapter_ids_.emplace(name, id);
  return id;
}

int EndpointTable::find_adapter(const std::string& name) const {
  std::lock_guard lock(write_mu_);
  const auto it = adapter_ids_.find(name);
  return it == adapter_ids_.end() ? -1 : it->second;
}

std::string EndpointTable::adapter_name(int adapter) const {
  std::lock_guard lock(write_mu_);
  if (adapter < 0 || adapter >= static_cast<int>(adapters_.size()))
    throw Error("adapter id " + std::to_string(adapter) + " is not registered");
  return adapters_[adapter];
}

int EndpointTable::adapter_count() const {
  std::lock_guard lock(write_mu_);
  return static_cast<int>(adapters_.size());
}

void EndpointTable::put_row(const SnapshotOut& o, size_t i, const Row& r) noexcept {
  o.active[i] = r.live;
  o.ready[i] = r.live && r.ready;
  o.waiting[i] = r.waiting;
  o.running[i] = r.running;
  o.kv_util[i] = r.kv_util;
  o.kv_blocks[i] = r.kv_blocks;
  o.block_size[i] = r.block_size;
  o.max_lora[i] = r.max_lora;
  for (int w = 0; w < 4; ++w) {
    o.lora_active[i * 4 + w] = r.lora_active[w];
    o.lora_waiting[i * 4 + w] = r.lora_waiting[w];
  }
  o.inflight_requests[i] = r.inflight_requests;
  o.inflight_tokens[i] = r.inflight_tokens;
  o.updated_at[i] = r.updated_at;
  o.prefill_rate[i] = r.prefill_rate;
}

void EndpointTable::snapshot(const SnapshotOut& o) const {
  // Column by column (streams through memory), then re-check every row's sequence and
  // re-read the few rows written meanwhile: the same seqlock protocol as read(), batched.
  const size_t n = std::min<size_t>(o.n, capacity_);
  std::vector<uint32_t> seqs(n);
  for (size_t i = 0; i < n; ++i) seqs[i] = read_begin(static_cast<uint32_t>(i));
  for (size_t i = 0; i < n; ++i) {
    const uint8_t f = ld(flags_[i]);
    o.active[i] = f & 1;
    o.ready[i] = (f & 3) == 3;
  }
  auto column = [n](auto* dst, const auto* src) {
    for (size_t i = 0; i < n; ++i) dst[i] = ld(src[i]);
  };
  column(o.waiting, waiting_.get());
  column(o.running, running_.get());
  column(o.kv_util, kv_util_.get());
  column(o.kv_blocks, kv_blocks_.get());
  column(o.block_size, block_size_.get());
  column(o.max_lora, max_lora_.get());
  for (size_t i = 0; i < n * 4; ++i) {
    o.lora_active[i] = ld(lora_active_[i]);
    o.lora_waiting[i] = ld(lora_waiting_[i]);
  }
  column(o.inflight_requests, inflight_requests_.get());
  column(o.inflight_tokens, inflight_tokens_.get());
  column(o.updated_at, updated_at_.get());
  column(o.prefill_rate, prefill_rate_.get());
  std::atomic_thread_fence(std::memory_order_acquire);
  for (size_t i = 0; i < n; ++i)
    if (seq_[i].load(std::memory_order_relaxed) != seqs[i])
      put_row(o, i, read(static_cast<uint32_t>(i)));
}

void EndpointTable::inflight(size_t n, int32_t* requests, int64_t* tokens) const {
  n = std::min<size_t>(n, capacity_);
  std::vector<uint32_t> seqs(n);
  for (size_t i = 0; i < n; ++i) seqs[i] = read_begin(static_cast<uint32_t>(i));
  for (size_t i = 0; i < n; ++i) requests[i] = ld(inflight_requests_[i]);
  for (size_t i = 0; i < n; ++i) tokens[i] = ld(inflight_tokens_[i]);
  std::atomic_thread_fence(std::memory_order_acquire);
  for (size_t i = 0; i < n; ++i) {
    if (seq_[i].load(std::memory_order_relaxed) == seqs[i]) continue;
    const Row r = read(static_cast<uint32_t>(i));
    requests[i] = r.inflight_requests;
    tokens[i] = r.inflight_tokens;
  }
}

}  // namespace igw
