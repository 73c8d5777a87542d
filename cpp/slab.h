// Growable array addressed by u32 index, allocated in fixed-size slabs so growth never
// moves elements and never over-allocates by more than one slab (a std::vector doubling
// would leave up to 50% slack, which the index's bytes-per-entry budget cannot afford).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

namespace igw {

template <class T, unsigned kShift>
class SlabArray {
 public:
  static constexpr uint32_t kSlab = 1u << kShift;
  static constexpr uint32_t kMask = kSlab - 1;

  T& operator[](uint32_t i) noexcept { return slabs_[i >> kShift][i & kMask]; }
  const T& operator[](uint32_t i) const noexcept { return slabs_[i >> kShift][i & kMask]; }
  // Pointer to element i; elements [i, i+n) are contiguous when they stay in one slab.
  T* ptr(uint32_t i) noexcept { return &slabs_[i >> kShift][i & kMask]; }
  const T* ptr(uint32_t i) const noexcept { return &slabs_[i >> kShift][i & kMask]; }

  uint32_t size() const noexcept { return size_; }
  // Appends `n` default elements (n <= kSlab) that do not straddle a slab boundary;
  // returns the index of the first. Skipped tail elements of the previous slab are
  // reported through `skipped_from` / return so the caller can reuse them.
  uint32_t grow(uint32_t n) {
    const uint32_t off = size_ & kMask;
    if (size_ == 0 || off == 0 || off + n > kSlab) {
      if (off != 0) size_ = (size_ | kMask) + 1;  // abandon the tail (caller recycles it)
      slabs_.push_back(std::make_unique<T[]>(kSlab));
    }
    const uint32_t first = size_;
    size_ += n;
    return first;
  }
  size_t bytes() const noexcept { return slabs_.size() * sizeof(T) * kSlab +
                                         slabs_.capacity() * sizeof(void*); }
  void clear() noexcept {
    slabs_.clear();
    size_ = 0;
  }

 private:
  std::vector<std::unique_ptr<T[]>> slabs_;
  uint32_t size_ = 0;
};

}  // namespace igw
