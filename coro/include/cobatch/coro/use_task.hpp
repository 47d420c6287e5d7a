// use_task: the completion token that lets a coro::task await any Asio
// initiating function, cobatch's own and Asio's alike:
//
//   co_await stream.async_wait(coro::use_task);          // void(error_code) -> throws on error
//   auto [ec] = co_await fence.async_wait(coro::as_tuple_task); // never throws
//
// The operation is initiated when the task suspends; its handler is associated
// with the task's executor (so the operation delivers the completion there,
// never inline on a foreign thread) and with the task's cancellation slot (so
// cancelling the task's chain cancels the operation in flight).
#pragma once

#include "cobatch/coro/task.hpp"

#include <asio/associated_cancellation_slot.hpp>
#include <asio/associated_executor.hpp>
#include <asio/async_result.hpp>

#include <atomic>
#include <coroutine>
#include <exception>
#include <optional>
#include <stdexcept>
#include <system_error>
#include <tuple>
#include <utility>

namespace cobatch::coro {

/// Completion token: `co_await op(args..., coro::use_task)`. An error_code or
/// exception_ptr first argument is thrown; the remaining arguments are the
/// result (nothing, one value, or a tuple).
struct use_task_t {};
inline constexpr use_task_t use_task{};

/// Completion token: `co_await op(args..., coro::as_tuple_task)` returns every
/// completion argument as a tuple and never throws the error.
struct as_tuple_task_t {};
inline constexpr as_tuple_task_t as_tuple_task{};

namespace detail {

template <typename Token, typename... Args>
struct completion_result {
  using stored = std::tuple<std::decay_t<Args>...>;

  static constexpr std::size_t count = sizeof...(Args);

  static decltype(auto) unpack(stored&& values) {
    if constexpr (std::is_same_v<Token, as_tuple_task_t>) {
      return std::move(values);
    } else if constexpr (count == 0) {
      return;
    } else {
      using first = std::tuple_element_t<0, stored>;
      if constexpr (std::is_same_v<first, std::error_code>) {
        if (auto& ec = std::get<0>(values)) throw std::system_error(ec);
        return pick_from<1>(std::move(values), std::make_index_sequence<count - 1>{});
      } else if constexpr (std::is_same_v<first, std::exception_ptr>) {
        if (auto& ep = std::get<0>(values)) std::rethrow_exception(ep);
        return pick_from<1>(std::move(values), std::make_index_sequence<count - 1>{});
      } else {
        return pick_from<0>(std::move(values), std::make_index_sequence<count>{});
      }
    }
  }

 private:
  template <std::size_t Offset, std::size_t... I>
  static auto pick_from(stored&& values, std::index_sequence<I...>) {
    if constexpr (sizeof...(I) == 0) {
      return;
    } else if constexpr (sizeof...(I) == 1) {
      return std::move(std::get<(I + Offset)...>(values));
    } else {
      return std::tuple<std::tuple_element_t<I + Offset, stored>...>(
          std::move(std::get<I + Offset>(values))...);
    }
  }
};

enum class op_state : int { initiating, suspended, completed };

template <typename Token, typename Initiation, typename Signature, typename... InitArgs>
class op_awaiter;

template <typename Token, typename Initiation, typename R, typename... Args, typename... InitArgs>
class op_awaiter<Token, Initiation, R(Args...), InitArgs...> {
  using result = completion_result<Token, Args...>;

 public:
  template <typename I, typename... A>
    requires(!std::is_same_v<std::decay_t<I>, op_awaiter>)
  explicit op_awaiter(I&& init, A&&... args)
      : init_(std::forward<I>(init)), args_(std::forward<A>(args)...) {}
  // Movable until awaited (the operation starts only in await_suspend), so
  // `auto op = x.async_wait(use_task); ...; co_await std::move(op);` works.
  op_awaiter(op_awaiter&& other) : init_(std::move(other.init_)), args_(std::move(other.args_)) {}
  op_awaiter& operator=(op_awaiter&&) = delete;

  class handler {
   public:
    using executor_type = asio::any_io_executor;
    using cancellation_slot_type = asio::cancellation_slot;

    handler(op_awaiter* self, std::coroutine_handle<> waiter, asio::any_io_executor ex,
            asio::cancellation_slot slot, chain_root* chain)
        : self_(self), waiter_(waiter), executor_(std::move(ex)), slot_(slot), chain_(chain) {
      if (chain_ != nullptr) chain_->acquire();
    }
    handler(handler&& other) noexcept
        : self_(other.self_),
          waiter_(other.waiter_),
          executor_(std::move(other.executor_)),
          slot_(other.slot_),
          chain_(std::exchange(other.chain_, nullptr)),
          armed_(std::exchange(other.armed_, false)) {}
    // One handler resumes the task: a copy could resume it after the other
    // abandoned the chain.
    handler(const handler&) = delete;
    handler& operator=(const handler&) = delete;
    handler& operator=(handler&&) = delete;
    /// Destroyed without having run, after the operation took it: the task
    /// can never resume, so its chain is abandoned (see chain_root). A
    /// handler dropped by an initiation that threw is not: the exception
    /// reaches the task instead.
    ~handler() {
      if (chain_ == nullptr) return;
      if (armed_ && chain_->alive() &&
          self_->state_.load(std::memory_order_acquire) == op_state::suspended) {
        chain_->abandon();
      }
      chain_->release();
    }

    executor_type get_executor() const noexcept { return executor_; }
    cancellation_slot_type get_cancellation_slot() const noexcept { return slot_; }

    template <typename... V>
    void operator()(V&&... values) {
      armed_ = false;
      op_awaiter* self = self_;
      self->values_.emplace(std::forward<V>(values)...);
      // If the operation completed before await_suspend finished, let
      // await_suspend resume the task instead (no resumption from inside it).
      if (self->state_.exchange(op_state::completed, std::memory_order_acq_rel) ==
          op_state::suspended) {
        waiter_.resume();
      }
    }

   private:
    op_awaiter* self_;
    std::coroutine_handle<> waiter_;
    asio::any_io_executor executor_;
    asio::cancellation_slot slot_;
    chain_root* chain_;
    bool armed_ = true;
  };

  bool await_ready() const noexcept { return false; }

  template <typename P>
  bool await_suspend(std::coroutine_handle<P> waiter) {
    static_assert(has_promise_context<P>, "coro::use_task is for cobatch coroutines (coro::task)");
    const promise_context& ctx = waiter.promise();
    if (!ctx.executor()) {
      throw std::logic_error(
          "cobatch: an operation awaited with coro::use_task needs an executor; "
          "start the task with coro::spawn or coro::sync_wait");
    }
    std::apply(
        [&](auto&&... a) {
          std::move(init_)(handler{this, waiter, ctx.executor(), ctx.cancellation_slot(), ctx.chain()},
                           std::move(a)...);
        },
        std::move(args_));
    op_state expected = op_state::initiating;
    return state_.compare_exchange_strong(expected, op_state::suspended, std::memory_order_acq_rel);
  }

  decltype(auto) await_resume() { return result::unpack(std::move(*values_)); }

 private:
  Initiation init_;
  std::tuple<InitArgs...> args_;
  std::optional<typename result::stored> values_;
  std::atomic<op_state> state_{op_state::initiating};
};

template <typename Token, typename Signature>
struct task_async_result {
  template <typename Initiation, typename... InitArgs>
  static auto initiate(Initiation&& init, Token, InitArgs&&... args) {
    return op_awaiter<Token, std::decay_t<Initiation>, Signature, std::decay_t<InitArgs>...>(
        std::forward<Initiation>(init), std::forward<InitArgs>(args)...);
  }
};

}  // namespace detail
}  // namespace cobatch::coro

template <typename Signature>
class asio::async_result<cobatch::coro::use_task_t, Signature>
    : public cobatch::coro::detail::task_async_result<cobatch::coro::use_task_t, Signature> {};

template <typename Signature>
class asio::async_result<cobatch::coro::as_tuple_task_t, Signature>
    : public cobatch::coro::detail::task_async_result<cobatch::coro::as_tuple_task_t, Signature> {};
