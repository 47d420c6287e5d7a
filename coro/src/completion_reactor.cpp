#include "cobatch/coro/completion_reactor.hpp"

#include "cobatch/coro/run_loop.hpp"

#include <concurrentqueue/concurrentqueue.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <limits>
#include <mutex>
#include <unordered_map>

namespace cobatch::coro {

namespace detail {

/// The pending ordered waits of one stream, oldest position first: an
/// intrusive list through reactor_op::prev/next, so taking a wait out of the
/// middle (cancellation) costs O(1) and nothing is allocated per wait.
struct stream_queue {
  static constexpr std::size_t inactive = std::numeric_limits<std::size_t>::max();
  reactor_op* head = nullptr;
  reactor_op* tail = nullptr;
  std::size_t active_index = inactive;  // in ordered_waits::active while non-empty
};

/// Everything the poller keeps for ordered waits.
class ordered_waits {
 public:
  /// Puts `op` after every wait of its stream with a position not greater
  /// than its own. Waits usually arrive in the order their fences were
  /// recorded, so the walk from the tail stops at once.
  void insert(reactor_op* op) {
    stream_queue& q = queue_of(op->order.stream);
    reactor_op* after = q.tail;
    while (after != nullptr && after->order.position > op->order.position) after = after->prev;
    op->prev = after;
    op->next = after != nullptr ? after->next : q.head;
    if (op->next != nullptr) {
      op->next->prev = op;
    } else {
      q.tail = op;
    }
    if (after != nullptr) {
      after->next = op;
    } else {
      q.head = op;
    }
    op->queued = true;
    if (q.active_index == stream_queue::inactive) {
      q.active_index = active.size();
      active.push_back(&q);
    }
  }

  /// Takes a queued op out of its stream's queue, wherever it is.
  void remove(reactor_op* op) { unlink(queue_of(op->order.stream), op); }

  void unlink(stream_queue& q, reactor_op* op) noexcept {
    if (op->prev != nullptr) {
      op->prev->next = op->next;
    } else {
      q.head = op->next;
    }
    if (op->next != nullptr) {
      op->next->prev = op->prev;
    } else {
      q.tail = op->prev;
    }
    op->prev = op->next = nullptr;
    op->queued = false;
    if (q.head == nullptr) deactivate(q);
  }

  /// Forgets streams without pending waits once they far outnumber the
  /// streams with some, so a program that creates and drops streams does
  /// not grow the table. Amortised O(1) per stream that went quiet.
  void collect() {
    if (streams_.size() <= 64 || streams_.size() <= 4 * active.size()) return;
    std::erase_if(streams_, [](const auto& entry) { return entry.second.head == nullptr; });
    last_stream_ = 0;
    last_queue_ = nullptr;
  }

  /// Streams with at least one pending ordered wait.
  std::vector<stream_queue*> active;

 private:
  stream_queue& queue_of(std::uint64_t stream) {
    // Waits come in runs on one stream; the last lookup is usually the answer.
    if (stream == last_stream_) return *last_queue_;
    stream_queue& q = streams_[stream];  // node-based: the address is stable
    last_stream_ = stream;
    last_queue_ = &q;
    return q;
  }

  void deactivate(stream_queue& q) noexcept {
    stream_queue* moved = active.back();
    active[q.active_index] = moved;
    moved->active_index = q.active_index;
    active.pop_back();
    q.active_index = stream_queue::inactive;
  }

  std::unordered_map<std::uint64_t, stream_queue> streams_;
  std::uint64_t last_stream_ = 0;  // 0 is never a stream
  stream_queue* last_queue_ = nullptr;
};

struct reactor_queue {
  moodycamel::ConcurrentQueue<reactor_op*> ops;
  /// Ordered ops whose wait was cancelled, each holding a reference.
  moodycamel::ConcurrentQueue<reactor_op*> cancels;
  /// How many are in `cancels`, so that a sweep without cancellations does
  /// not pay for looking.
  std::atomic<std::size_t> cancel_count{0};
  ordered_waits ordered;  // only the poller touches it
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

void completion_reactor::cancelled(detail::reactor_op* op) {
  op->refs.fetch_add(1, std::memory_order_relaxed);
  queue_->cancel_count.fetch_add(1, std::memory_order_release);
  queue_->cancels.enqueue(op);
  if (shut_down_.load(std::memory_order_acquire)) {
    // Raced with shutdown(): the reference must not be stranded either.
    shutdown();
  }
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

namespace {
// Hands an op to its handler's executor; the op may be freed by the time
// this returns, unless the caller holds a reference of its own.
void deliver(detail::reactor_op* op, std::error_code ec, std::size_t& delivered) {
  op->delivered = true;
  op->complete(ec);
  ++delivered;
}
}  // namespace

std::size_t completion_reactor::poll() {
  bool expected = false;
  if (!polling_.compare_exchange_strong(expected, true, std::memory_order_acquire)) return 0;

  auto& ordered = queue_->ordered;
  std::size_t delivered = 0;
  detail::reactor_op* batch[64];

  for (std::size_t n; (n = queue_->ops.try_dequeue_bulk(batch, 64)) > 0;) {
    for (std::size_t i = 0; i < n; ++i) {
      detail::reactor_op* op = batch[i];
      if (!op->order.claimed()) {
        waiting_.push_back(op);
      } else if (op->cancel_requested.load(std::memory_order_acquire)) {
        deliver(op, asio::error::operation_aborted, delivered);  // cancelled before it got here
      } else {
        ordered.insert(op);
      }
    }
  }

  // Cancelled ordered waits, wherever they stand in their stream's queue:
  // they complete now, not when the waits before them do.
  if (queue_->cancel_count.load(std::memory_order_acquire) != 0) {
    for (std::size_t n; (n = queue_->cancels.try_dequeue_bulk(batch, 64)) > 0;) {
      queue_->cancel_count.fetch_sub(n, std::memory_order_relaxed);
      for (std::size_t i = 0; i < n; ++i) {
        detail::reactor_op* op = batch[i];
        if (op->queued) {
          ordered.remove(op);
          deliver(op, asio::error::operation_aborted, delivered);
        }
        // Neither queued nor delivered: its submission is still on the way,
        // and is aborted when it arrives (cancel_requested is set).
        op->release();
      }
    }
  }

  // Ordered waits: only the oldest of each stream is queried; while it is
  // done the next one is, so a sweep costs one query per stream plus one per
  // completion. A failed fence fails its own waiters; the waits after it are
  // queried, not presumed, so they fail exactly when the stream says so.
  for (std::size_t i = 0; i < ordered.active.size();) {
    detail::stream_queue& q = *ordered.active[i];
    while (detail::reactor_op* op = q.head) {
      std::error_code ec;
      if (op->cancel_requested.load(std::memory_order_acquire)) {
        ec = asio::error::operation_aborted;
      } else {
        const fence_status status = op->query();
        if (status.is_pending()) break;
        ec = status.is_failed() ? status.error : std::error_code{};
      }
      ordered.unlink(q, op);  // the last one moves another stream into slot i
      deliver(op, ec, delivered);
    }
    if (q.head != nullptr) ++i;
  }
  ordered.collect();

  // Unordered waits: every one is queried.
  auto done = [&](detail::reactor_op* op) {
    std::error_code ec;
    if (op->cancel_requested.load(std::memory_order_acquire)) {
      ec = asio::error::operation_aborted;
    } else {
      const fence_status status = op->query();
      if (status.is_pending()) return false;
      ec = status.is_failed() ? status.error : std::error_code{};
    }
    deliver(op, ec, delivered);
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
  std::size_t count = 0;
  auto& ordered = queue_->ordered;
  while (!ordered.active.empty()) {
    detail::stream_queue& q = *ordered.active.back();
    while (detail::reactor_op* op = q.head) {
      ordered.unlink(q, op);
      deliver(op, asio::error::operation_aborted, count);
    }
  }
  detail::reactor_op* op = nullptr;
  while (queue_->ops.try_dequeue(op)) waiting_.push_back(op);
  for (auto* w : waiting_) deliver(w, asio::error::operation_aborted, count);
  waiting_.clear();
  // Every op that was submitted has been delivered by now; a cancellation
  // of one still on its way to the queue only drops its reference.
  while (queue_->cancels.try_dequeue(op)) {
    queue_->cancel_count.fetch_sub(1, std::memory_order_relaxed);
    op->release();
  }
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
  auto& ordered = queue_->ordered;
  std::size_t delivered = 0;
  detail::reactor_op* op = nullptr;
  while (queue_->ops.try_dequeue(op)) {
    if (op->order.claimed()) {
      ordered.insert(op);
    } else {
      waiting_.push_back(op);
    }
  }
  // Cancellations on their way hold references: settle them now, so that an
  // op bound to `context` is freed below and not after the context is gone.
  while (queue_->cancels.try_dequeue(op)) {
    queue_->cancel_count.fetch_sub(1, std::memory_order_relaxed);
    if (op->queued && op->target() != &context) {
      ordered.remove(op);
      deliver(op, asio::error::operation_aborted, delivered);
    }
    op->release();
  }
  std::vector<detail::reactor_op*> dropped;
  auto bound_there = [&](detail::reactor_op* w) {
    if (w->target() != &context) return false;
    dropped.push_back(w);
    return true;
  };
  waiting_.erase(std::remove_if(waiting_.begin(), waiting_.end(), bound_there), waiting_.end());
  for (std::size_t i = 0; i < ordered.active.size();) {
    detail::stream_queue& q = *ordered.active[i];
    for (detail::reactor_op* w = q.head; w != nullptr;) {
      detail::reactor_op* next = w->next;
      if (bound_there(w)) ordered.unlink(q, w);
      w = next;
    }
    if (q.head != nullptr) ++i;  // else unlink moved another stream into slot i
  }
  pending_.fetch_sub(dropped.size() + delivered, std::memory_order_acq_rel);
  polling_.store(false, std::memory_order_release);
  // Outside the poller's place: destroying a handler may destroy coroutine
  // frames, which may call back into this reactor.
  for (auto* w : dropped) w->release();
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
