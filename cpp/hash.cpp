#include "hash.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <string>

namespace igw {
namespace {

constexpr uint64_t P1 = 0x9E3779B185EBCA87ULL;
constexpr uint64_t P2 = 0xC2B2AE3D27D4EB4FULL;
constexpr uint64_t P3 = 0x165667B19E3779F9ULL;
constexpr uint64_t P4 = 0x85EBCA77C2B2AE63ULL;
constexpr uint64_t P5 = 0x27D4EB2F165667C5ULL;

// Little-endian loads; memcpy keeps them legal for unaligned input.
inline uint64_t read64(const uint8_t* p) noexcept {
  uint64_t v;
  std::memcpy(&v, p, 8);
  if constexpr (std::endian::native == std::endian::big) v = __builtin_bswap64(v);
  return v;
}
inline uint32_t read32(const uint8_t* p) noexcept {
  uint32_t v;
  std::memcpy(&v, p, 4);
  if constexpr (std::endian::native == std::endian::big) v = __builtin_bswap32(v);
  return v;
}

inline uint64_t round(uint64_t acc, uint64_t lane) noexcept {
  acc += lane * P2;
  return std::rotl(acc, 31) * P1;
}
inline uint64_t merge(uint64_t acc, uint64_t v) noexcept {
  acc ^= round(0, v);
  return acc * P1 + P4;
}
inline uint64_t avalanche(uint64_t h) noexcept {
  h ^= h >> 33;
  h *= P2;
  h ^= h >> 29;
  h *= P3;
  h ^= h >> 32;
  return h;
}

}  // namespace

uint64_t xxh64(const void* data, size_t len, uint64_t seed) noexcept {
  const auto* p = static_cast<const uint8_t*>(data);
  const uint8_t* const end = p + len;
  uint64_t acc;
  if (len >= 32) {
    uint64_t v1 = seed + P1 + P2, v2 = seed + P2, v3 = seed, v4 = seed - P1;
    const uint8_t* const limit = end - 32;
    do {
      v1 = round(v1, read64(p));
      v2 = round(v2, read64(p + 8));
      v3 = round(v3, read64(p + 16));
      v4 = round(v4, read64(p + 24));
      p += 32;
    } while (p <= limit);
    acc = std::rotl(v1, 1) + std::rotl(v2, 7) + std::rotl(v3, 12) + std::rotl(v4, 18);
    acc = merge(acc, v1);
    acc = merge(acc, v2);
    acc = merge(acc, v3);
    acc = merge(acc, v4);
  } else {
    acc = seed + P5;
  }
  acc += static_cast<uint64_t>(len);
  while (end - p >= 8) {
    acc ^= round(0, read64(p));
    acc = std::rotl(acc, 27) * P1 + P4;
    p += 8;
  }
  if (end - p >= 4) {
    acc ^= static_cast<uint64_t>(read32(p)) * P1;
    acc = std::rotl(acc, 23) * P2 + P3;
    p += 4;
  }
  while (p < end) {
    acc ^= static_cast<uint64_t>(*p) * P5;
    acc = std::rotl(acc, 11) * P1;
    ++p;
  }
  return avalanche(acc);
}

uint64_t chain_link(uint64_t block_id, uint64_t prev) noexcept {
  // The 16-byte case of xxh64 with seed 0, unrolled: two 8-byte lanes, no stripes.
  uint64_t acc = P5 + 16;
  acc ^= round(0, block_id);
  acc = std::rotl(acc, 27) * P1 + P4;
  acc ^= round(0, prev);
  acc = std::rotl(acc, 27) * P1 + P4;
  return avalanche(acc);
}

uint64_t model_seed(std::string_view model, std::string_view cache_salt,
                    std::string_view lora) {
  std::string buf;
  buf.reserve(model.size() + cache_salt.size() + lora.size() + 2);
  buf.append(model).push_back('\0');
  buf.append(cache_salt).push_back('\0');
  buf.append(lora);
  return xxh64(buf.data(), buf.size(), 0);
}

size_t block_count(size_t len, size_t block_bytes, size_t max_blocks) noexcept {
  if (block_bytes == 0) return 0;
  size_t n = (len + block_bytes - 1) / block_bytes;
  return (max_blocks != 0 && n > max_blocks) ? max_blocks : n;
}

size_t hash_blocks(std::span<const uint8_t> data, size_t block_bytes, uint64_t seed,
                   size_t max_blocks, std::span<uint64_t> out) noexcept {
  const size_t n = std::min(block_count(data.size(), block_bytes, max_blocks), out.size());
  uint64_t prev = seed;
  for (size_t i = 0; i < n; ++i) {
    const size_t start = i * block_bytes;
    const size_t len = std::min(block_bytes, data.size() - start);
    prev = chain_link(xxh64(data.data() + start, len, 0), prev);
    out[i] = prev;
  }
  return n;
}

}  // namespace igw
