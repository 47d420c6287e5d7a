// A place where one thread sleeps until another has something for it.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>

namespace cobatch::coro::detail {

/// One sleeper, any number of wakers. Wakers pay one atomic load unless the
/// sleeper has announced that it is about to sleep, so a busy loop is never
/// slowed by wake-ups it does not need. The sleeper must re-check for work
/// between announce() and sleep(): together with the seq_cst fences that closes
/// the window in which a wake-up could be lost.
class idle_waiter {
 public:
  /// Sleeper: "I am about to sleep". Re-check for work after this.
  void announce() noexcept {
    sleeping_.store(true, std::memory_order_seq_cst);
    std::atomic_thread_fence(std::memory_order_seq_cst);
  }
  /// Sleeper: found work after announce(); do not sleep.
  void withdraw() noexcept { sleeping_.store(false, std::memory_order_relaxed); }

  /// Sleeper: sleeps until woken, or for at most `limit` when it is positive.
  void sleep(std::chrono::microseconds limit) {
    std::unique_lock lock(mutex_);
    auto woken = [&] { return wake_pending_; };
    if (limit.count() > 0) {
      cv_.wait_for(lock, limit, woken);
    } else {
      cv_.wait(lock, woken);
    }
    wake_pending_ = false;
    sleeping_.store(false, std::memory_order_relaxed);
  }

  /// Waker: call after publishing the work the sleeper should see.
  void wake() {
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (!sleeping_.load(std::memory_order_seq_cst)) return;
    {
      std::lock_guard lock(mutex_);
      wake_pending_ = true;
    }
    cv_.notify_one();
  }

 private:
  std::atomic<bool> sleeping_{false};
  std::mutex mutex_;
  std::condition_variable cv_;
  bool wake_pending_ = false;
};

}  // namespace cobatch::coro::detail
