// completion_reactor: turns "this fence has completed" into "this handler runs
// on its executor".
//
// The shape HPX and pika use for CUDA events: waits arrive from any thread
// through a lock-free queue; one poller at a time (try_lock) queries the
// pending fences; completions are posted to the waiting handler's associated
// executor, never run on the poller's thread. Unlike HPX and pika it does not
// query every pending fence on every sweep: waits on fences that state their
// place on a stream (fence_order) are kept in order per stream and only the
// oldest pending one of each stream is queried, so a sweep costs
// O(streams with pending waits), not O(waits); fences without an order are
// queried every sweep (docs/completion_reactor.md). The poller is either a run_loop
// that has the reactor attached (it polls whenever it has nothing else to do)
// or the reactor's own thread (start_thread), with the same adaptive backoff:
// spin, then yield, then growing sleeps, and no CPU at all when nothing is
// pending.
#pragma once

#include "cobatch/coro/backoff.hpp"
#include "cobatch/coro/detail/idle_waiter.hpp"
#include "cobatch/coro/fence_order.hpp"
#include "cobatch/coro/fence_status.hpp"

#include <asio/any_io_executor.hpp>
#include <asio/associated_cancellation_slot.hpp>
#include <asio/associated_executor.hpp>
#include <asio/async_result.hpp>
#include <asio/error.hpp>
#include <asio/execution.hpp>
#include <asio/post.hpp>
#include <asio/prefer.hpp>

#include <atomic>
#include <cstddef>
#include <memory>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

namespace cobatch::coro {

namespace detail {

struct reactor_queue;  // moodycamel queue, kept out of this header

/// One pending wait. The poller owns it from submission until it calls
/// complete(), which hands it to the handler's executor.
class reactor_op {
 public:
  virtual fence_status query() noexcept = 0;
  /// Posts the completion to the handler's executor, whose posted function
  /// holds the op's first reference from here on.
  virtual void complete(std::error_code ec) = 0;
  /// Frees the op (called by release() for the last reference).
  virtual void discard() noexcept = 0;

  /// Drops one reference. Besides the completion's, a cancellation on the
  /// way to the poller holds one (ordered waits only), so that the poller
  /// never reads an op its handler has already freed.
  void release() noexcept {
    if (refs.fetch_sub(1, std::memory_order_acq_rel) == 1) discard();
  }

  /// Set by the cancellation handler on the handler's executor; read by the
  /// poller, which then completes the op with operation_aborted.
  std::atomic<bool> cancel_requested{false};
  std::atomic<int> refs{1};

  /// Where the fence stands on its stream; set before submission, constant
  /// afterwards (read by the cancellation handler too).
  fence_order order{};

  // Poller-owned: the op's neighbours in its stream's queue (ordered waits),
  // whether it is in that queue, and whether complete() was called.
  reactor_op* prev = nullptr;
  reactor_op* next = nullptr;
  bool queued = false;
  bool delivered = false;

 protected:
  ~reactor_op() = default;
};

}  // namespace detail

class completion_reactor {
 public:
  using executor_type = asio::any_io_executor;

  struct options {
    backoff_policy backoff{};
  };

  /// `executor` delivers completions of handlers that have no associated
  /// executor of their own.
  explicit completion_reactor(executor_type executor) : completion_reactor(std::move(executor), options{}) {}
  completion_reactor(executor_type executor, options opts);
  completion_reactor(const completion_reactor&) = delete;
  completion_reactor& operator=(const completion_reactor&) = delete;
  /// Stops the poller thread and completes every pending wait with
  /// operation_aborted.
  ~completion_reactor();

  executor_type get_executor() const noexcept { return executor_; }

  /// Waits, without blocking any thread, until `fence` is no longer pending.
  ///
  /// A fence that models ordered_fence and claims an order is queried only
  /// once every wait on an earlier position of its stream has been delivered
  /// (its completion is never earlier than theirs anyway); other fences are
  /// queried on every sweep.
  ///
  /// Completion signature: `void(std::error_code)`. The error is empty when
  /// the fence became ready, the fence's own error when it failed, and
  /// asio::error::operation_aborted when the wait was cancelled or the reactor
  /// shut down. The handler runs on its associated executor (or this reactor's
  /// executor), never inline in this call and never on the poller's thread.
  ///
  /// Cancellation: terminal, partial and total (the wait has no side effects).
  /// May be called from any thread.
  template <pollable_fence Fence, typename Token>
  auto async_wait(Fence fence, Token&& token) {
    return asio::async_initiate<Token, void(std::error_code)>(
        [this](auto handler, Fence f) { this->submit_wait(std::move(f), std::move(handler)); }, token,
        std::move(fence));
  }

  /// One sweep: queries the oldest pending wait of each stream (and the next
  /// ones while they are done), every unordered pending fence, and delivers
  /// the completions and cancellations. Returns the number delivered, or 0 at
  /// once if another thread is polling.
  std::size_t poll();

  /// Tells a sleeping poller that something may have completed. Cheap when no
  /// poller sleeps: one atomic load.
  void kick() noexcept;

  /// Number of waits not yet delivered (exact for the poller, approximate
  /// elsewhere).
  std::size_t pending() const noexcept { return pending_.load(std::memory_order_acquire); }

  /// Polls on a thread of the reactor's own, for programs whose executors do
  /// not poll (an io_context, a thread pool). Idempotent.
  void start_thread();
  void stop_thread();

  /// Completes every pending wait, and every later one, with
  /// operation_aborted. Idempotent.
  void shutdown();

 private:
  friend class run_loop;

  template <typename Fence, typename Handler>
  class wait_op;

  template <typename Fence, typename Handler>
  void submit_wait(Fence fence, Handler handler);
  void submit(detail::reactor_op* op);
  /// From a cancellation handler: hands an ordered op to the poller, which
  /// takes it out of the middle of its stream's queue. Takes a reference.
  void cancelled(detail::reactor_op* op);

  /// Who sleeps while waiting for this reactor (the attached run_loop, or the
  /// reactor's own thread); kick() wakes it.
  void set_sleeper(detail::idle_waiter* sleeper) noexcept { sleeper_.store(sleeper, std::memory_order_release); }
  const backoff_policy& backoff_settings() const noexcept { return options_.backoff; }

  executor_type executor_;
  options options_;
  std::unique_ptr<detail::reactor_queue> queue_;
  std::atomic<std::size_t> pending_{0};
  std::atomic<bool> shut_down_{false};
  std::atomic<bool> polling_{false};
  std::vector<detail::reactor_op*> waiting_;  // unordered waits; only the poller touches it
  std::atomic<detail::idle_waiter*> sleeper_{nullptr};
  detail::idle_waiter own_sleeper_;
  std::atomic<bool> thread_stop_{false};
  std::thread thread_;
};

template <typename Fence, typename Handler>
class completion_reactor::wait_op final : public detail::reactor_op {
 public:
  wait_op(completion_reactor& reactor, Fence fence, Handler handler)
      : fence_(std::move(fence)),
        handler_(std::move(handler)),
        work_(asio::prefer(asio::get_associated_executor(handler_, reactor.get_executor()),
                           asio::execution::outstanding_work.tracked)) {}

  fence_status query() noexcept override { return fence_.query(); }

  void complete(std::error_code ec) override {
    auto ex = work_;
    asio::post(std::move(ex), [op = this, ec]() mutable { op->finish(ec); });
  }

  void discard() noexcept override { delete this; }

  /// Connects the handler's cancellation slot, if it has one. Called on the
  /// initiating thread before the op is visible to the poller.
  void arm_cancellation(completion_reactor& reactor) {
    auto slot = asio::get_associated_cancellation_slot(handler_);
    if (!slot.is_connected()) return;
    slot.assign([this, &reactor](asio::cancellation_type type) {
      constexpr auto accepted = asio::cancellation_type::terminal |
                                asio::cancellation_type::partial | asio::cancellation_type::total;
      if ((type & accepted) == asio::cancellation_type::none) return;
      if (cancel_requested.exchange(true, std::memory_order_acq_rel)) return;
      // An unordered op is looked at on every sweep; an ordered one may sit
      // behind older pending waits of its stream, so it is handed over.
      if (order.claimed()) reactor.cancelled(this);
      reactor.kick();
    });
  }

  /// Runs on the handler's executor, where cancellation is emitted too, so
  /// clearing the slot cannot race with a cancellation in progress.
  void finish(std::error_code ec) {
    auto slot = asio::get_associated_cancellation_slot(handler_);
    if (slot.is_connected()) slot.clear();
    Handler handler(std::move(handler_));
    {
      // The work is over now, even if a cancellation still on its way to the
      // poller keeps the op's memory a little longer.
      work_type done(std::move(work_));
    }
    release();
    std::move(handler)(ec);
  }

 private:
  using work_type = std::decay_t<decltype(asio::prefer(
      std::declval<asio::associated_executor_t<Handler, executor_type>>(),
      asio::execution::outstanding_work.tracked))>;

  Fence fence_;
  Handler handler_;
  work_type work_;
};

template <typename Fence, typename Handler>
void completion_reactor::submit_wait(Fence fence, Handler handler) {
  fence_order order{};
  if constexpr (ordered_fence<Fence>) order = fence.order();
  auto* op = new wait_op<Fence, Handler>(*this, std::move(fence), std::move(handler));
  op->order = order;
  op->arm_cancellation(*this);
  submit(op);
}

}  // namespace cobatch::coro
