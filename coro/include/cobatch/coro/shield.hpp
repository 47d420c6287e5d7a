// shield: awaits a task with no cancellation, for clean-up that must run to
// its end whatever the caller cancels (waiting for the device work a failed
// step enqueued before its buffers may be freed is the example).
#pragma once

#include "cobatch/coro/task.hpp"

#include <asio/cancellation_signal.hpp>

#include <coroutine>
#include <utility>

namespace cobatch::coro {

template <typename T>
class shielded {
 public:
  explicit shielded(task<T> t) noexcept : task_(std::move(t)) {}

  bool await_ready() const noexcept { return false; }
  /// The child runs on the awaiter's executor, with an unconnected
  /// cancellation slot: what it awaits cannot be cancelled from outside.
  template <typename P>
  std::coroutine_handle<> await_suspend(std::coroutine_handle<P> parent) noexcept {
    auto child = task_.handle();
    if constexpr (detail::has_promise_context<P>) child.promise().inherit(parent.promise());
    child.promise().set_cancellation_slot(asio::cancellation_slot());
    child.promise().set_continuation(parent);
    return child;
  }
  T await_resume() { return task_.handle().promise().take(); }

 private:
  task<T> task_;
};

/// `co_await coro::shield(t)`: runs `t` to its end even when the awaiting
/// chain is cancelled meanwhile; the chain sees the cancellation at its next
/// cancellable operation. Exceptions of `t` propagate.
template <typename T>
shielded<T> shield(task<T> t) noexcept {
  return shielded<T>(std::move(t));
}

}  // namespace cobatch::coro
