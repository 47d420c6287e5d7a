// when_all: awaits several awaitables of different types at once and returns
// all their results. The first failure cancels the others (terminal
// cancellation through their slots) and is rethrown once all have finished,
// so no child is left running when when_all returns.
#pragma once

#include "cobatch/coro/detail/driver.hpp"
#include "cobatch/coro/task.hpp"

#include <asio/cancellation_signal.hpp>
#include <asio/post.hpp>

#include <array>
#include <atomic>
#include <coroutine>
#include <cstddef>
#include <exception>
#include <optional>
#include <tuple>
#include <type_traits>
#include <utility>
#include <variant>

namespace cobatch::coro {
namespace detail {

// What `co_await a` yields, with void mapped to std::monostate so that every
// result has a slot in the tuple.
template <typename A>
struct awaiter_of {
  using type = A;
};
template <typename A>
  requires requires(A a) { std::move(a).operator co_await(); }
struct awaiter_of<A> {
  using type = decltype(std::declval<A>().operator co_await());
};
template <typename A>
struct when_all_value {
  using raw = decltype(std::declval<typename awaiter_of<A>::type&>().await_resume());
  using type = std::conditional_t<std::is_void_v<raw>, std::monostate, std::remove_cvref_t<raw>>;
};
template <typename A>
using when_all_value_t = typename when_all_value<A>::type;

// The children's owner: counts them down and keeps the first failure.
struct when_all_shared final : driver_owner {
  std::atomic<std::size_t> remaining{0};
  std::coroutine_handle<> parent;
  std::exception_ptr first_error;
  std::atomic<bool> failed{false};
  asio::cancellation_signal* signals = nullptr;
  std::size_t count = 0;

  void driver_failed(std::size_t index, std::exception_ptr error) noexcept override {
    if (failed.exchange(true, std::memory_order_acq_rel)) return;
    first_error = std::move(error);
    for (std::size_t i = 0; i < count; ++i) {
      if (i != index) signals[i].emit(asio::cancellation_type::terminal);
    }
  }
  std::coroutine_handle<> driver_done(std::size_t) noexcept override {
    if (remaining.fetch_sub(1, std::memory_order_acq_rel) == 1) return parent;
    return std::noop_coroutine();
  }
};

template <typename A, typename V>
driver run_child(A awaitable, std::optional<V>& out) {
  if constexpr (std::is_same_v<V, std::monostate>) {
    co_await std::move(awaitable);
    out.emplace();
  } else {
    out.emplace(co_await std::move(awaitable));
  }
}

template <typename... A>
class when_all_awaiter {
  static constexpr std::size_t count = sizeof...(A);

 public:
  explicit when_all_awaiter(A... awaitables) : awaitables_(std::move(awaitables)...) {}
  when_all_awaiter(const when_all_awaiter&) = delete;
  when_all_awaiter& operator=(const when_all_awaiter&) = delete;
  // Destroyed while suspended (its chain was abandoned): the parent's signal
  // may outlive this frame, so it must not keep a handler pointing here.
  ~when_all_awaiter() {
    if (parent_slot_.is_connected()) parent_slot_.clear();
  }

  bool await_ready() const noexcept { return count == 0; }

  template <typename P>
  bool await_suspend(std::coroutine_handle<P> parent) {
    shared_.parent = parent;
    shared_.signals = signals_.data();
    shared_.count = count;
    shared_.remaining.store(count + 1, std::memory_order_relaxed);
    if constexpr (has_promise_context<P>) {
      parent_slot_ = parent.promise().cancellation_slot();
      if (parent_slot_.is_connected()) {
        parent_slot_.assign([this](asio::cancellation_type type) {
          for (auto& s : signals_) s.emit(type);
        });
      }
    }
    start(parent, std::index_sequence_for<A...>{});
    return shared_.remaining.fetch_sub(1, std::memory_order_acq_rel) != 1;
  }

  std::tuple<when_all_value_t<A>...> await_resume() {
    if (parent_slot_.is_connected()) {
      parent_slot_.clear();
      parent_slot_ = {};
    }
    if (shared_.first_error) std::rethrow_exception(shared_.first_error);
    return take(std::index_sequence_for<A...>{});
  }

 private:
  template <typename P, std::size_t... I>
  void start(std::coroutine_handle<P> parent, std::index_sequence<I...>) {
    ((children_[I] = run_child(std::move(std::get<I>(awaitables_)), std::get<I>(results_))), ...);
    asio::any_io_executor ex;
    chain_root* chain = nullptr;
    if constexpr (has_promise_context<P>) {
      ex = parent.promise().executor();
      chain = parent.promise().chain();
    }
    for (std::size_t i = 0; i < count; ++i) children_[i].bind(shared_, i, ex, signals_[i].slot(), chain);
    // Children may finish (and resume the parent) only after all started:
    // `remaining` holds one extra count until the loop is done. With an
    // executor, children start as queued work in order, so that they
    // interleave fairly from their first switch; without one, inline.
    for (auto& child : children_) {
      if (ex) {
        asio::post(ex, [h = child.handle()] { h.resume(); });
      } else {
        child.handle().resume();
      }
    }
  }

  template <std::size_t... I>
  std::tuple<when_all_value_t<A>...> take(std::index_sequence<I...>) {
    return {std::move(*std::get<I>(results_))...};
  }

  std::tuple<A...> awaitables_;
  std::tuple<std::optional<when_all_value_t<A>>...> results_;
  std::array<asio::cancellation_signal, count> signals_;
  std::array<driver, count> children_;
  when_all_shared shared_;
  asio::cancellation_slot parent_slot_;
};

}  // namespace detail

/// Awaits every argument concurrently (each starts in turn, posted to the
/// awaiting coroutine's executor, and runs until it first suspends) and returns a tuple of
/// their results, std::monostate for those that return void. Children inherit
/// the executor; each has its own cancellation slot, fed from the parent's.
template <typename... A>
task<std::tuple<detail::when_all_value_t<A>...>> when_all(A... awaitables) {
  co_return co_await detail::when_all_awaiter<A...>(std::move(awaitables)...);
}

}  // namespace cobatch::coro
