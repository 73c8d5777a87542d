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
  for (uint32_t c = 1; c <= kClasses; ++c) {
    // c = 1, 2 -> 2, 3; then (4 + q) * 2^k for q = 0..3: 4, 5, 6, 7, 8, 10, 12, 14, ...
    const uint32_t j = c - 3;
    arenas_[c].size = c < 3 ? c + 1 : (4u + j % 4) << (j / 4);
    uint32_t shift = 0;
    while ((size_t{arenas_[c].size} << shift) < kSlabEntries) ++shift;
    arenas_[c].slab_shift = shift;
  }
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
  // Fibonacci-mix the hash, then map its high 32 bits onto [0, size) by multiply-high.
  const uint64_t mixed = (hash * 0x9E3779B97F4A7C15ULL) >> 32;
  return static_cast<uint32_t>((mixed * table_.size()) >> 32);
}

void PrefixIndex::prefetch_slot(uint64_t hash) const noexcept {
  __builtin_prefetch(&table_[slot_of(hash)]);
}

void PrefixIndex::prefetch_block(uint64_t hash) const noexcept {
  const uint32_t b = table_[slot_of(hash)];  // its line was asked for kAhead / 2 blocks ago
  if (b != kNil) __builtin_prefetch(blocks_.ptr(b));
}

uint32_t PrefixIndex::find(uint64_t hash) const noexcept {
  for (uint32_t i = slot_of(hash);; i = next_slot(i)) {
    const uint32_t b = table_[i];
    if (b == kNil) return kNil;
    if (blocks_[b].hash == hash) return b;
  }
}

void PrefixIndex::rehash(size_t slots) {
  std::vector<uint32_t> old;
  old.swap(table_);
  table_.assign(slots, kNil);
  for (uint32_t b : old) {
    if (b == kNil) continue;
    uint32_t i = slot_of(blocks_[b].hash);
    while (table_[i] != kNil) i = next_slot(i);
    table_[i] = b;
  }
}

uint32_t PrefixIndex::insert_block(uint64_t hash) {
  if ((block_count_ + 1) * 2 > table_.size()) rehash(table_.size() + table_.size() / 2);
  uint32_t b = free_block_;
  if (b != kNil) {
    free_block_ = blocks_[b].off;
  } else {
    b = blocks_.grow(1);
  }
  blocks_[b] = Block{hash, 0, kNil, 0, 0};
  uint32_t i = slot_of(hash);
  while (table_[i] != kNil) i = next_slot(i);
  table_[i] = b;
  ++block_count_;
  return b;
}

void PrefixIndex::erase_block(uint32_t b) {
  uint32_t i = slot_of(blocks_[b].hash);
  while (table_[i] != b) i = next_slot(i);
  // Backward-shift deletion keeps probe chains intact without tombstones.
  uint32_t j = i;
  for (;;) {
    j = next_slot(j);
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

uint32_t PrefixIndex::alloc_chunk(uint32_t cls, uint32_t block) {
  Arena& a = arenas_[cls];
  if (uint64_t{a.chunks} + 1 > uint64_t{a.slabs.size()} * a.chunks_per_slab()) {
    a.slabs.reserve(a.slabs.size() + 1);  // so push_back cannot throw after the allocation
    a.slabs.push_back(std::make_unique_for_overwrite<std::byte[]>(a.slab_bytes()));
  }
  a.owner(a.chunks) = block;
  return a.chunks++;
}

void PrefixIndex::free_chunk(uint32_t cls, uint32_t chunk) noexcept {
  Arena& a = arenas_[cls];
  const uint32_t last = a.chunks - 1;
  if (chunk != last) {  // keep the arena dense: move the last chunk into the hole
    const uint32_t moved = a.owner(last);
    const uint32_t n = blocks_[moved].count;
    std::copy_n(a.eps(last), n, a.eps(chunk));
    std::copy_n(a.nodes(last), n, a.nodes(chunk));
    a.owner(chunk) = moved;
    blocks_[moved].off = chunk;
  }
  --a.chunks;
  // Release a trailing slab once a whole spare slab is unused (hysteresis against thrash).
  while (a.slabs.size() >= 2 &&
         uint64_t{a.chunks} <= uint64_t{a.slabs.size() - 2} * a.chunks_per_slab()) {
    a.slabs.pop_back();
  }
}

// Moves block b's holders (count >= 2 after the move) into a chunk of class new_cls.
void PrefixIndex::move_holders(uint32_t b, uint32_t new_cls) {
  const uint32_t chunk = alloc_chunk(new_cls, b);
  Block& blk = blocks_[b];
  Arena& dst = arenas_[new_cls];
  if (blk.count == 1) {
    dst.eps(chunk)[0] = blk.aux;
    dst.nodes(chunk)[0] = blk.off;
  } else {
    Arena& src = arenas_[blk.aux];
    std::copy_n(src.eps(blk.off), blk.count, dst.eps(chunk));
    std::copy_n(src.nodes(blk.off), blk.count, dst.nodes(chunk));
    free_chunk(blk.aux, blk.off);
  }
  blk.off = chunk;
  blk.aux = static_cast<uint16_t>(new_cls);
}

const uint16_t* PrefixIndex::holder_eps(const Block& blk) const noexcept {
  return blk.count == 1 ? &blk.aux : arenas_[blk.aux].eps(blk.off);
}

void PrefixIndex::add_holder(uint32_t b, uint16_t ep, uint32_t node) {
  Block& blk = blocks_[b];
  blk.holders_fp ^= mix(ep);
  if (blk.count == 0) {
    blk.off = node;
    blk.aux = ep;
    blk.count = 1;
    return;
  }
  if (blk.count == 1) {
    move_holders(b, 1);
  } else if (blk.count == arenas_[blk.aux].size) {
    move_holders(b, blk.aux + 1u);
  }
  Block& cur = blocks_[b];
  Arena& a = arenas_[cur.aux];
  a.eps(cur.off)[cur.count] = ep;
  a.nodes(cur.off)[cur.count] = node;
  ++cur.count;
}

void PrefixIndex::remove_holder(uint32_t b, uint16_t ep) noexcept {
  Block& blk = blocks_[b];
  blk.holders_fp ^= mix(ep);
  if (blk.count == 1) {  // caller guarantees ep is the holder
    blk.count = 0;
    erase_block(b);
    return;
  }
  Arena& a = arenas_[blk.aux];
  uint16_t* eps = a.eps(blk.off);
  uint32_t* nodes = a.nodes(blk.off);
  uint32_t j = 0;
  while (eps[j] != ep) ++j;  // caller guarantees ep holds b
  eps[j] = eps[blk.count - 1];
  nodes[j] = nodes[blk.count - 1];
  --blk.count;
  if (blk.count == 1) {  // back to inline
    const uint16_t solo = eps[0];
    const uint32_t solo_node = nodes[0];
    const uint32_t cls = blk.aux, chunk = blk.off;
    blk.aux = solo;
    blk.off = solo_node;
    // free_chunk copies the arena's last chunk using its owner's count; ours is detached.
    free_chunk(cls, chunk);
    return;
  }
  if (blk.aux >= 3 && blk.count <= arenas_[blk.aux - 2].size) {  // shrink: bound rounding
    try {
      move_holders(b, blk.aux - 1u);
    } catch (...) {
      // Out of memory while shrinking: keep the larger chunk, nothing is lost.
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
  const size_t n = hashes.size();
  for (size_t j = 0; j < std::min(n, kAhead); ++j) prefetch_slot(hashes[n - 1 - j]);
  for (size_t k = n; k-- > 0;) {  // block 0 ends up most recent
    if (k >= kAhead) prefetch_slot(hashes[k - kAhead]);  // see prefetch_slot
    if (k >= kAhead / 2) prefetch_block(hashes[k - kAhead / 2]);
    const uint64_t h = hashes[k];
    uint32_t b = find(h);
    uint32_t node = kNil;
    if (b == kNil) {
      b = insert_block(h);
    } else {
      const Block& blk = blocks_[b];
      if (blk.count == 1) {
        if (blk.aux == ep) node = blk.off;
      } else {
        const uint16_t* eps = arenas_[blk.aux].eps(blk.off);
        for (uint32_t j = 0; j < blk.count; ++j) {
          if (eps[j] == ep) {
            node = arenas_[blk.aux].nodes(blk.off)[j];
            break;
          }
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
  const size_t n = hashes.size();
  for (size_t j = 0; j < std::min(n, kAhead); ++j) prefetch_slot(hashes[j]);
  for (; i < n; ++i) {
    if (i + kAhead < n) prefetch_slot(hashes[i + kAhead]);  // see prefetch_slot
    if (i + kAhead / 2 < n) prefetch_block(hashes[i + kAhead / 2]);
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
    const uint16_t* eps = holder_eps(blk);
    for (uint32_t j = 0; j < blk.count; ++j) {
      const uint32_t e = eps[j];
      const bool extend = e < limit && m[e] == stamp;
      m[e < limit ? e : 0] = extend ? next : m[e < limit ? e : 0];
      advanced += extend;
    }
    // ... and those still on the old stamp dropped out after i blocks. They all hold
    // block i-1, since the alive set is always a subset of the last block's holders.
    if (prev) {
      const uint16_t* pe = holder_eps(*prev);
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
    const uint16_t* pe = holder_eps(*prev);
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

void PrefixIndex::endpoint_entries(std::span<const uint32_t> ids,
                                   std::span<uint32_t> out) const {
  std::shared_lock lock(mu_);
  for (size_t j = 0; j < ids.size(); ++j) out[j] = eps_state_[ids[j]].size;
}

uint64_t PrefixIndex::memory_bytes() const {
  std::shared_lock lock(mu_);
  uint64_t arenas = 0;
  for (const auto& a : arenas_) arenas += a.bytes();
  return blocks_.bytes() + nodes_.bytes() + arenas + table_.capacity() * sizeof(uint32_t) +
         eps_state_.capacity() * sizeof(EpState);
}

}  // namespace igw
