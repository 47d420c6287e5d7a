#include "cobatch/coro/fence_order.hpp"

#include <atomic>

namespace cobatch::coro {

std::uint64_t new_order_stream() noexcept {
  // 64 bits: a program making a billion streams a second runs for centuries
  // before this wraps.
  static std::atomic<std::uint64_t> next{0};
  return next.fetch_add(1, std::memory_order_relaxed) + 1;
}

}  // namespace cobatch::coro
