// run_loop: a single-threaded execution context for micro-batch coroutines.
//
// It is an Asio execution context (its executor works with asio::post,
// any_io_executor and every Asio initiating function) with two things an
// io_context lacks:
//   - a switch between coroutines on the loop's own thread is a push onto a
//     plain queue and a symmetric transfer: no lock, no allocation;
//   - while nothing is ready it polls an attached completion_reactor with
//     adaptive backoff, so GPU completions are noticed within nanoseconds when
//     the loop is busy-waiting and cost almost no CPU when it is idle.
// Work posted from other threads goes through a lock-free queue and wakes the
// loop only if it is asleep.
//
// Threads: run(), poll() and yield() on one thread at a time; schedule(),
// posting and stop() from any thread. Destruction: queued work is destroyed
// unrun (a use_task completion destroyed that way frees the coroutine chain
// waiting for it), and waits pending in the attached reactor are abandoned,
// so the loop may be destroyed before or after its reactor. docs/lifetimes.md.
#pragma once

#include "cobatch/coro/backoff.hpp"
#include "cobatch/coro/detail/idle_waiter.hpp"

#include <asio/execution.hpp>
#include <asio/execution_context.hpp>

#include <atomic>
#include <coroutine>
#include <cstddef>
#include <deque>
#include <memory>
#include <thread>
#include <type_traits>
#include <utility>

namespace cobatch::coro {

class completion_reactor;

namespace detail {

/// A posted function, type-erased once at post time.
class loop_op {
 public:
  virtual void run() = 0;
  virtual ~loop_op() = default;
};

template <typename F>
class loop_op_impl final : public loop_op {
 public:
  template <typename G>
  explicit loop_op_impl(G&& f) : f_(std::forward<G>(f)) {}
  void run() override { std::move(f_)(); }

 private:
  F f_;
};

/// One entry of the loop's queues: a coroutine to resume or a function to run.
struct loop_item {
  std::coroutine_handle<> coroutine;
  loop_op* op = nullptr;  // owned by the queue until run
};

struct remote_queue;  // moodycamel queue, kept out of this header

}  // namespace detail

class run_loop : public asio::execution_context {
 public:
  template <bool Tracked>
  class basic_executor;
  /// The executor handed to Asio operations. Tracked copies (what Asio takes
  /// with outstanding_work.tracked) keep run() from returning.
  using executor_type = basic_executor<false>;

  struct options {
    backoff_policy backoff{};
  };

  run_loop() : run_loop(options{}) {}
  explicit run_loop(options opts);
  run_loop(const run_loop&) = delete;
  run_loop& operator=(const run_loop&) = delete;
  /// Destroys queued work without running it (as io_context does), and the
  /// attached reactor's waits that would complete here (see
  /// completion_reactor::abandon).
  ~run_loop();

  executor_type get_executor() noexcept;

  /// Polls `reactor` whenever nothing is ready, and sleeps on it: its
  /// completions and kicks wake this loop. Either may be destroyed first: the
  /// one destroyed first detaches them (not while the other is being
  /// destroyed on another thread). One reactor per loop, one loop per reactor.
  void attach(completion_reactor& reactor);
  void detach() noexcept;

  /// Runs work until stop() is called or no work is left (queues empty and no
  /// tracked executor outstanding). Returns the number of items run.
  std::size_t run();
  /// Runs what is ready now, without waiting. Returns the number run.
  std::size_t poll();
  void stop() noexcept;
  bool stopped() const noexcept { return stopped_.load(std::memory_order_acquire); }
  /// Clears the stopped state so that run() may be called again.
  void restart() noexcept { stopped_.store(false, std::memory_order_release); }

  bool running_in_this_thread() const noexcept { return current_ == this; }

  /// Queues a coroutine for resumption. From the loop's thread: no lock, no
  /// allocation. From another thread: lock-free, and wakes the loop if idle.
  void schedule(std::coroutine_handle<> h);

  /// Awaitable: moves the awaiting coroutine onto this loop (from any thread).
  auto schedule() noexcept {
    struct awaiter {
      run_loop* loop;
      bool await_ready() const noexcept { return false; }
      void await_suspend(std::coroutine_handle<> h) { loop->schedule(h); }
      void await_resume() const noexcept {}
    };
    return awaiter{this};
  }

  /// Awaitable for the loop's own thread: lets everything else that is ready
  /// run once, then continues. When the next ready item is a coroutine the
  /// switch is a symmetric transfer to it; when nothing else is ready it does
  /// not suspend at all.
  auto yield() noexcept {
    struct awaiter {
      run_loop* loop;
      bool await_ready() const noexcept { return loop->local_.empty(); }
      std::coroutine_handle<> await_suspend(std::coroutine_handle<> h) {
        loop->local_.push_back({h, nullptr});
        if (loop->local_.front().op == nullptr) {
          auto next = loop->local_.front().coroutine;
          loop->local_.pop_front();
          return next;
        }
        return std::noop_coroutine();  // run() takes the function next
      }
      void await_resume() const noexcept {}
    };
    return awaiter{this};
  }

  /// Number of functions and coroutines queued (approximate when called off
  /// the loop's thread).
  std::size_t queued() const noexcept;

 private:
  template <bool>
  friend class basic_executor;
  friend class completion_reactor;

  template <typename F>
  void post_function(F&& f) {
    using op = detail::loop_op_impl<std::decay_t<F>>;
    push({std::coroutine_handle<>{}, new op(std::forward<F>(f))});
  }
  void push(detail::loop_item item);
  void run_item(detail::loop_item item);
  std::size_t drain_remote();
  void work_started() noexcept { work_.fetch_add(1, std::memory_order_relaxed); }
  void work_finished() noexcept;
  void wake() { idle_.wake(); }
  void idle_wait(backoff& state);

  static thread_local run_loop* current_;

  options options_;
  std::deque<detail::loop_item> local_;
  std::unique_ptr<detail::remote_queue> remote_;
  std::atomic<long> work_{0};
  std::atomic<bool> stopped_{false};
  detail::idle_waiter idle_;
  completion_reactor* reactor_ = nullptr;
};

template <bool Tracked>
class run_loop::basic_executor {
 public:
  explicit basic_executor(run_loop& loop) noexcept : loop_(&loop) {
    if constexpr (Tracked) loop_->work_started();
  }
  basic_executor(const basic_executor& other) noexcept : loop_(other.loop_) {
    if constexpr (Tracked) loop_->work_started();
  }
  // A moved-from tracked executor no longer counts as work (as Asio's
  // io_context executors do), so moving a work guard releases it exactly once.
  basic_executor(basic_executor&& other) noexcept : loop_(other.loop_) {
    if constexpr (Tracked) other.loop_ = nullptr;
  }
  basic_executor& operator=(const basic_executor& other) noexcept {
    basic_executor copy(other);
    std::swap(loop_, copy.loop_);
    return *this;
  }
  basic_executor& operator=(basic_executor&& other) noexcept {
    basic_executor taken(std::move(other));
    std::swap(loop_, taken.loop_);
    return *this;
  }
  ~basic_executor() {
    if constexpr (Tracked) {
      if (loop_ != nullptr) loop_->work_finished();
    }
  }

  run_loop& query(asio::execution::context_t) const noexcept { return *loop_; }
  static constexpr asio::execution::blocking_t query(asio::execution::blocking_t) noexcept {
    return asio::execution::blocking.never;
  }
  static constexpr asio::execution::outstanding_work_t query(
      asio::execution::outstanding_work_t) noexcept {
    if constexpr (Tracked) {
      return asio::execution::outstanding_work.tracked;
    } else {
      return asio::execution::outstanding_work.untracked;
    }
  }

  basic_executor require(asio::execution::blocking_t::never_t) const noexcept { return *this; }
  basic_executor<true> require(asio::execution::outstanding_work_t::tracked_t) const noexcept {
    return basic_executor<true>(*loop_);
  }
  basic_executor<false> require(asio::execution::outstanding_work_t::untracked_t) const noexcept {
    return basic_executor<false>(*loop_);
  }

  /// Never runs `f` inline: completions are always delivered through the queue.
  template <typename F>
  void execute(F&& f) const {
    loop_->post_function(std::forward<F>(f));
  }

  bool running_in_this_thread() const noexcept { return loop_->running_in_this_thread(); }
  run_loop& context() const noexcept { return *loop_; }

  friend bool operator==(const basic_executor& a, const basic_executor& b) noexcept {
    return a.loop_ == b.loop_;
  }
  friend bool operator!=(const basic_executor& a, const basic_executor& b) noexcept {
    return a.loop_ != b.loop_;
  }

 private:
  run_loop* loop_;
};

inline run_loop::executor_type run_loop::get_executor() noexcept { return executor_type(*this); }

}  // namespace cobatch::coro
