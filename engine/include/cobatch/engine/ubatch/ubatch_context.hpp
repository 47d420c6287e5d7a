// ubatch_context: what one micro-batch's coroutine sees of its step: which
// micro-batch it is, its streams, and the switch points at which it hands the
// thread to the next micro-batch.
//
// The switch points are vLLM's (ubatching.py), done as coroutine switches on
// one thread instead of thread hand-offs:
//
//   co_await ctx.yield();              // hand over; streams untouched
//   co_await ctx.switch_to_comm();     // comm stream waits (on the device) for
//                                      // this micro-batch's compute, hand over
//   co_await ctx.switch_to_compute();  // compute stream waits for its comm,
//                                      // hand over
//
// Micro-batches run in turn, 0, 1, ..., N-1, 0, ...: each runs from one switch
// to its next while the others stay parked, so only one touches the host
// state at a time and the order in which work reaches each stream is the
// schedule's, whatever the timing. A micro-batch that awaits something else
// (an event, a timer) keeps its turn while it waits.
#pragma once

#include <cobatch/coro/task.hpp>
#include <cobatch/engine/ubatch/detail/ubatch_step.hpp>
#include <cobatch/engine/ubatch/switch_kind.hpp>
#include <cobatch/engine/ubatch/ubatch_slicing.hpp>
#include <cobatch/gpu/event.hpp>
#include <cobatch/gpu/stream.hpp>
#include <cobatch/gpu/stream_pool.hpp>

#include <concepts>
#include <coroutine>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

namespace cobatch::engine {

class timeline;
class ubatch_scheduler;

namespace detail {
// A hook given as a callable runs as a task like any other hook. The callable
// is a parameter of this coroutine, so it lives in the frame as long as the
// task: a coroutine lambda's captures stay where its task reads them.
template <class F>
coro::task<void> call_as_task(F f) {
  if constexpr (std::is_same_v<std::invoke_result_t<F&>, coro::task<void>>) {
    co_await f();
  } else {
    f();
  }
}
}  // namespace detail

class ubatch_context {
 public:
  /// The awaitable of a switch point. Resuming throws std::system_error
  /// (asio::error::operation_aborted) when the step was cancelled meanwhile:
  /// a sibling failed or the caller cancelled; let it propagate.
  class [[nodiscard]] switch_awaiter {
   public:
    bool await_ready() const noexcept { return false; }
    std::coroutine_handle<> await_suspend(std::coroutine_handle<> h) noexcept {
      return ctx_->step_->suspend_at_switch(ctx_->index_, h, kind_);
    }
    void await_resume() {
      ctx_->step_->resume_from_switch(ctx_->index_);
      ctx_->join_after_switch(kind_);
      if (ctx_->trace_ != nullptr) ctx_->open_span();
    }

   private:
    friend class ubatch_context;
    switch_awaiter(ubatch_context* ctx, switch_kind kind) noexcept : ctx_(ctx), kind_(kind) {}
    ubatch_context* ctx_;
    switch_kind kind_;
  };

  ubatch_context(const ubatch_context&) = delete;
  ubatch_context& operator=(const ubatch_context&) = delete;

  /// This micro-batch's index, 0 <= index() < count().
  std::int32_t index() const noexcept { return index_; }
  std::int32_t count() const noexcept { return step_->count(); }
  /// Switches passed so far.
  std::int32_t switches() const noexcept { return step_->switches(index_); }

  /// This micro-batch's slice of the plan the step was run with. Throws
  /// engine_error (errc::invalid_argument) for a step run without a plan.
  const ubatch& slice() const;
  bool has_slice() const noexcept { return slice_ != nullptr; }

  gpu::stream_ref compute_stream() const noexcept { return compute_; }
  gpu::stream_ref comm_stream() const noexcept { return comm_; }
  /// The stream this micro-batch's work goes to now: compute until
  /// switch_to_comm(), comm until switch_to_compute(), and so on.
  gpu::stream_ref current_stream() const noexcept { return role_ == gpu::stream_role::compute ? compute_ : comm_; }
  gpu::stream_role current_role() const noexcept { return role_; }

  /// Hands the thread to the next micro-batch.
  switch_awaiter yield() {
    if (trace_ != nullptr) close_span();
    return {this, switch_kind::yield};
  }

  /// Orders the comm stream after this micro-batch's compute so far (an event
  /// recorded on the compute stream, waited on by the comm stream: a device
  /// join that blocks no thread), makes comm the current stream, and hands
  /// over. The event is recorded before the hand-over and waited on after it,
  /// just before this micro-batch's own comm work: waiting at once would put
  /// the join ahead of the work the other micro-batches enqueue on the shared
  /// comm stream meanwhile, and hold that work back behind this compute.
  /// Throws engine_error (errc::invalid_argument) when comm is already the
  /// current stream, which is a schedule bug.
  switch_awaiter switch_to_comm();
  /// The mirror image: compute waits for the comm stream's work so far.
  switch_awaiter switch_to_compute();

  /// Runs `hook` when the next micro-batch reaches its next switch (or
  /// finishes), before it hands over: where vLLM waits for an all-to-all's
  /// receive, so that the other micro-batch's work is enqueued first. `hook`
  /// is a coro::task<void> or a callable returning void or a task<void>.
  /// A hook that throws fails this micro-batch (the one that registered it).
  void on_next_switch(coro::task<void> hook) { step_->add_hook(index_, std::move(hook)); }
  template <class F>
    requires std::invocable<F&>
  void on_next_switch(F hook) {
    step_->add_hook(index_, detail::call_as_task(std::move(hook)));
  }

  /// Names the device span that the next switch closes (the timeline's
  /// label); free when the step has no timeline.
  void label(std::string_view name);

 private:
  // Only a scheduler makes contexts, one per micro-batch of a step it runs;
  // `slice` is null for a step run without a plan.
  friend class ubatch_scheduler;
  ubatch_context(detail::ubatch_step& step, std::int32_t index, gpu::stream_ref compute, gpu::stream_ref comm,
                 gpu::event_ref compute_done, gpu::event_ref comm_done, const ubatch* slice,
                 timeline* trace, std::string_view compute_lane, std::string_view comm_lane) noexcept
      : step_(&step),
        index_(index),
        compute_(compute),
        comm_(comm),
        compute_done_(compute_done),
        comm_done_(comm_done),
        slice_(slice),
        trace_(trace),
        compute_lane_(compute_lane),
        comm_lane_(comm_lane) {}

  // The scheduler opens the first device span and closes the last.
  void begin_trace() { open_span(); }
  void end_trace() { close_span(); }

  // A device span opens when the micro-batch resumes, not when it switches:
  // on a shared stream the other micro-batches' work comes in between.
  void open_span();
  void close_span();
  switch_awaiter switch_stream(gpu::stream_role to, gpu::stream_ref from, gpu::event_ref done, switch_kind kind);
  void join_after_switch(switch_kind kind) {
    if (kind == switch_kind::to_comm) {
      comm_.wait(compute_done_);
    } else if (kind == switch_kind::to_compute) {
      compute_.wait(comm_done_);
    }
  }

  detail::ubatch_step* step_;
  std::int32_t index_;
  gpu::stream_ref compute_;
  gpu::stream_ref comm_;
  gpu::event_ref compute_done_;
  gpu::event_ref comm_done_;
  const ubatch* slice_;
  gpu::stream_role role_ = gpu::stream_role::compute;
  timeline* trace_;
  std::string_view compute_lane_;
  std::string_view comm_lane_;
  std::optional<std::size_t> open_span_;
  std::string label_;
};

}  // namespace cobatch::engine
