// Prefix index: block hash -> endpoints holding it, plus a bounded LRU of blocks per
// endpoint. This is the "what igw sent where" approximation of every server's prefix cache.
//
// Layout (all indices u32, endpoint ids u16, no std::vector doubling on the hot structures):
//   * Block record (24 B): the 64-bit hash, a 64-bit fingerprint of its holder set, holder
//     count, and either the single holder inline (count == 1: endpoint + LRU node, no chunk)
//     or the offset and size class of its holder chunk.
//   * Holder chunk: 2, 3, 4, 5, 6, 7, 8, 10, 12, ... entries of (u16 endpoint, u32 LRU node)
//     in two parallel arrays, so `match` scans a block's holders as contiguous u16s. Chunks
//     of one size class live in one dense arena; freeing a chunk moves the arena's last chunk
//     into the hole (its block is found through a per-chunk owner id), so there is never free
//     space inside an arena and a block growing 1 -> 2 -> 3 -> 4 -> 5 ... leaves nothing
//     behind. Blocks shrink one class when they drop to the size two classes down.
//   * LRU node (12 B, slabs): prev/next links of the endpoint's LRU list and its block.
//   * Hash table: open addressing (linear probing, backward-shift delete) of u32 block ids,
//     kept at most half full. Its size is not a power of two (slots are mapped by
//     multiply-high) so it can grow by 1.5x: load stays within 1/3..1/2 instead of 1/4..1/2.
// Per (block, endpoint) entry: 12 B node + 6 B holder (+ chunk rounding, at most 1.25x),
// plus the block record and table slot (~32 B) shared by all holders of the block: ~20 B
// when blocks are shared, ~50 B for a block only one endpoint holds. memory_bytes() counts
// every allocated slab, arena and table byte (unused tails included), so
// memory_bytes()/entries() is the honest per-entry cost (igw bench core: 23.5 B at 100
// endpoints, 20.5 B at 1,000, 20.2 B at 10,000). Small indexes are why slabs are small
// (1k-element block/node slabs, >= 256-entry arena slabs with their owner ids inside): with
// 4k-element slabs, per-class owner vectors and a power-of-two table, 100 endpoints cost 28 B.
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
#include <memory>
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
  // out[j] = endpoint_entries(ids[j]) under one lock (ids must be < max_endpoints()).
  void endpoint_entries(std::span<const uint32_t> ids, std::span<uint32_t> out) const;
  uint64_t memory_bytes() const;
  uint64_t blocks() const;

 private:
  static constexpr uint32_t kNil = 0xFFFFFFFFu;
  struct Block {
    uint64_t hash;
    uint64_t holders_fp;  // XOR of mix(endpoint) over holders: O(1) "same holder set?" test
    uint32_t off;         // count 1: the LRU node; count >= 2: chunk index in arena `aux`;
                          // free record: free-list link
    uint16_t count;       // holders (<= 65535 endpoints)
    uint16_t aux;         // count 1: the endpoint; count >= 2: size class of its chunk
  };
  // Dense arena of holder chunks of one size class (see the layout comment above). A slab
  // is one allocation holding, for its chunks_per_slab() chunks, the u16 endpoints, then
  // the u32 LRU nodes, then the u32 owner block ids, so every per-chunk byte comes and goes
  // with its slab (an owner vector on its own kept its doubled capacity forever).
  struct Arena {
    uint32_t size = 0;        // entries per chunk
    uint32_t slab_shift = 0;  // log2 chunks per slab (slabs hold >= kSlabEntries entries)
    uint32_t chunks = 0;
    std::vector<std::unique_ptr<std::byte[]>> slabs;
    size_t slab_entries() const noexcept { return size_t{size} << slab_shift; }
    uint32_t chunks_per_slab() const noexcept { return 1u << slab_shift; }
    size_t slab_bytes() const noexcept { return slab_entries() * 6 + chunks_per_slab() * 4; }
    std::byte* slab_of(uint32_t chunk) const noexcept { return slabs[chunk >> slab_shift].get(); }
    uint32_t in_slab(uint32_t chunk) const noexcept { return chunk & (chunks_per_slab() - 1); }
    uint16_t* eps(uint32_t chunk) noexcept {
      return reinterpret_cast<uint16_t*>(slab_of(chunk)) + size_t{in_slab(chunk)} * size;
    }
    uint32_t* nodes(uint32_t chunk) noexcept {
      return reinterpret_cast<uint32_t*>(slab_of(chunk) + slab_entries() * 2) +
             size_t{in_slab(chunk)} * size;
    }
    uint32_t& owner(uint32_t chunk) noexcept {
      return reinterpret_cast<uint32_t*>(slab_of(chunk) + slab_entries() * 6)[in_slab(chunk)];
    }
    const uint16_t* eps(uint32_t chunk) const noexcept {
      return const_cast<Arena*>(this)->eps(chunk);
    }
    size_t bytes() const noexcept {
      return slabs.size() * slab_bytes() + slabs.capacity() * sizeof(void*);
    }
  };
  // Smallest slab of an arena, in holder entries. Small enough that the up to two slabs a
  // nearly empty class keeps (the spare one is hysteresis against alloc/free thrash) cost
  // little next to a small index (each class passed through while blocks grew keeps them).
  static constexpr uint32_t kSlabEntries = 256;
  // Chunk sizes take four steps per doubling (2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, ...)
  // so rounding wastes ~10% of a chunk on average (1.5x steps wasted ~17%, about 1 B per
  // entry); the extra moves while a block grows copy a few bytes. The last class holds 65536.
  static constexpr uint32_t kClasses = 59;
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
  // A prompt's blocks sit at random places in the table and among the block records, so with
  // cold caches (between two requests a small machine runs the client and the replicas) one
  // find() after another waits for two misses each. match and record walk kAhead blocks
  // ahead: the table slot at that distance, and the block record its home slot names at half
  // of it (that slot has arrived by then; a collision only makes the hint miss).
  static constexpr size_t kAhead = 8;
  void prefetch_slot(uint64_t hash) const noexcept;
  void prefetch_block(uint64_t hash) const noexcept;
  uint32_t next_slot(uint32_t i) const noexcept {
    return i + 1 == table_.size() ? 0 : i + 1;
  }
  uint32_t find(uint64_t hash) const noexcept;
  uint32_t insert_block(uint64_t hash);
  void erase_block(uint32_t b);
  void rehash(size_t slots);
  uint32_t alloc_chunk(uint32_t cls, uint32_t block);
  void free_chunk(uint32_t cls, uint32_t chunk) noexcept;
  void move_holders(uint32_t b, uint32_t new_cls);
  const uint16_t* holder_eps(const Block& blk) const noexcept;
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
  // 1024-element slabs (24 KB / 12 KB): the unused tail of the last slab stays small
  // next to a 100-endpoint index's few thousand blocks.
  SlabArray<Block, 10> blocks_;
  SlabArray<Node, 10> nodes_;
  Arena arenas_[kClasses + 1];  // classes 1..kClasses (0 unused: single holders are inline)
  std::vector<uint32_t> table_;  // block ids, kNil = empty; any size (grows 1.5x)
  uint32_t free_block_ = kNil;
  uint32_t free_node_ = kNil;
  mutable std::shared_mutex mu_;
};

}  // namespace igw
