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
//
// Threads: everything but poll() from any thread; poll() by one poller at a
// time. Lifetime: it must outlive the devices, streams, events and graph
// execs made through it (stream workers kick it); its destructor completes
// pending waits with operation_aborted on their executors, whose contexts must
// still live or have abandoned their waits (a run_loop does when destroyed).
// A wait cancelled after its completion was posted never touches the reactor,
// so cancelling after the reactor is gone is safe. docs/lifetimes.md.
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
#include <asio/execution_context.hpp>
#include <asio/query.hpp>
#include <asio/post.hpp>
#include <asio/prefer.hpp>

#include <atomic>
#include <cstddef>
#include <memory>
#include <mutex>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

namespace cobatch::coro {

class run_loop;

namespace detail {

struct reactor_queue;  // moodycamel queue, kept out of this header

/// One pending wait. The poller owns it from submission until it calls
/// complete(), which hands it to the handler's executor.
class reactor_op {
 public:
  virtual fence_status query() noexcept = 0;
  /// Posts the completion to the handler's executor; `this` is owned by that
  /// posted function from here on (destroying the function unrun destroys
  /// the op and its handler, as an execution context destroys queued work).
  /// After complete() returns, the op's cancellation handler no longer
  /// touches the reactor, which may then be destroyed.
  virtual void complete(std::error_code ec) = 0;
  /// Frees the op: its handler, if still there, is destroyed without being
  /// invoked. Called through release() for the op's last reference.
  virtual void discard() noexcept = 0;
  /// The execution context the completion would be delivered to.
  virtual const asio::execution_context* target() const noexcept = 0;

  /// Drops one reference. The first belongs to whoever will complete or
  /// drop the op; a cancellation of an ordered wait on its way to the poller
  /// holds a second, so that the poller never reads an op already freed.
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

  // The cancellation handler kicks the reactor only while the op is still
  // the reactor's: complete() waits out a kick in progress and closes the
  // door, so a cancellation emitted after the reactor completed the op (and
  // perhaps was destroyed) never reaches it.
  enum : int { kick_idle = 0, kick_running = 1, kick_closed = 2 };
  std::atomic<int> kick_state_{kick_idle};
};

}  // namespace detail}  // namespace detail

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
  /// operation_aborted (posted to the handlers' executors).
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
  /// not poll (an io_context, a thread pool). Idempotent, and safe to call
  /// from several threads at once.
  void start_thread();
  /// Joins the reactor's thread, if it runs. Idempotent; any thread.
  void stop_thread();

  /// Completes every pending wait, and every later one, with
  /// operation_aborted. Idempotent.
  void shutdown();

  /// Destroys, without invoking their handlers, the pending waits whose
  /// completion would go to `context`: called by a context that is being
  /// destroyed (run_loop's destructor does, for the reactor attached to it),
  /// so that nothing is posted to it later.
  void abandon(const asio::execution_context& context) noexcept;

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
  run_loop* attached_ = nullptr;  // the loop this reactor is attached to, which the destructor detaches
  detail::idle_waiter own_sleeper_;
  std::atomic<bool> thread_stop_{false};
  std::mutex thread_mutex_;  // start_thread and stop_thread may be called from any thread
  std::thread thread_;
};

template <typename Fence, typename Handler>
class completion_reactor::wait_op final : public detail::reactor_op {
 public:
  wait_op(completion_reactor& reactor, Fence fence, Handler handler)
      : reactor_(&reactor),
        fence_(std::move(fence)),
        handler_(std::move(handler)),
        work_(asio::prefer(asio::get_associated_executor(handler_, reactor.get_executor()),
                           asio::execution::outstanding_work.tracked)) {}

  fence_status query() noexcept override { return fence_.query(); }

  void complete(std::error_code ec) override {
    close_kick();
    auto ex = work_;
    asio::post(std::move(ex), delivery{this, ec});
  }

  void discard() noexcept override {
    disarm();
    delete this;
  }
  // (discard() runs for the last reference: see reactor_op::release.)

  const asio::execution_context* target() const noexcept override {
    return &static_cast<const asio::execution_context&>(asio::query(work_, asio::execution::context));
  }

  /// Connects the handler's cancellation slot, if it has one. Called on the
  /// initiating thread before the op is visible to the poller.
  void arm_cancellation() {
    auto slot = asio::get_associated_cancellation_slot(handler_);
    if (!slot.is_connected()) return;
    slot.template emplace<cancel_handler>(this);
    armed_ = true;
  }

  /// Runs on the handler's executor, where cancellation is emitted too, so
  /// clearing the slot cannot race with a cancellation in progress.
  void finish(std::error_code ec) {
    disarm();
    Handler handler(std::move(handler_));
    {
      // The work is over now, even if a cancellation still on its way to the
      // poller keeps the op's memory a little longer.
      [[maybe_unused]] work_type done(std::move(work_));
    }
    release();
    std::move(handler)(ec);
  }

 private:
  // The posted completion owns the op: run, it finishes it; destroyed unrun
  // (the executor's context was destroyed with it queued), it destroys the
  // op, whose handler then releases whatever it holds.
  struct delivery {
    wait_op* op;
    std::error_code ec;
    delivery(wait_op* o, std::error_code e) noexcept : op(o), ec(e) {}
    delivery(delivery&& other) noexcept : op(std::exchange(other.op, nullptr)), ec(other.ec) {}
    delivery& operator=(delivery&&) = delete;
    ~delivery() {
      if (op != nullptr) op->release();
    }
    void operator()() { std::exchange(op, nullptr)->finish(ec); }
  };

  // Lives in the handler's cancellation slot. Its destructor runs when the
  // slot is cleared or its signal destroyed; either way the op must not
  // touch the slot again.
  struct cancel_handler {
    wait_op* op;
    explicit cancel_handler(wait_op* o) noexcept : op(o) {}
    cancel_handler(const cancel_handler&) = delete;
    cancel_handler& operator=(const cancel_handler&) = delete;
    ~cancel_handler() { op->armed_ = false; }
    void operator()(asio::cancellation_type type) {
      constexpr auto accepted = asio::cancellation_type::terminal | asio::cancellation_type::partial |
                                asio::cancellation_type::total;
      if ((type & accepted) == asio::cancellation_type::none) return;
      if (op->cancel_requested.exchange(true, std::memory_order_acq_rel)) return;
      int expected = kick_idle;
      if (op->kick_state_.compare_exchange_strong(expected, kick_running, std::memory_order_acq_rel)) {
        // An unordered op is looked at on every sweep; an ordered one may
        // sit behind older pending waits of its stream, so it is handed over.
        if (op->order.claimed()) op->reactor_->cancelled(op);
        op->reactor_->kick();
        op->kick_state_.store(kick_idle, std::memory_order_release);
      }
    }
  };

  ~wait_op() = default;

  void close_kick() noexcept {
    int expected = kick_idle;
    while (!kick_state_.compare_exchange_weak(expected, kick_closed, std::memory_order_acq_rel)) {
      expected = kick_idle;
      std::this_thread::yield();  // a kick in progress is a few instructions and a wake
    }
  }
  void disarm() noexcept {
    if (!armed_) return;
    auto slot = asio::get_associated_cancellation_slot(handler_);
    slot.clear();  // destroys the cancel_handler, which clears armed_
    armed_ = false;
  }

  using work_type = std::decay_t<decltype(asio::prefer(
      std::declval<asio::associated_executor_t<Handler, executor_type>>(),
      asio::execution::outstanding_work.tracked))>;

  completion_reactor* reactor_;
  Fence fence_;
  Handler handler_;
  work_type work_;
  bool armed_ = false;  // a cancel_handler of ours sits in the handler's slot
};

template <typename Fence, typename Handler>
void completion_reactor::submit_wait(Fence fence, Handler handler) {
  fence_order order{};
  if constexpr (ordered_fence<Fence>) order = fence.order();
  auto* op = new wait_op<Fence, Handler>(*this, std::move(fence), std::move(handler));
  op->order = order;
  op->arm_cancellation();
  submit(op);
}

}  // namespace cobatch::coro
