// spawn: starts a task chain on an executor as an Asio asynchronous operation,
// the bridge from cobatch coroutines to any completion token.
#pragma once

#include "cobatch/coro/task.hpp"

#include <asio/associated_cancellation_slot.hpp>
#include <asio/associated_executor.hpp>
#include <asio/async_result.hpp>
#include <asio/execution.hpp>
#include <asio/post.hpp>
#include <asio/prefer.hpp>

#include <coroutine>
#include <exception>
#include <optional>
#include <type_traits>
#include <utility>

namespace cobatch::coro {
namespace detail {

/// The frame that owns a spawned task until it finishes. Destroys itself at
/// its end; if its start is never run (the executor was destroyed first) the
/// start function's destructor frees it, so no frame leaks either way.
class root_frame {
 public:
  struct promise_type : promise_context {
    promise_type() = default;
    promise_type(const promise_type&) = delete;
    promise_type& operator=(const promise_type&) = delete;
    // Finished or abandoned, the frame is going: the chain's handlers must
    // not reach it any more.
    ~promise_type() {
      if (chain() != nullptr) {
        chain()->finished();
        chain()->release();
      }
    }
    root_frame get_return_object() {
      auto h = std::coroutine_handle<promise_type>::from_promise(*this);
      set_chain(new chain_root(h));
      return root_frame{h};
    }
    std::suspend_always initial_suspend() noexcept { return {}; }
    std::suspend_never final_suspend() noexcept { return {}; }
    void return_void() noexcept {}
    void unhandled_exception() noexcept { std::terminate(); }  // run_root catches everything
  };
  std::coroutine_handle<promise_type> handle;
};

class root_start {
 public:
  explicit root_start(std::coroutine_handle<> h) noexcept : h_(h) {}
  root_start(root_start&& other) noexcept : h_(std::exchange(other.h_, {})) {}
  root_start& operator=(root_start&&) = delete;
  ~root_start() {
    if (h_) h_.destroy();
  }
  void operator()() { std::exchange(h_, {}).resume(); }

 private:
  std::coroutine_handle<> h_;
};

template <typename T>
struct spawn_signature_of {
  using type = void(std::exception_ptr, T);
};
template <>
struct spawn_signature_of<void> {
  using type = void(std::exception_ptr);
};
template <typename T>
using spawn_signature = typename spawn_signature_of<T>::type;

template <typename T, typename Handler, typename WorkExecutor>
root_frame run_root(task<T> t, Handler handler, WorkExecutor work) {
  std::exception_ptr error;
  if constexpr (std::is_void_v<T>) {
    try {
      co_await std::move(t);
    } catch (...) {
      error = std::current_exception();
    }
    asio::post(std::move(work), [h = std::move(handler), error]() mutable { std::move(h)(error); });
  } else {
    std::optional<T> value;
    try {
      value.emplace(co_await std::move(t));
    } catch (...) {
      error = std::current_exception();
    }
    asio::post(std::move(work), [h = std::move(handler), error, v = std::move(value)]() mutable {
      std::move(h)(error, v ? std::move(*v) : T{});
    });
  }
}

}  // namespace detail

/// Starts `t` on `executor` and completes when it finishes.
///
/// Completion signature: `void(std::exception_ptr)` for task<void>, else
/// `void(std::exception_ptr, T)` (T default-constructed on failure). The task
/// starts by a post to `executor` (never inline in this call); its
/// coroutines resume there, and operations awaited with coro::use_task deliver
/// there.
///
/// Cancellation: whatever the task awaits connects to the completion handler's
/// cancellation slot, so terminal, partial and total cancellation reach the
/// operation in flight, which completes with operation_aborted.
template <typename Executor, typename T, typename Token>
auto spawn(const Executor& executor, task<T> t, Token&& token) {
  return asio::async_initiate<Token, detail::spawn_signature<T>>(
      [executor](auto handler, task<T> body) {
        auto work = asio::prefer(asio::get_associated_executor(handler, executor),
                                 asio::execution::outstanding_work.tracked);
        auto slot = asio::get_associated_cancellation_slot(handler);
        auto root = detail::run_root(std::move(body), std::move(handler), std::move(work));
        root.handle.promise().set_executor(asio::any_io_executor(executor));
        root.handle.promise().set_cancellation_slot(slot);
        asio::post(asio::prefer(executor, asio::execution::outstanding_work.tracked),
                   detail::root_start(root.handle));
      },
      token, std::move(t));
}

}  // namespace cobatch::coro
