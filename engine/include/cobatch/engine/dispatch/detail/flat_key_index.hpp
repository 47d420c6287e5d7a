// An open-addressing map from a nonzero 64-bit key word to a 32-bit value,
// for the dispatch hot path: a lookup is a hash, a mask and (almost always)
// one or two probes of a contiguous array, and never allocates. Only insert
// allocates (when it grows the table).
//
// Linear probing with backward-shift deletion, so there are no tombstones and
// lookups stay short after many evictions. The load factor stays at or below
// one half. The word 0 marks an empty slot; every key word in the engine is
// nonzero because a key has at least one token.
#pragma once

#include <bit>
#include <cstdint>
#include <vector>

#include "cobatch/engine/dispatch/dispatch_key.hpp"

namespace cobatch::engine::detail {

class flat_key_index {
 public:
  static constexpr std::uint32_t npos = 0xffffffffu;

  flat_key_index() : slots_(min_capacity), mask_(min_capacity - 1) {}

  /// The value stored for `key`, or npos.
  std::uint32_t find(std::uint64_t key) const noexcept {
    for (std::size_t i = dispatch_key::mix(key) & mask_;; i = (i + 1) & mask_) {
      const slot& s = slots_[i];
      if (s.key == key) return s.value;
      if (s.key == 0) return npos;
    }
  }

  /// The value stored for `key`, or `otherwise`.
  std::uint32_t find_or(std::uint64_t key, std::uint32_t otherwise) const noexcept {
    const std::uint32_t v = find(key);
    return v == npos ? otherwise : v;
  }

  bool contains(std::uint64_t key) const noexcept { return find(key) != npos; }

  /// Inserts or overwrites; `key` must be nonzero.
  void insert(std::uint64_t key, std::uint32_t value) {
    if ((size_ + 1) * 2 > slots_.size()) grow();
    for (std::size_t i = dispatch_key::mix(key) & mask_;; i = (i + 1) & mask_) {
      slot& s = slots_[i];
      if (s.key == key) {
        s.value = value;
        return;
      }
      if (s.key == 0) {
        s = {key, value};
        ++size_;
        return;
      }
    }
  }

  /// Removes `key`; returns whether it was there.
  bool erase(std::uint64_t key) noexcept {
    std::size_t i = dispatch_key::mix(key) & mask_;
    for (;; i = (i + 1) & mask_) {
      if (slots_[i].key == key) break;
      if (slots_[i].key == 0) return false;
    }
    // Backward shift: pull later members of the probe run into the hole when
    // the hole lies between their home slot and where they sit.
    std::size_t hole = i;
    for (std::size_t j = (i + 1) & mask_; slots_[j].key != 0; j = (j + 1) & mask_) {
      const std::size_t home = dispatch_key::mix(slots_[j].key) & mask_;
      const std::size_t dist_home = (j - home) & mask_;
      const std::size_t dist_hole = (j - hole) & mask_;
      if (dist_home >= dist_hole) {
        slots_[hole] = slots_[j];
        hole = j;
      }
    }
    slots_[hole] = {};
    --size_;
    return true;
  }

  void clear() noexcept {
    for (auto& s : slots_) s = {};
    size_ = 0;
  }

  std::size_t size() const noexcept { return size_; }

  /// Calls f(key, value) for every member, in table order.
  template <class F>
  void for_each(F&& f) const {
    for (const auto& s : slots_)
      if (s.key != 0) f(s.key, s.value);
  }

 private:
  static constexpr std::size_t min_capacity = 16;
  struct slot {
    std::uint64_t key = 0;
    std::uint32_t value = 0;
  };

  void grow() {
    std::vector<slot> old(slots_.size() * 2);
    old.swap(slots_);
    mask_ = slots_.size() - 1;
    size_ = 0;
    for (const auto& s : old)
      if (s.key != 0) insert(s.key, s.value);
  }

  std::vector<slot> slots_;
  std::size_t mask_;
  std::size_t size_ = 0;
};

}  // namespace cobatch::engine::detail
