// ubatch_scheduler: runs the N micro-batches of a step as coroutines
// interleaved on one thread, so that one micro-batch's communication overlaps
// another's compute without threads or barriers (vLLM's dual-batch overlap
// for N = 2, any N >= 1 here).
//
//   engine::ubatch_scheduler scheduler(device, pool);
//   std::vector<float> out = co_await scheduler.run(plan,
//       [&](engine::ubatch_context& ctx) -> coro::task<float> {
//         enqueue_attention(ctx.slice(), ctx.current_stream());
//         co_await ctx.switch_to_comm();
//         enqueue_all_to_all(ctx.current_stream());
//         co_await ctx.switch_to_compute();
//         ...
//         co_return partial;
//       });
//
// Outputs come back in micro-batch order. A micro-batch that throws cancels
// the others at their next switch; run() then waits for the streams (work
// already enqueued may still use the step's buffers) and throws
// ubatch_error naming it. It never hangs on a failure: micro-batches not
// yet started are not started, parked ones are resumed into the cancellation.
#pragma once

#include <cobatch/coro/shield.hpp>
#include <cobatch/coro/spawn.hpp>
#include <cobatch/coro/task.hpp>
#include <cobatch/coro/detail/driver.hpp>
#include <cobatch/engine/ubatch/detail/ubatch_step.hpp>
#include <cobatch/engine/ubatch/ubatch_context.hpp>
#include <cobatch/engine/ubatch/ubatch_slicing.hpp>
#include <cobatch/gpu/device.hpp>
#include <cobatch/gpu/event.hpp>
#include <cobatch/gpu/stream_pool.hpp>

#include <atomic>
#include <concepts>
#include <coroutine>
#include <cstdint>
#include <deque>
#include <optional>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace cobatch::engine {

class timeline;

/// Which streams the micro-batches of a step use.
enum class stream_assignment : std::uint8_t {
  /// All use the pool's compute stream 0 and comm stream 0: the order in which
  /// the interleaving enqueues work is the order it runs (dual-batch overlap).
  shared,
  /// Micro-batch i uses compute stream i and comm stream i (modulo the pool):
  /// their compute may also run concurrently on the device.
  per_ubatch,
  /// Each micro-batch, in turn order, gets the least-loaded stream of each
  /// role (gpu::stream_pool::least_loaded), counting what the micro-batches
  /// before it in this step were given; when the step returns, each stream it
  /// used is charged the step's tokens there (the plan's padded tokens per
  /// micro-batch, 1 without a plan) until the work enqueued so far on it is
  /// done. Work of other schedulers or steps sharing the pool steers it too.
  least_loaded,
};

struct ubatch_scheduler_options {
  stream_assignment streams = stream_assignment::shared;
};

/// Per-step options of run().
struct ubatch_run_options {
  /// The order in which micro-batches take turns: a permutation of
  /// 0 .. count-1 (empty: 0, 1, ..., count-1). Turn order is also the order in
  /// which their work reaches a shared stream, so putting decode micro-batches
  /// first (ubatch_order.hpp: decode_first_order) lets their short kernels run
  /// ahead of long prefill ones. Outputs stay in micro-batch order.
  std::span<const std::int32_t> turn_order{};
};

namespace detail {
template <class F>
using ubatch_task_t = std::invoke_result_t<F&, ubatch_context&>;

template <class T>
struct is_task : std::false_type {};
template <class T>
struct is_task<coro::task<T>> : std::true_type {};
}  // namespace detail

/// A micro-batch function: called with its context, returns coro::task<R>.
template <class F>
concept ubatch_function = std::invocable<F&, ubatch_context&> && detail::is_task<detail::ubatch_task_t<F>>::value;

/// R of a micro-batch function returning task<R>.
template <class F>
using ubatch_value_t = typename detail::ubatch_task_t<F>::value_type;

/// What run() gives back: the outputs in micro-batch order, or nothing.
template <class F>
using ubatch_outputs_t = std::conditional_t<std::is_void_v<ubatch_value_t<F>>, void, std::vector<ubatch_value_t<F>>>;

/// Runs micro-batched steps on a device's streams.
///
/// Threads: one step at a time; run() while a step runs (from another
/// coroutine or thread) throws engine_error(invalid_argument). Lifetime: the
/// scheduler outlives its steps, its device and pool outlive it; graphs
/// captured from its streams may outlive it. docs/lifetimes.md.
class ubatch_scheduler {
 public:
  /// Streams come from `pool` (compute and communication roles, with their
  /// priorities); events from `device`. Both must outlive the scheduler.
  ubatch_scheduler(gpu::device& device, gpu::stream_pool& pool, ubatch_scheduler_options options = {});
  ubatch_scheduler(const ubatch_scheduler&) = delete;
  ubatch_scheduler& operator=(const ubatch_scheduler&) = delete;
  ~ubatch_scheduler();

  /// Records spans of the following steps into `trace`; nullptr (the
  /// default) turns tracing off. `trace` must outlive the steps.
  void set_timeline(timeline* trace) noexcept { trace_ = trace; }
  timeline* trace() const noexcept { return trace_; }

  /// The streams of micro-batch `ubatch` (with least_loaded: in the step
  /// running now, or the last one).
  gpu::stream_ref compute_stream(std::int32_t ubatch) const noexcept;
  gpu::stream_ref comm_stream(std::int32_t ubatch) const noexcept;

  /// Runs `fn` for micro-batches 0 .. count-1, interleaved at their switch
  /// points, on the awaiting coroutine's executor. When it returns, the work
  /// the step enqueued on the comm streams is ordered (on the device) before
  /// later work on the compute streams, so awaiting the compute streams
  /// awaits the whole step.
  ///
  /// Throws engine_error (errc::invalid_argument) for count < 1, while
  /// another step of this scheduler runs, or for a turn order that is not a
  /// permutation of the micro-batches; ubatch_error when a
  /// micro-batch failed; std::system_error (operation_aborted) when the
  /// awaiting coroutine's cancellation slot fired (terminal, partial, total).
  template <ubatch_function F>
  coro::task<ubatch_outputs_t<F>> run(std::int32_t count, F fn, ubatch_run_options options = {}) {
    return run_impl<F>(count, nullptr, std::move(fn), options);
  }
  /// As above with one micro-batch per entry of `plan`; ctx.slice() is the
  /// micro-batch's slice. `plan` (and options.turn_order) must outlive the step.
  template <ubatch_function F>
  coro::task<ubatch_outputs_t<F>> run(const ubatch_plan& plan, F fn, ubatch_run_options options = {}) {
    return run_impl<F>(plan.size(), &plan, std::move(fn), options);
  }

  /// run() as an Asio initiating function: the micro-batches run on
  /// `executor` (the thread that owns the step; a coro::run_loop's executor
  /// with the device's reactor attached).
  ///
  /// Completion signature: `void(std::exception_ptr, std::vector<R>)` for
  /// micro-batch functions returning task<R>, `void(std::exception_ptr)` for
  /// task<void>; the exception is what run() throws (ubatch_error naming the
  /// micro-batch that failed, engine_error for bad arguments). The step starts
  /// by a post to `executor`, never inline. Cancellation: terminal, partial
  /// and total, through the completion handler's slot: micro-batches stop at
  /// their next switch, the streams are waited for, and the completion
  /// carries std::system_error (operation_aborted). `plan` and the scheduler
  /// must outlive the operation.
  template <ubatch_function F, class Executor, class Token>
  auto async_run(const Executor& executor, const ubatch_plan& plan, F fn, Token&& token) {
    return coro::spawn(executor, run(plan, std::move(fn)), std::forward<Token>(token));
  }
  /// As above with `count` micro-batches and no plan.
  template <ubatch_function F, class Executor, class Token>
  auto async_run(const Executor& executor, std::int32_t count, F fn, Token&& token) {
    return coro::spawn(executor, run(count, std::move(fn)), std::forward<Token>(token));
  }

 private:
  // A deque element that builds a context in place: the context's
  // constructor is private to the scheduler.
  struct context_slot {
    ubatch_context ctx;
    template <class... A>
    explicit context_slot(A&&... a) noexcept : ctx(std::forward<A>(a)...) {}
  };

  struct step_guard {
    ubatch_scheduler* self;
    ~step_guard() { self->running_.store(false, std::memory_order_release); }
  };

  // Micro-batch ctx.index()'s driver: it reports to the step (ubatch_step
  // is its driver_owner) when fn's task returns or throws.
  template <class F, class Out>
  static coro::detail::driver run_one(F& fn, ubatch_context& ctx, Out& out) {
    ctx.begin_trace();
    if constexpr (std::is_void_v<ubatch_value_t<F>>) {
      co_await fn(ctx);
    } else {
      out.emplace(co_await fn(ctx));
    }
    ctx.end_trace();
  }

  struct step_awaiter {
    detail::ubatch_step& step;
    std::vector<coro::detail::driver>& runners;
    bool await_ready() const noexcept { return false; }
    template <class P>
    std::coroutine_handle<> await_suspend(std::coroutine_handle<P> parent) {
      asio::any_io_executor ex;
      asio::cancellation_slot slot;
      coro::detail::chain_root* chain = nullptr;
      if constexpr (coro::detail::has_promise_context<P>) {
        ex = parent.promise().executor();
        slot = parent.promise().cancellation_slot();
        chain = parent.promise().chain();
      }
      for (std::size_t i = 0; i < runners.size(); ++i) runners[i].bind(step, i, ex, step.slot(), chain);
      step.set_chain(chain);
      return step.start(parent, std::move(ex), slot);
    }
    void await_resume() const noexcept {}
  };

  template <class F>
  coro::task<ubatch_outputs_t<F>> run_impl(std::int32_t count, const ubatch_plan* plan, F fn,
                                           ubatch_run_options options) {
    using value_type = ubatch_value_t<F>;
    using slot_type = std::conditional_t<std::is_void_v<value_type>, std::optional<std::monostate>,
                                         std::optional<value_type>>;
    begin_step(count, plan, options);
    step_guard guard{this};
    detail::ubatch_step step(count, trace_);
    if (!options.turn_order.empty()) step.set_order(order_);
    std::vector<slot_type> outputs(static_cast<std::size_t>(count));
    std::deque<context_slot> contexts;
    std::vector<coro::detail::driver> runners;
    runners.reserve(static_cast<std::size_t>(count));
    std::vector<ubatch> slices;
    if (plan != nullptr) {
      slices.reserve(static_cast<std::size_t>(count));
      for (std::int32_t i = 0; i < count; ++i) slices.push_back((*plan)[i]);
    }
    for (std::int32_t i = 0; i < count; ++i) {
      contexts.emplace_back(step, i, compute_stream(i), comm_stream(i), compute_done_[i].ref(),
                            comm_done_[i].ref(), plan != nullptr ? &slices[i] : nullptr, trace_,
                            compute_lane(i), comm_lane(i));
      runners.push_back(run_one(fn, contexts.back().ctx, outputs[i]));
      step.set_runner(i, runners.back().handle());
    }
    co_await step_awaiter{step, runners};
    if (step.failed()) {
      // Shielded: the step must not complete while its enqueued work can
      // still touch the caller's buffers, whatever the caller cancels now.
      co_await coro::shield(drain(count));
      step.rethrow_if_failed();
    }
    join_streams(count);
    if constexpr (!std::is_void_v<value_type>) {
      std::vector<value_type> result;
      result.reserve(outputs.size());
      for (auto& o : outputs) result.push_back(std::move(*o));
      co_return result;
    }
  }

  void begin_step(std::int32_t count, const ubatch_plan* plan, const ubatch_run_options& options);
  void assign_least_loaded(std::int32_t count, const ubatch_plan* plan);
  std::size_t stream_slot(gpu::stream_role role, std::int32_t ubatch) const noexcept;
  void join_streams(std::int32_t count);
  coro::task<void> drain(std::int32_t count);
  const std::string& compute_lane(std::int32_t i) const noexcept;
  const std::string& comm_lane(std::int32_t i) const noexcept;

  gpu::device* device_;
  gpu::stream_pool* pool_;
  ubatch_scheduler_options options_;
  timeline* trace_ = nullptr;
  // Taken with an exchange, so that run() from a second thread while a step
  // runs fails with errc::invalid_argument instead of racing on the events.
  std::atomic<bool> running_{false};
  std::vector<gpu::event> compute_done_;
  std::vector<gpu::event> comm_done_;
  std::vector<std::string> compute_lanes_;
  std::vector<std::string> comm_lanes_;
  std::vector<std::int32_t> order_;
  // least_loaded: this step's stream index per micro-batch, and its weight.
  std::vector<std::size_t> compute_assigned_;
  std::vector<std::size_t> comm_assigned_;
  std::vector<std::uint64_t> weights_;
};

}  // namespace cobatch::engine
