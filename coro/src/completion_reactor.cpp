#include "cobatch/coro/completion_reactor.hpp"

#include "cobatch/coro/run_loop.hpp"

#include <concurrentqueue/concurrentqueue.h>

#include <algorithm>
#include <mutex>

namespace cobatch::coro {

namespace detail {
struct reactor_queue {
  moodycamel::ConcurrentQueue<reactor_op*> ops;
};
}  // namespace detail

completion_reactor::completion_reactor(executor_type executor, options opts)
    : executor_(std::move(executor)), options_(opts), queue_(std::make_unique<detail::reactor_queue>()) {}

completion_reactor::~completion_reactor() {
  stop_thread();
  // Either of a loop and its reactor may go first: the one that goes first
  // detaches them.
  if (attached_ != nullptr) attached_->detach();
  shutdown();
}

void completion_reactor::submit(detail::reactor_op* op) {
  pending_.fetch_add(1, std::memory_order_acq_rel);
  queue_->ops.enqueue(op);
  if (shut_down_.load(std::memory_order_acquire)) {
    // Raced with shutdown(): make sure this op is not stranded in the queue.
    shutdown();
    return;
  }
  kick();
}

void completion_reactor::kick() noexcept {
  if (auto* sleeper = sleeper_.load(std::memory_order_acquire)) {
    try {
      sleeper->wake();
    } catch (...) {
      // A failed wake leaves the sleeper on its timed backoff; it still polls.
    }
  }
}

std::size_t completion_reactor::poll() {
  bool expected = false;
  if (!polling_.compare_exchange_strong(expected, true, std::memory_order_acquire)) return 0;

  detail::reactor_op* batch[64];
  for (std::size_t n; (n = queue_->ops.try_dequeue_bulk(batch, 64)) > 0;) {
    waiting_.insert(waiting_.end(), batch, batch + n);
  }

  std::size_t delivered = 0;
  auto done = [&](detail::reactor_op* op) {
    std::error_code ec;
    if (op->cancel_requested.load(std::memory_order_acquire)) {
      ec = asio::error::operation_aborted;
    } else {
      const fence_status status = op->query();
      if (status.is_pending()) return false;
      ec = status.is_failed() ? status.error : std::error_code{};
    }
    op->complete(ec);
    ++delivered;
    return true;
  };
  waiting_.erase(std::remove_if(waiting_.begin(), waiting_.end(), done), waiting_.end());
  pending_.fetch_sub(delivered, std::memory_order_acq_rel);
  polling_.store(false, std::memory_order_release);
  return delivered;
}

void completion_reactor::shutdown() {
  shut_down_.store(true, std::memory_order_release);
  // Wait for a poll in progress on another thread to let go.
  bool expected = false;
  while (!polling_.compare_exchange_weak(expected, true, std::memory_order_acquire)) {
    expected = false;
    std::this_thread::yield();
  }
  detail::reactor_op* op = nullptr;
  while (queue_->ops.try_dequeue(op)) waiting_.push_back(op);
  const std::size_t count = waiting_.size();
  for (auto* w : waiting_) w->complete(asio::error::operation_aborted);
  waiting_.clear();
  pending_.fetch_sub(count, std::memory_order_acq_rel);
  polling_.store(false, std::memory_order_release);
}

void completion_reactor::abandon(const asio::execution_context& context) noexcept {
  // Take the poller's place, as shutdown() does, so no poll completes an op
  // while it is being taken out.
  bool expected = false;
  while (!polling_.compare_exchange_weak(expected, true, std::memory_order_acquire)) {
    expected = false;
    std::this_thread::yield();
  }
  detail::reactor_op* op = nullptr;
  while (queue_->ops.try_dequeue(op)) waiting_.push_back(op);
  std::vector<detail::reactor_op*> dropped;
  auto bound_there = [&](detail::reactor_op* w) {
    if (w->target() != &context) return false;
    dropped.push_back(w);
    return true;
  };
  waiting_.erase(std::remove_if(waiting_.begin(), waiting_.end(), bound_there), waiting_.end());
  pending_.fetch_sub(dropped.size(), std::memory_order_acq_rel);
  polling_.store(false, std::memory_order_release);
  // Outside the poller's place: destroying a handler may destroy coroutine
  // frames, which may call back into this reactor.
  for (auto* w : dropped) w->discard();
}

void completion_reactor::start_thread() {
  // Two threads may call this at once: the lock makes it idempotent.
  std::lock_guard lock(thread_mutex_);
  if (thread_.joinable()) return;
  thread_stop_.store(false, std::memory_order_release);
  set_sleeper(&own_sleeper_);
  thread_ = std::thread([this] {
    backoff state(options_.backoff);
    while (!thread_stop_.load(std::memory_order_acquire)) {
      if (poll() > 0) {
        state.reset();
        continue;
      }
      const bool busy = pending() > 0;
      if (busy) {
        switch (state.next()) {
          case backoff::phase::spin: backoff::pause(); continue;
          case backoff::phase::yield: std::this_thread::yield(); continue;
          case backoff::phase::sleep: break;
        }
      }
      own_sleeper_.announce();
      if (thread_stop_.load(std::memory_order_acquire) || (!busy && pending() > 0)) {
        own_sleeper_.withdraw();
        continue;
      }
      own_sleeper_.sleep(busy ? state.sleep_for() : std::chrono::microseconds{0});
    }
  });
}

void completion_reactor::stop_thread() {
  std::lock_guard lock(thread_mutex_);
  if (!thread_.joinable()) return;
  thread_stop_.store(true, std::memory_order_release);
  own_sleeper_.wake();
  thread_.join();
  set_sleeper(nullptr);
}

}  // namespace cobatch::coro
