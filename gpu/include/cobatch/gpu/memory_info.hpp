// What a device can still hold, for memory-pressure decisions (how many
// micro-batches, how large a graph cache).
#pragma once

#include <cstddef>

namespace cobatch::gpu {

struct memory_info {
  std::size_t total = 0;   ///< bytes the device has (or the budget it was given)
  std::size_t free = 0;    ///< bytes that can still be allocated
  std::size_t in_use = 0;  ///< bytes allocated through this device

  /// Fraction of `total` still free, in [0, 1].
  double free_fraction() const noexcept {
    return total == 0 ? 0.0 : static_cast<double>(free) / static_cast<double>(total);
  }
};

}  // namespace cobatch::gpu
