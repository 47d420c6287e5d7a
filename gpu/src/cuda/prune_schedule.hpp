// When to prune a list of guards whose pruning queries an event per entry.
#pragma once

#include <algorithm>
#include <cstddef>

namespace cobatch::gpu::cuda::detail {

/// Pruning on every push made a push O(n) in the entries still pending
/// (issuing 64 queued collectives cost 2.5x a bare ncclAllReduce each).
/// Pruning only once the list has doubled since the last prune keeps a push
/// O(1) amortised and the list at most twice its live entries, above a
/// floor.
class prune_schedule {
 public:
  bool due(std::size_t size) const noexcept { return size >= at_; }
  void pruned(std::size_t size) noexcept { at_ = std::max(floor, 2 * size); }

 private:
  static constexpr std::size_t floor = 32;
  std::size_t at_ = floor;
};

}  // namespace cobatch::gpu::cuda::detail
