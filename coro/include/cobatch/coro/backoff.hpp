// How a poller waits while GPU work is in flight but nothing is ready yet.
#pragma once

#include <chrono>
#include <cstdint>

namespace cobatch::coro {

/// Adaptive backoff: spin first (a completion a few microseconds away is caught
/// with no wake-up latency), then yield the core (other threads on a busy host
/// get to run), then sleep for growing intervals (an engine waiting on long
/// kernels costs almost no CPU). Any completed work resets it to spinning.
struct backoff_policy {
  std::uint32_t spin_rounds = 2048;  ///< polls with a pause instruction between them
  std::uint32_t yield_rounds = 64;   ///< polls with std::this_thread::yield between them
  std::chrono::microseconds min_sleep{20};
  std::chrono::microseconds max_sleep{500};
};

/// The state of one waiter walking through a backoff_policy.
class backoff {
 public:
  enum class phase { spin, yield, sleep };

  explicit backoff(const backoff_policy& policy) noexcept : policy_(&policy) {}

  void reset() noexcept {
    round_ = 0;
    sleep_ = policy_->min_sleep;
  }

  /// What to do next; sleep_for() says for how long when it is phase::sleep.
  phase next() noexcept {
    const std::uint32_t r = round_++;
    if (r < policy_->spin_rounds) return phase::spin;
    if (r < policy_->spin_rounds + policy_->yield_rounds) return phase::yield;
    return phase::sleep;
  }

  /// The next sleep interval; doubles each time up to max_sleep.
  std::chrono::microseconds sleep_for() noexcept {
    const auto d = sleep_;
    sleep_ = sleep_ * 2 > policy_->max_sleep ? policy_->max_sleep : sleep_ * 2;
    return d;
  }

  /// Waits a moment in the spin phase without giving up the core.
  static void pause() noexcept {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    asm volatile("yield");
#endif
  }

 private:
  const backoff_policy* policy_;
  std::uint32_t round_ = 0;
  std::chrono::microseconds sleep_{policy_->min_sleep};
};

}  // namespace cobatch::coro
