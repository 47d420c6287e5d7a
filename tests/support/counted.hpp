// Counts live instances, so tests can prove coroutine frames (which own their
// locals and parameters) are destroyed: cppcoro's lifetime-counting helper.
#pragma once

#include <atomic>

namespace cobatch::test {

struct counted {
  static inline std::atomic<int> alive{0};
  static inline std::atomic<int> created{0};
  counted() noexcept { ++alive, ++created; }
  counted(const counted&) noexcept { ++alive, ++created; }
  counted(counted&&) noexcept { ++alive, ++created; }
  counted& operator=(const counted&) = default;
  counted& operator=(counted&&) = default;
  ~counted() { --alive; }
  static void reset() noexcept { alive = 0, created = 0; }
};

}  // namespace cobatch::test
