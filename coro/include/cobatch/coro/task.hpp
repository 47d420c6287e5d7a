// task<T>: a lazy coroutine that produces a T (or an exception) for whoever
// awaits it.
//
// Why our own task rather than asio::awaitable everywhere: a switch between two
// micro-batch coroutines must cost nanoseconds (docs/design.md has the figures),
// and asio::awaitable's frames and resumption go through its thread/executor
// machinery on every switch. task<T> resumes its awaiter by symmetric transfer
// and carries just two pieces of context down the call chain:
//   - the executor on which completions of Asio operations are delivered, and
//   - the cancellation slot that Asio operations awaited inside connect to.
// A chain of tasks is started by coro::spawn or coro::sync_wait, which set both.
#pragma once

#include <asio/any_io_executor.hpp>
#include <asio/cancellation_signal.hpp>

#include <atomic>
#include <coroutine>
#include <exception>
#include <type_traits>
#include <utility>
#include <variant>

namespace cobatch::coro {

template <typename T = void>
class task;

namespace detail {

/// The frame at the root of a task chain (coro::spawn's), shared by
/// reference count with every operation the chain awaits through
/// coro::use_task. A chain suspended on an operation whose handler is
/// destroyed without having run (its executor was destroyed with the
/// completion queued, as io_context destroys queued handlers) can never
/// resume; the handler then abandons the chain, and destroying the root frame
/// destroys every frame of the chain (each task owns its child), so nothing
/// leaks. Abandoning happens once, whichever handler comes first.
class chain_root {
 public:
  explicit chain_root(std::coroutine_handle<> root) noexcept : root_(root.address()) {}
  chain_root(const chain_root&) = delete;
  chain_root& operator=(const chain_root&) = delete;

  void acquire() noexcept { refs_.fetch_add(1, std::memory_order_relaxed); }
  void release() noexcept {
    if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
  }
  /// False once the root finished or was abandoned.
  bool alive() const noexcept { return root_.load(std::memory_order_acquire) != nullptr; }
  /// The root finished on its own: nothing is left to abandon.
  void finished() noexcept { root_.store(nullptr, std::memory_order_release); }
  /// Destroys the chain, once.
  void abandon() noexcept {
    if (void* root = root_.exchange(nullptr, std::memory_order_acq_rel)) {
      std::coroutine_handle<>::from_address(root).destroy();
    }
  }

 private:
  ~chain_root() = default;
  std::atomic<void*> root_;
  std::atomic<long> refs_{1};
};

/// What every cobatch coroutine promise carries: where completions go, where
/// cancellation comes from, and the root of its chain. Children inherit all
/// three from their awaiter.
class promise_context {
 public:
  const asio::any_io_executor& executor() const noexcept { return executor_; }
  asio::cancellation_slot cancellation_slot() const noexcept { return slot_; }
  /// Null for a chain not started by coro::spawn.
  chain_root* chain() const noexcept { return chain_; }

  void inherit(const promise_context& parent) {
    executor_ = parent.executor_;
    slot_ = parent.slot_;
    chain_ = parent.chain_;
  }
  void set_executor(asio::any_io_executor ex) { executor_ = std::move(ex); }
  void set_cancellation_slot(asio::cancellation_slot slot) noexcept { slot_ = slot; }
  void set_chain(chain_root* chain) noexcept { chain_ = chain; }

 private:
  asio::any_io_executor executor_;
  asio::cancellation_slot slot_;
  chain_root* chain_ = nullptr;
};

template <typename P>
concept has_promise_context = std::is_base_of_v<promise_context, P>;

class task_promise_base : public promise_context {
 public:
  std::suspend_always initial_suspend() noexcept { return {}; }

  struct final_awaiter {
    bool await_ready() noexcept { return false; }
    template <typename P>
    std::coroutine_handle<> await_suspend(std::coroutine_handle<P> self) noexcept {
      // Symmetric transfer: resuming the awaiter costs no stack depth.
      auto next = self.promise().continuation_;
      return next ? next : std::noop_coroutine();
    }
    void await_resume() noexcept {}
  };
  final_awaiter final_suspend() noexcept { return {}; }

  void set_continuation(std::coroutine_handle<> c) noexcept { continuation_ = c; }

 private:
  std::coroutine_handle<> continuation_;
};

template <typename T>
class task_promise final : public task_promise_base {
 public:
  task<T> get_return_object() noexcept;

  template <typename U>
    requires std::is_convertible_v<U&&, T>
  void return_value(U&& value) {
    result_.template emplace<1>(std::forward<U>(value));
  }
  void unhandled_exception() noexcept { result_.template emplace<2>(std::current_exception()); }

  T take() {
    if (result_.index() == 2) std::rethrow_exception(std::get<2>(result_));
    return std::move(std::get<1>(result_));
  }

 private:
  std::variant<std::monostate, T, std::exception_ptr> result_;
};

template <>
class task_promise<void> final : public task_promise_base {
 public:
  task<void> get_return_object() noexcept;
  void return_void() noexcept {}
  void unhandled_exception() noexcept { exception_ = std::current_exception(); }
  void take() {
    if (exception_) std::rethrow_exception(exception_);
  }

 private:
  std::exception_ptr exception_;
};

}  // namespace detail

/// A lazy coroutine: nothing runs until it is awaited (or spawned). The task
/// owns its frame; destroying a task that never ran, or that finished,
/// destroys the frame. Awaiting it twice is a logic error.
template <typename T>
class [[nodiscard]] task {
 public:
  using promise_type = detail::task_promise<T>;
  using value_type = T;
  using handle_type = std::coroutine_handle<promise_type>;

  task() noexcept = default;
  explicit task(handle_type h) noexcept : handle_(h) {}
  task(task&& other) noexcept : handle_(std::exchange(other.handle_, {})) {}
  task& operator=(task&& other) noexcept {
    if (this != &other) {
      reset();
      handle_ = std::exchange(other.handle_, {});
    }
    return *this;
  }
  task(const task&) = delete;
  task& operator=(const task&) = delete;
  ~task() { reset(); }

  bool valid() const noexcept { return static_cast<bool>(handle_); }
  bool done() const noexcept { return handle_ && handle_.done(); }

  struct awaiter {
    handle_type child;

    bool await_ready() const noexcept { return false; }
    template <typename P>
    std::coroutine_handle<> await_suspend(std::coroutine_handle<P> parent) noexcept {
      if constexpr (detail::has_promise_context<P>) {
        child.promise().inherit(parent.promise());
      }
      child.promise().set_continuation(parent);
      return child;
    }
    T await_resume() { return child.promise().take(); }
  };

  awaiter operator co_await() && noexcept { return awaiter{handle_}; }

  /// Releases the frame to a caller that takes over its lifetime (spawn).
  handle_type release() noexcept { return std::exchange(handle_, {}); }
  handle_type handle() const noexcept { return handle_; }

 private:
  void reset() noexcept {
    if (handle_) std::exchange(handle_, {}).destroy();
  }
  handle_type handle_;
};

namespace detail {
template <typename T>
task<T> task_promise<T>::get_return_object() noexcept {
  return task<T>{std::coroutine_handle<task_promise<T>>::from_promise(*this)};
}
inline task<void> task_promise<void>::get_return_object() noexcept {
  return task<void>{std::coroutine_handle<task_promise<void>>::from_promise(*this)};
}
}  // namespace detail

/// Awaitable that yields the executor of the current task chain.
struct current_executor_t {
  asio::any_io_executor executor;
  bool await_ready() const noexcept { return false; }
  template <detail::has_promise_context P>
  bool await_suspend(std::coroutine_handle<P> h) noexcept {
    executor = h.promise().executor();
    return false;
  }
  asio::any_io_executor await_resume() noexcept { return std::move(executor); }
};
/// `co_await coro::current_executor()` inside a task gives its executor.
inline current_executor_t current_executor() noexcept { return {}; }

/// Awaitable that yields the cancellation slot of the current task chain.
struct current_cancellation_slot_t {
  asio::cancellation_slot slot;
  bool await_ready() const noexcept { return false; }
  template <detail::has_promise_context P>
  bool await_suspend(std::coroutine_handle<P> h) noexcept {
    slot = h.promise().cancellation_slot();
    return false;
  }
  asio::cancellation_slot await_resume() noexcept { return slot; }
};
inline current_cancellation_slot_t current_cancellation_slot() noexcept { return {}; }

}  // namespace cobatch::coro
