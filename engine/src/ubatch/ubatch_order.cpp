#include "cobatch/engine/ubatch/ubatch_order.hpp"

#include "message.hpp"

#include <algorithm>
#include <numeric>

namespace cobatch::engine {

std::vector<std::int32_t> order_by_priority(std::span<const std::int32_t> priorities) {
  std::vector<std::int32_t> order(priorities.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](std::int32_t a, std::int32_t b) { return priorities[a] > priorities[b]; });
  return order;
}

bool is_decode_ubatch(const ubatch& mb, std::int32_t decode_query_len) noexcept {
  for (std::size_t r = 0; r + 1 < mb.query_start_loc.size(); ++r) {
    if (mb.query_start_loc[r + 1] - mb.query_start_loc[r] > decode_query_len) return false;
  }
  return true;
}

std::vector<std::int32_t> decode_first_order(const ubatch_plan& plan, std::int32_t decode_query_len) {
  if (decode_query_len < 1) {
    throw_engine_error(errc::invalid_argument,
                       detail::cat("decode_first_order: decode_query_len ", decode_query_len, " < 1"));
  }
  std::vector<std::int32_t> priorities(static_cast<std::size_t>(plan.size()));
  for (std::int32_t k = 0; k < plan.size(); ++k) priorities[k] = is_decode_ubatch(plan[k], decode_query_len) ? 1 : 0;
  return order_by_priority(priorities);
}

}  // namespace cobatch::engine
