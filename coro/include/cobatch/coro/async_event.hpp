// async_event: a manual-reset event that coroutines (and any Asio completion
// token) wait on without blocking a thread. set() may be called from any
// thread; waiters complete on their own executors.
#pragma once

#include <asio/any_io_executor.hpp>
#include <asio/associated_cancellation_slot.hpp>
#include <asio/associated_executor.hpp>
#include <asio/async_result.hpp>
#include <asio/error.hpp>
#include <asio/execution.hpp>
#include <asio/post.hpp>
#include <asio/prefer.hpp>

#include <atomic>
#include <mutex>
#include <system_error>
#include <utility>

namespace cobatch::coro {

class async_event {
 public:
  using executor_type = asio::any_io_executor;

  /// `executor` delivers completions of handlers that have none of their own.
  explicit async_event(executor_type executor, bool initially_set = false)
      : executor_(std::move(executor)), set_(initially_set) {}
  async_event(const async_event&) = delete;
  async_event& operator=(const async_event&) = delete;
  /// Completes every remaining waiter with operation_aborted.
  ~async_event() { abort_all(); }

  executor_type get_executor() const noexcept { return executor_; }

  bool is_set() const noexcept { return set_.load(std::memory_order_acquire); }

  /// Sets the event and completes every waiter (each on its executor).
  void set() {
    waiter* list = nullptr;
    {
      std::lock_guard lock(mutex_);
      set_.store(true, std::memory_order_release);
      list = std::exchange(head_, nullptr);
    }
    complete_list(list, {});
  }

  /// Clears the event; later waits suspend until the next set().
  void reset() noexcept { set_.store(false, std::memory_order_release); }

  /// Waits until the event is set.
  ///
  /// Completion signature: `void(std::error_code)`: empty once set,
  /// asio::error::operation_aborted when cancelled or the event is destroyed.
  /// Completes by a post even when the event is already set.
  /// Cancellation: terminal, partial, total.
  template <typename Token>
  auto async_wait(Token&& token) {
    return asio::async_initiate<Token, void(std::error_code)>(
        [this](auto handler) { this->start_wait(std::move(handler)); }, token);
  }

 private:
  struct waiter {
    waiter* prev = nullptr;
    waiter* next = nullptr;
    virtual void complete(std::error_code ec) = 0;  // posts and frees
   protected:
    ~waiter() = default;
  };

  template <typename Handler>
  struct waiter_impl final : waiter {
    using work_type = std::decay_t<decltype(asio::prefer(
        std::declval<asio::associated_executor_t<Handler, executor_type>>(),
        asio::execution::outstanding_work.tracked))>;

    waiter_impl(Handler h, const executor_type& fallback)
        : handler(std::move(h)),
          work(asio::prefer(asio::get_associated_executor(handler, fallback),
                            asio::execution::outstanding_work.tracked)) {}

    void complete(std::error_code ec) override {
      auto ex = work;
      asio::post(std::move(ex), [self = this, ec]() mutable {
        auto slot = asio::get_associated_cancellation_slot(self->handler);
        if (slot.is_connected()) slot.clear();
        Handler h(std::move(self->handler));
        delete self;
        std::move(h)(ec);
      });
    }

    Handler handler;
    work_type work;
  };

  template <typename Handler>
  void start_wait(Handler handler) {
    auto* w = new waiter_impl<Handler>(std::move(handler), executor_);
    {
      std::lock_guard lock(mutex_);
      if (!set_.load(std::memory_order_relaxed)) {
        auto slot = asio::get_associated_cancellation_slot(w->handler);
        if (slot.is_connected()) {
          slot.assign([this, w](asio::cancellation_type type) {
            if ((type & (asio::cancellation_type::terminal | asio::cancellation_type::partial |
                         asio::cancellation_type::total)) == asio::cancellation_type::none) {
              return;
            }
            cancel(w);
          });
        }
        w->next = head_;
        if (head_ != nullptr) head_->prev = w;
        head_ = w;
        return;
      }
    }
    w->complete({});
  }

  void cancel(waiter* w) {
    {
      std::lock_guard lock(mutex_);
      // Still queued? set() may have taken it already, in which case its
      // completion is on the way and cancellation has nothing to do.
      bool queued = false;
      for (waiter* it = head_; it != nullptr; it = it->next) {
        if (it == w) {
          queued = true;
          break;
        }
      }
      if (!queued) return;
      if (w->prev != nullptr) w->prev->next = w->next;
      if (w->next != nullptr) w->next->prev = w->prev;
      if (head_ == w) head_ = w->next;
    }
    w->complete(asio::error::operation_aborted);
  }

  void abort_all() {
    waiter* list = nullptr;
    {
      std::lock_guard lock(mutex_);
      list = std::exchange(head_, nullptr);
    }
    complete_list(list, asio::error::operation_aborted);
  }

  static void complete_list(waiter* list, std::error_code ec) {
    while (list != nullptr) {
      waiter* next = list->next;
      list->complete(ec);
      list = next;
    }
  }

  executor_type executor_;
  std::atomic<bool> set_;
  std::mutex mutex_;
  waiter* head_ = nullptr;
};

}  // namespace cobatch::coro
