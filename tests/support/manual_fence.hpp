// A fence signalled by hand, for driving the completion reactor in tests.
#pragma once

#include "cobatch/coro/fence_order.hpp"
#include "cobatch/coro/fence_status.hpp"

#include <atomic>
#include <memory>
#include <system_error>

namespace cobatch::test {

class manual_fence {
 public:
  manual_fence() : state_(std::make_shared<shared>()) {}
  /// A fence that claims `order` (see coro::fence_order): the test that
  /// makes it promises to signal the fences of one stream in order.
  explicit manual_fence(coro::fence_order order) : manual_fence() { order_ = order; }

  coro::fence_status query() const noexcept {
    state_->queries.fetch_add(1, std::memory_order_relaxed);
    switch (state_->value.load(std::memory_order_acquire)) {
      case 1: return coro::fence_status::ready();
      case 2: return coro::fence_status::failed(state_->error);
      default: return coro::fence_status::pending();
    }
  }
  coro::fence_order order() const noexcept { return order_; }
  void signal() noexcept { state_->value.store(1, std::memory_order_release); }
  void fail(std::error_code ec) noexcept {
    state_->error = ec;
    state_->value.store(2, std::memory_order_release);
  }
  long use_count() const noexcept { return state_.use_count(); }
  /// How often query() was called, by any copy.
  long queries() const noexcept { return state_->queries.load(std::memory_order_relaxed); }

 private:
  struct shared {
    std::atomic<int> value{0};
    std::atomic<long> queries{0};
    std::error_code error;
  };
  std::shared_ptr<shared> state_;
  coro::fence_order order_{};
};

}  // namespace cobatch::test
