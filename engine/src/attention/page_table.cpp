#include "cobatch/engine/attention/page_table.hpp"

#include "message.hpp"

#include <limits>

namespace cobatch::engine {

page_table::page_table(std::int32_t num_pages) : num_pages_(num_pages) {
  if (num_pages < 1) {
    throw_engine_error(errc::invalid_argument, detail::cat("page_table: num_pages=", num_pages, " < 1"));
  }
  indptr_.push_back(0);
}

void page_table::add_request(std::span<const std::int32_t> pages) {
  for (std::size_t i = 0; i < pages.size(); ++i) {
    if (pages[i] < 0 || pages[i] >= num_pages_) {
      throw_engine_error(errc::invalid_argument,
                         detail::cat("page_table::add_request: request ", num_reqs(), "'s page ", i, " is ", pages[i],
                                     ", outside [0, num_pages=", num_pages_, ")"));
    }
  }
  if (indices_.size() + pages.size() > static_cast<std::size_t>(std::numeric_limits<std::int32_t>::max())) {
    throw_engine_error(errc::overflow, detail::cat("page_table::add_request: ", indices_.size() + pages.size(),
                                                   " pages in all exceed int32 offsets"));
  }
  indices_.insert(indices_.end(), pages.begin(), pages.end());
  indptr_.push_back(static_cast<std::int32_t>(indices_.size()));
}

void page_table::clear() noexcept {
  indptr_.resize(1);
  indices_.clear();
}

void page_table::reserve(std::size_t requests, std::size_t pages) {
  indptr_.reserve(requests + 1);
  indices_.reserve(pages);
}

page_table_view page_table::view() const noexcept {
  page_table_view v(indptr_, indices_);
  v.checked_num_pages_ = num_pages_;
  return v;
}

}  // namespace cobatch::engine
