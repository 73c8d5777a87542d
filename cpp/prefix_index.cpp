#include "prefix_index.h"

#include <algorithm>
#include <bit>
#include <mutex>
#include <string>

namespace igw {

namespace {
constexpr size_t kMinTable = 1024;

inline uint64_t mix(uint32_t endpoint) noexcept {  // splitmix64 finalizer
  uint64_t z = (uint64_t{endpoint} + 1) * 0x9E3779B97F4A7C15ULL;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}
}  // namespace

PrefixIndex::PrefixIndex(uint32_t max_endpoints, uint32_t default_capacity)
    : max_endpoints_(max_endpoints), default_capacity_(default_capacity) {
  if (max_endpoints < 1 || max_endpoints > kMaxEndpoints)
    throw Error("max_endpoints must be in 1..65535, got " + std::to_string(max_endpoints));
  eps_state_.resize(max_endpoints);
  for (auto& st : eps_state_) st.cap = default_capacity;
  std::fill(std::begin(free_chunk_), std::end(free_chunk_), kNil);
  rehash(kMinTable);
}

void PrefixIndex::check_endpoint(uint32_t endpoint, const char* what) const {
  if (endpoint >= max_endpoints_)
    throw Error(std::string(what) + ": endpoint " + std::to_string(endpoint) +
                " out of range 0.." + std::to_string(max_endpoints_ - 1));
}

void PrefixIndex::note_seen(uint32_t endpoint) noexcept {
  seen_ = std::max(seen_, endpoint + 1);
}

uint32_t PrefixIndex::seen() const noexcept {
  std::shared_lock lock(mu_);
  return seen_;
}

// ------------------------------------------------------------------------- hash table

uint32_t PrefixIndex::slot_of(uint64_t hash) const noexcept {
  return static_cast<uint32_t>((hash * 0x9E3779B97F4A7C15ULL) >> table_shift_);
}

uint32_t PrefixIndex::find(uint64_t hash) const noexcept {
  const uint32_t mask = static_cast<uint32_t>(table_.size() - 1);
  for (uint32_t i = slot_of(hash);; i = (i + 1) & mask) {
    const uint32_t b = table_[i];
    if (b == kNil) return kNil;
    if (blocks_[b].hash == hash) return b;
  }
}

void PrefixIndex::rehash(size_t slots) {
  std::vector<uint32_t> old;
  old.swap(table_);
  table_.assign(slots, kNil);
  table_shift_ = 64 - static_cast<uint32_t>(std::countr_zero(slots));
  const uint32_t mask = static_cast<uint32_t>(slots - 1);
  for (uint32_t b : old) {
    if (b == kNil) continue;
    uint32_t i = slot_of(blocks_[b].hash);
    while (table_[i] != kNil) i = (i + 1) & mask;
    table_[i] = b;
  }
}

uint32_t PrefixIndex::insert_block(uint64_t hash) {
  if ((block_count_ + 1) * 2 > table_.size()) rehash(table_.size() * 2);
  uint32_t b = free_block_;
  if (b != kNil) {
    free_block_ = blocks_[b].off;
  } else {
    b = blocks_.grow(1);
  }
  blocks_[b] = Block{hash, 0, kNil, 0, 0, 0};
  const uint32_t mask = static_cast<uint32_t>(table_.size() - 1);
  uint32_t i = slot_of(hash);
  while (table_[i] != kNil) i = (i + 1) & mask;
  table_[i] = b;
  ++block_count_;
  return b;
}

void PrefixIndex::erase_block(uint32_t b) {
  const uint32_t mask = static_cast<uint32_t>(table_.size() - 1);
  uint32_t i = slot_of(blocks_[b].hash);
  while (table_[i] != b) i = (i + 1) & mask;
  // Backward-shift deletion keeps probe chains intact without tombstones.
  uint32_t j = i;
  for (;;) {
    j = (j + 1) & mask;
    const uint32_t moved = table_[j];
    if (moved == kNil) break;
    const uint32_t home = slot_of(blocks_[moved].hash);
    // Move `moved` into the hole at i unless its home lies cyclically in (i, j].
    const bool home_between = (i <= j) ? (home > i && home <= j) : (home > i || home <= j);
    if (!home_between) {
      table_[i] = moved;
      i = j;
    }
  }
  table_[i] = kNil;
  blocks_[b].off = free_block_;
  blocks_[b].count = 0;
  free_block_ = b;
  --block_count_;
}

// ---------------------------------------------------------------------- holder chunks

uint32_t PrefixIndex::alloc_chunk(uint8_t cls) {
  if (uint32_t off = free_chunk_[cls]; off != kNil) {
    free_chunk_[cls] = holder_node_[off];
    return off;
  }
  const uint32_t n = 1u << cls;
  const uint32_t used = holder_ep_.size() & decltype(holder_ep_)::kMask;
  const uint32_t remaining = used == 0 ? 0 : decltype(holder_ep_)::kSlab - used;
  if (remaining != 0 && remaining < n) {
    // Recycle the slab's tail as smaller chunks before moving to a fresh slab.
    uint32_t at = holder_ep_.size();
    for (int c = 16; c >= 0; --c) {
      if (remaining & (1u << c)) {
        free_chunk(at, static_cast<uint8_t>(c));
        at += 1u << c;
      }
    }
  }
  const uint32_t off = holder_ep_.grow(n);
  holder_node_.grow(n);
  return off;
}

void PrefixIndex::free_chunk(uint32_t off, uint8_t cls) noexcept {
  holder_node_[off] = free_chunk_[cls];
  free_chunk_[cls] = off;
}

void PrefixIndex::add_holder(uint32_t b, uint16_t ep, uint32_t node) {
  Block& blk = blocks_[b];
  if (blk.off == kNil) {
    blk.off = alloc_chunk(0);
    blk.cls = 0;
  } else if (blk.count == (1u << blk.cls)) {
    const uint8_t cls = static_cast<uint8_t>(blk.cls + 1);
    const uint32_t off = alloc_chunk(cls);
    Block& again = blocks_[b];  // slabs never move, but keep the reference obviously fresh
    std::copy_n(holder_ep_.ptr(again.off), again.count, holder_ep_.ptr(off));
    std::copy_n(holder_node_.ptr(again.off), again.count, holder_node_.ptr(off));
    free_chunk(again.off, again.cls);
    again.off = off;
    again.cls = cls;
  }
  Block& cur = blocks_[b];
  cur.holders_fp ^= mix(ep);
  holder_ep_[cur.off + cur.count] = ep;
  holder_node_[cur.off + cur.count] = node;
  ++cur.count;
}

void PrefixIndex::remove_holder(uint32_t b, uint16_t ep) noexcept {
  Block& blk = blocks_[b];
  const uint16_t* eps = holder_ep_.ptr(blk.off);
  uint32_t j = 0;
  while (eps[j] != ep) ++j;  // caller guarantees ep holds b
  blk.holders_fp ^= mix(ep);
  const uint32_t last = blk.off + blk.count - 1;
  holder_ep_[blk.off + j] = holder_ep_[last];
  holder_node_[blk.off + j] = holder_node_[last];
  --blk.count;
  if (blk.count == 0) {
    free_chunk(blk.off, blk.cls);
    erase_block(b);
    return;
  }
  if (blk.cls >= 2 && blk.count <= (1u << blk.cls) / 4) {  // shrink to bound slack
    const uint8_t cls = static_cast<uint8_t>(blk.cls - 1);
    uint32_t off = free_chunk_[cls];
    if (off != kNil) {  // only reuse a free chunk: shrinking must not allocate
      free_chunk_[cls] = holder_node_[off];
      std::copy_n(holder_ep_.ptr(blk.off), blk.count, holder_ep_.ptr(off));
      std::copy_n(holder_node_.ptr(blk.off), blk.count, holder_node_.ptr(off));
      free_chunk(blk.off, blk.cls);
      blk.off = off;
      blk.cls = cls;
    }
  }
}

// ------------------------------------------------------------------------- LRU lists

uint32_t PrefixIndex::alloc_node() {
  if (free_node_ != kNil) {
    const uint32_t n = free_node_;
    free_node_ = nodes_[n].next;
    return n;
  }
  return nodes_.grow(1);
}

void PrefixIndex::unlink(EpState& st, uint32_t n) noexcept {
  Node& node = nodes_[n];
  if (node.prev != kNil) nodes_[node.prev].next = node.next; else st.head = node.next;
  if (node.next != kNil) nodes_[node.next].prev = node.prev; else st.tail = node.prev;
}

void PrefixIndex::push_front(EpState& st, uint32_t n) noexcept {
  Node& node = nodes_[n];
  node.prev = kNil;
  node.next = st.head;
  if (st.head != kNil) nodes_[st.head].prev = n; else st.tail = n;
  st.head = n;
}

void PrefixIndex::evict_tail(uint32_t ep) noexcept {
  EpState& st = eps_state_[ep];
  const uint32_t n = st.tail;
  unlink(st, n);
  remove_holder(nodes_[n].block, static_cast<uint16_t>(ep));
  nodes_[n].next = free_node_;
  free_node_ = n;
  --st.size;
  --entries_;
}

// ------------------------------------------------------------------------- public API

void PrefixIndex::set_capacity(uint32_t endpoint, uint32_t blocks) {
  check_endpoint(endpoint, "set_capacity");
  std::unique_lock lock(mu_);
  note_seen(endpoint);
  EpState& st = eps_state_[endpoint];
  st.cap = blocks;
  while (st.size > st.cap) evict_tail(endpoint);
}

uint32_t PrefixIndex::capacity_of(uint32_t endpoint) const {
  check_endpoint(endpoint, "capacity_of");
  std::shared_lock lock(mu_);
  return eps_state_[endpoint].cap;
}

void PrefixIndex::record(uint32_t endpoint, std::span<const uint64_t> hashes) {
  check_endpoint(endpoint, "record");
  std::unique_lock lock(mu_);
  note_seen(endpoint);
  const auto ep = static_cast<uint16_t>(endpoint);
  for (size_t k = hashes.size(); k-- > 0;) {  // block 0 ends up most recent
    const uint64_t h = hashes[k];
    uint32_t b = find(h);
    uint32_t node = kNil;
    if (b == kNil) {
      b = insert_block(h);
    } else {
      const Block& blk = blocks_[b];
      const uint16_t* eps = holder_ep_.ptr(blk.off);
      for (uint32_t j = 0; j < blk.count; ++j) {
        if (eps[j] == ep) {
          node = holder_node_[blk.off + j];
          break;
        }
      }
    }
    EpState& st = eps_state_[endpoint];
    if (node != kNil) {
      unlink(st, node);
      push_front(st, node);
      continue;
    }
    node = alloc_node();
    nodes_[node].block = b;
    push_front(st, node);
    add_holder(b, ep, node);
    ++st.size;
    ++entries_;
    while (st.size > st.cap) evict_tail(endpoint);
  }
}

void PrefixIndex::match(std::span<const uint64_t> hashes, std::span<int32_t> out) const {
  std::fill(out.begin(), out.end(), 0);
  std::shared_lock lock(mu_);
  const uint32_t limit = static_cast<uint32_t>(std::min<size_t>(out.size(), seen_));
  int32_t* const m = out.data();
  int32_t stamp = 0;          // alive endpoints hold this value in m[]
  const Block* prev = nullptr;
  size_t i = 0;
  for (; i < hashes.size(); ++i) {
    if (i + 1 < hashes.size()) __builtin_prefetch(&table_[slot_of(hashes[i + 1])]);
    const uint32_t b = find(hashes[i]);
    if (b == kNil) break;
    const Block& blk = blocks_[b];
    if (prev && blk.count == prev->count && blk.holders_fp == prev->holders_fp) {
      prev = &blk;  // same holders as block i-1: alive set unchanged
      continue;
    }
    // Alive endpoints that hold block i extend to the new stamp i+1 ...
    const auto next = static_cast<int32_t>(i + 1);
    uint32_t advanced = 0;
    const uint16_t* eps = holder_ep_.ptr(blk.off);
    for (uint32_t j = 0; j < blk.count; ++j) {
      const uint32_t e = eps[j];
      const bool extend = e < limit && m[e] == stamp;
      m[e < limit ? e : 0] = extend ? next : m[e < limit ? e : 0];
      advanced += extend;
    }
    // ... and those still on the old stamp dropped out after i blocks. They all hold
    // block i-1, since the alive set is always a subset of the last block's holders.
    if (prev) {
      const uint16_t* pe = holder_ep_.ptr(prev->off);
      for (uint32_t j = 0; j < prev->count; ++j) {
        const uint32_t e = pe[j];
        if (e < limit && m[e] == stamp) m[e] = static_cast<int32_t>(i);
      }
    }
    stamp = next;
    prev = &blk;
    if (advanced == 0) return;
  }
  if (prev) {  // the walk ended: survivors matched all i blocks
    const uint16_t* pe = holder_ep_.ptr(prev->off);
    for (uint32_t j = 0; j < prev->count; ++j) {
      const uint32_t e = pe[j];
      if (e < limit && m[e] == stamp) m[e] = static_cast<int32_t>(i);
    }
  }
}

void PrefixIndex::remove_endpoint(uint32_t endpoint) {
  check_endpoint(endpoint, "remove_endpoint");
  std::unique_lock lock(mu_);
  note_seen(endpoint);
  EpState& st = eps_state_[endpoint];
  while (st.size > 0) evict_tail(endpoint);
  st.cap = default_capacity_;
}

uint64_t PrefixIndex::entries() const {
  std::shared_lock lock(mu_);
  return entries_;
}

uint64_t PrefixIndex::blocks() const {
  std::shared_lock lock(mu_);
  return block_count_;
}

uint32_t PrefixIndex::endpoint_entries(uint32_t endpoint) const {
  check_endpoint(endpoint, "endpoint_entries");
  std::shared_lock lock(mu_);
  return eps_state_[endpoint].size;
}

uint64_t PrefixIndex::memory_bytes() const {
  std::shared_lock lock(mu_);
  return blocks_.bytes() + nodes_.bytes() + holder_ep_.bytes() + holder_node_.bytes() +
         table_.capacity() * sizeof(uint32_t) + eps_state_.capacity() * sizeof(EpState);
}

}  // namespace igw
