// host_fence: the host backend's fence, signalled by a stream worker when it
// reaches a record, polled by the completion reactor, and blocked on by a
// worker that joins it (a device-side wait).
#pragma once

#include "cobatch/gpu/fence.hpp"

#include <atomic>
#include <system_error>

namespace cobatch::gpu::host {

class host_fence final : public detail::fence_impl {
 public:
  coro::fence_status query() const noexcept override {
    // A fence that is polled wants a kick when it is signalled; one that is
    // never polled (most records: their waits are joins between streams)
    // must not wake a sleeping poller for nothing. seq_cst on both sides: the
    // poller either sees the signal or the signaller sees the poll.
    if (!polled_.load(std::memory_order_relaxed)) polled_.store(true, std::memory_order_seq_cst);
    switch (state_.load(std::memory_order_seq_cst)) {
      case ready: return coro::fence_status::ready();
      case failed: return coro::fence_status::failed(error_);
      default: return coro::fence_status::pending();
    }
  }
  coro::fence_order order() const noexcept override { return order_; }
  /// Set once, by the stream that records the fence, before anyone else sees
  /// the fence.
  void set_order(coro::fence_order order) noexcept { order_ = order; }

  /// Returns whether anyone has polled the fence, i.e. whether a sleeping
  /// poller should be woken.
  bool signal(std::error_code ec) noexcept {
    error_ = ec;
    state_.store(ec ? failed : ready, std::memory_order_seq_cst);
    state_.notify_all();
    return polled_.load(std::memory_order_seq_cst);
  }
  /// Blocks the calling worker (the "device") until signalled.
  std::error_code wait() const noexcept {
    int s;
    while ((s = state_.load(std::memory_order_acquire)) == pending) state_.wait(pending, std::memory_order_acquire);
    return s == failed ? error_ : std::error_code{};
  }

 private:
  enum : int { pending = 0, ready = 1, failed = 2 };
  std::atomic<int> state_{pending};
  mutable std::atomic<bool> polled_{false};
  std::error_code error_;  // written before the release store, read after acquire
  coro::fence_order order_{};
};

}  // namespace cobatch::gpu::host
