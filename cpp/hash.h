// XXH64 written from the published xxHash specification
// (https://github.com/Cyan4973/xxHash/blob/dev/doc/xxhash_spec.md), and the prompt block-hash
// chain built on it. Why our own: the core must not pull a third-party C library into the
// wheel for 60 lines of arithmetic; tests check every output against the `xxhash` package.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

namespace igw {

uint64_t xxh64(const void* data, size_t len, uint64_t seed = 0) noexcept;

// h_i = xxh64(le64(block_id) || le64(prev)) with seed 0: one link of the prefix chain.
uint64_t chain_link(uint64_t block_id, uint64_t prev) noexcept;

// xxh64(model || 0 || cache_salt || 0 || lora): root of a prompt's chain.
uint64_t model_seed(std::string_view model, std::string_view cache_salt,
                    std::string_view lora);

// Number of blocks hash_blocks will produce for `len` bytes.
size_t block_count(size_t len, size_t block_bytes, size_t max_blocks) noexcept;

// Chained hashes of `data` cut into `block_bytes` blocks (last partial block included),
// written to `out` (which must hold block_count(...) values). Returns the count written.
size_t hash_blocks(std::span<const uint8_t> data, size_t block_bytes, uint64_t seed,
                   size_t max_blocks, std::span<uint64_t> out) noexcept;

}  // namespace igw
