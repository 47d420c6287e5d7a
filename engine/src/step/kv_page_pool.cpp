#include "cobatch/engine/step/kv_page_pool.hpp"

#include "message.hpp"

namespace cobatch::engine {

kv_page_pool::kv_page_pool(std::int32_t num_pages, std::int32_t page_size) : page_size_(page_size) {
  if (num_pages < 1) throw_engine_error(errc::invalid_argument, detail::cat("kv_page_pool: num_pages ", num_pages, " < 1"));
  if (page_size < 1) throw_engine_error(errc::invalid_argument, detail::cat("kv_page_pool: page_size ", page_size, " < 1"));
  capacity_ = static_cast<std::size_t>(num_pages);
  free_.reserve(capacity_);
  for (std::int32_t p = num_pages - 1; p >= 0; --p) free_.push_back(p);
}

bool kv_page_pool::allocate(std::int32_t n, std::vector<std::int32_t>& out) {
  if (n <= 0) return true;
  if (static_cast<std::size_t>(n) > free_.size()) return false;
  for (std::int32_t i = 0; i < n; ++i) {
    out.push_back(free_.back());
    free_.pop_back();
  }
  if (in_use() > high_water_) high_water_ = in_use();
  return true;
}

void kv_page_pool::release(std::vector<std::int32_t>& pages) noexcept {
  // free_ was reserved for every page, so these push_backs never allocate.
  for (auto it = pages.rbegin(); it != pages.rend(); ++it) free_.push_back(*it);
  pages.clear();
}

}  // namespace cobatch::engine
