// Prefix index: block hash -> endpoints holding it, plus a bounded LRU of blocks per
// endpoint. This is the "what igw sent where" approximation of every server's prefix cache.
//
// Layout (all indices u32, endpoint ids u16, everything in slabs -- see slab.h):
//   * Block record (24 B): the 64-bit hash, a 64-bit fingerprint of its holder set, its holder
//     chunk offset, holder count, size class.
//   * Holder chunk: power-of-two sized run of (u16 endpoint, u32 LRU node) in two parallel
//     slab arrays, so `match` scans a block's holders as contiguous u16s.
//   * LRU node (12 B): prev/next links of the endpoint's LRU list and the block it refers to.
//   * Hash table: open addressing (linear probing, backward-shift delete) of u32 block ids,
//     kept at most half full.
// Per (block, endpoint) entry that is 12 B node + 6 B holder (+ power-of-two slack), plus the
// block record and table slot (~24 B) shared by all holders of the block. memory_bytes()
// counts every slab and table byte allocated (including free and slack space), so
// memory_bytes()/entries() is the honest per-entry cost.
//
// match walks the prompt's blocks once. Along a shared prefix consecutive blocks usually have
// exactly the same holders (everyone who cached block i also cached i+1), so a block whose
// holder fingerprint and count equal its predecessor's cannot change the alive set and is
// skipped in O(1); holders are only scanned where the set changes. out[] doubles as the
// alive set: alive endpoints carry the current "stamp" (depth of the last scan) and get
// their final length when they drop out or the walk ends. Equal fingerprints of different
// sets would need a 64-bit collision -- the same assumption the block hashes already make.
//
// Concurrency: one shared_mutex; match takes it shared, mutations take it exclusively.
// match allocates nothing: the caller passes the output span (it doubles as the alive set).
#pragma once

#include <cstdint>
#include <shared_mutex>
#include <span>
#include <vector>

#include "common.h"
#include "slab.h"

namespace igw {

class PrefixIndex {
 public:
  PrefixIndex(uint32_t max_endpoints, uint32_t default_capacity);
  PrefixIndex(const PrefixIndex&) = delete;
  PrefixIndex& operator=(const PrefixIndex&) = delete;

  uint32_t max_endpoints() const noexcept { return max_endpoints_; }
  // 1 + the largest endpoint id ever recorded or configured.
  uint32_t seen() const noexcept;

  void set_capacity(uint32_t endpoint, uint32_t blocks);
  uint32_t capacity_of(uint32_t endpoint) const;
  void record(uint32_t endpoint, std::span<const uint64_t> hashes);
  // out[e] = contiguous matched prefix of endpoint e, for e < out.size(); entries past
  // seen() are zeroed. Does not touch LRU order.
  void match(std::span<const uint64_t> hashes, std::span<int32_t> out) const;
  void remove_endpoint(uint32_t endpoint);
  uint64_t entries() const;
  uint32_t endpoint_entries(uint32_t endpoint) const;
  uint64_t memory_bytes() const;
  uint64_t blocks() const;

 private:
  static constexpr uint32_t kNil = 0xFFFFFFFFu;
  struct Block {
    uint64_t hash;
    uint64_t holders_fp;  // XOR of mix(endpoint) over holders: O(1) "same holder set?" test
    uint32_t off;         // first holder slot; free-list link when the record is free
    uint16_t count;       // holders (<= 65535 endpoints)
    uint8_t cls;          // chunk capacity = 1 << cls
    uint8_t pad;
  };
  struct Node {
    uint32_t prev, next;  // LRU links (prev = more recent); next doubles as free-list link
    uint32_t block;
  };
  struct EpState {
    uint32_t head = kNil;  // most recent
    uint32_t tail = kNil;  // least recent
    uint32_t size = 0;
    uint32_t cap = 0;
  };
  static_assert(sizeof(Block) == 24 && sizeof(Node) == 12);

  void check_endpoint(uint32_t endpoint, const char* what) const;
  void note_seen(uint32_t endpoint) noexcept;
  uint32_t slot_of(uint64_t hash) const noexcept;
  uint32_t find(uint64_t hash) const noexcept;
  uint32_t insert_block(uint64_t hash);
  void erase_block(uint32_t b);
  void rehash(size_t slots);
  uint32_t alloc_chunk(uint8_t cls);
  void free_chunk(uint32_t off, uint8_t cls) noexcept;
  void add_holder(uint32_t b, uint16_t ep, uint32_t node);
  void remove_holder(uint32_t b, uint16_t ep) noexcept;
  uint32_t alloc_node();
  void unlink(EpState& st, uint32_t n) noexcept;
  void push_front(EpState& st, uint32_t n) noexcept;
  void evict_tail(uint32_t ep) noexcept;

  uint32_t max_endpoints_;
  uint32_t default_capacity_;
  uint32_t seen_ = 0;
  uint64_t entries_ = 0;
  uint64_t block_count_ = 0;
  std::vector<EpState> eps_state_;
  SlabArray<Block, 14> blocks_;
  SlabArray<Node, 14> nodes_;
  SlabArray<uint16_t, 16> holder_ep_;
  SlabArray<uint32_t, 16> holder_node_;
  std::vector<uint32_t> table_;  // block ids, kNil = empty
  uint32_t table_shift_ = 0;     // 64 - log2(table size)
  uint32_t free_block_ = kNil;
  uint32_t free_node_ = kNil;
  uint32_t free_chunk_[17];  // per size class, linked through holder_node_
  mutable std::shared_mutex mu_;
};

}  // namespace igw
