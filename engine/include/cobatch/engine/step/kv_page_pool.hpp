// kv_page_pool: which KV-cache pages are free, the scheduler's side of a
// paged KV cache (the attention side holds the pages' contents, indexed by
// the same ids). Pages are handed out all-or-nothing, so a request never
// holds part of what one step needs.
#pragma once

#include <cstdint>
#include <vector>

namespace cobatch::engine {

class kv_page_pool {
 public:
  /// `num_pages` pages of `page_size` tokens each. Throws
  /// engine_error(invalid_argument) naming the value when either is < 1.
  kv_page_pool(std::int32_t num_pages, std::int32_t page_size);

  std::int32_t page_size() const noexcept { return page_size_; }
  std::int32_t total() const noexcept { return static_cast<std::int32_t>(capacity_); }
  std::int32_t free_pages() const noexcept { return static_cast<std::int32_t>(free_.size()); }
  std::int32_t in_use() const noexcept { return total() - free_pages(); }
  /// The most pages ever in use at once.
  std::int32_t high_water() const noexcept { return high_water_; }

  /// Appends `n` page ids to `out` when that many are free; otherwise
  /// leaves both unchanged and returns false. Never allocates beyond `out`.
  bool allocate(std::int32_t n, std::vector<std::int32_t>& out);
  /// Returns every page in `pages` to the pool and clears it.
  void release(std::vector<std::int32_t>& pages) noexcept;

  /// Pages a request of `tokens` tokens holds on each rank when
  /// decode-context parallelism spreads its tokens over `dcp_world` ranks
  /// (token p on rank p % dcp_world, so a rank holds at most
  /// ceil(tokens / dcp_world) of them).
  static std::int32_t pages_for(std::int64_t tokens, std::int32_t page_size, std::int32_t dcp_world) noexcept {
    const std::int64_t per_rank = (tokens + dcp_world - 1) / dcp_world;
    return static_cast<std::int32_t>((per_rank + page_size - 1) / page_size);
  }

 private:
  std::int32_t page_size_;
  std::size_t capacity_;
  std::vector<std::int32_t> free_;  // a stack: the page freed last is reused first (warm in cache)
  std::int32_t high_water_ = 0;
};

}  // namespace cobatch::engine
