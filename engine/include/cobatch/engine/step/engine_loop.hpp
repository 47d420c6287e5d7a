// engine_loop: the serving loop, from requests to tokens. The API a server
// builds on:
//
//   coro::run_loop loop;                              // the engine's thread
//   coro::completion_reactor reactor(loop.get_executor());
//   loop.attach(reactor);
//   gpu::host::host_device device(reactor);
//   my_model model(...);                              // a step_model
//   engine::engine_rank rank{&device, &model};
//   engine::engine_loop engine(loop.get_executor(), {&rank, 1}, options);
//   engine.async_run([](std::exception_ptr) {});     // the loop, until stop()
//   std::thread t([&] { loop.run(); });
//
//   // from any thread, e.g. an HTTP handler's coroutine on an io_context:
//   engine::request_stream s = engine.submit({.prompt = ids, .max_tokens = 64,
//                                             .sampling = {.temperature = 0.7f, .top_p = 0.9f, .seed = 1},
//                                             .stop_tokens = {eos}});
//   for (;;) {
//     auto [ec, chunk] = co_await s.async_next(asio::as_tuple(asio::use_awaitable));
//     if (ec) break;                                  // eof after the last chunk
//     send(chunk.tokens);                             // one or more new tokens
//     if (chunk.last()) break;                        // chunk.finish says why
//   }
//   s.cancel();                                       // client gone: pages freed at the next step
//   engine::engine_gauges g = engine.gauges();        // queue depth, running, KV pages, step time
//   engine.stop();                                    // every open request ends as cancelled
//
// submit(), cancel(), gauges() and stop() are thread-safe. Token chunks are
// delivered to each waiter's associated executor. A request always ends with
// exactly one last chunk: length, stop, cancelled, refused (bad input: the
// error says which field; or more KV pages than the pool holds) or failed.
//
// Inside, each iteration plans step k+1 (admission, chunked prefill within
// the tuner's token budget, preemption, micro-batches, graph routes), launches
// it on every rank, and only then waits for step k's tokens, hands them to
// their streams and feeds the step time to the tuner: the device runs step
// k+1 while the host delivers step k (step_overlap::sequential turns that
// off, for comparison). See docs/engine_step.md.
#pragma once

#include <cobatch/coro/spawn.hpp>
#include <cobatch/coro/task.hpp>
#include <cobatch/engine/step/batch_size_tuner.hpp>
#include <cobatch/engine/step/request.hpp>
#include <cobatch/engine/step/request_stream.hpp>
#include <cobatch/engine/step/step_model.hpp>
#include <cobatch/engine/step/step_plan.hpp>
#include <cobatch/engine/step/step_planner.hpp>
#include <cobatch/engine/step/step_runner.hpp>
#include <cobatch/gpu/device.hpp>

#include <asio/any_io_executor.hpp>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <system_error>
#include <unordered_map>
#include <vector>

namespace cobatch::coro {
class async_event;
}

namespace cobatch::engine {

class timeline;

/// One rank of the engine: a device and the model's shard on it. With
/// several ranks (decode-context parallelism), rank i is element i.
struct engine_rank {
  gpu::device* device = nullptr;
  step_model* model = nullptr;
};

/// Whether step k+1 is planned and launched before step k's tokens are awaited.
enum class step_overlap : std::uint8_t { overlapped, sequential };

struct engine_options {
  /// Admission, pages, micro-batches. limits come from the model when left 0;
  /// dcp_world is the number of ranks.
  planner_options planner{};
  /// Token budget per step: the tuner's when unset.
  std::optional<std::int32_t> fixed_budget{};
  tuner_options tuner{};
  /// Graphs for micro-batches up to this many tokens (capture ladder); 0: eager only.
  std::uint32_t graph_max_tokens = 512;
  step_overlap overlap = step_overlap::overlapped;
  /// Keep the sampled rows' logits (step_report::logits).
  bool keep_logits = false;
};

/// Point-in-time figures, safe to read from any thread.
struct engine_gauges {
  std::int32_t waiting = 0;   ///< queue depth: submitted, not running
  std::int32_t running = 0;
  std::int32_t kv_pages_in_use = 0;
  std::int32_t kv_pages_total = 0;
  std::int32_t token_budget = 0;      ///< of the last step
  double last_step_device_us = 0.0;   ///< device time of the last collected step
  double last_step_host_us = 0.0;     ///< host time planning and launching it
  std::uint64_t steps = 0;
  std::uint64_t tokens_generated = 0;
  std::uint64_t preemptions = 0;
  std::uint64_t finished = 0;
  std::uint64_t refused = 0;
  std::uint64_t failed_steps = 0;
};

/// What on_step observers see of each collected step (on the loop's thread).
struct step_report {
  const step_plan* plan = nullptr;
  step_outputs outputs;              ///< rank 0's
  std::chrono::nanoseconds host_plan{0};
  std::chrono::nanoseconds host_launch{0};
  /// Device idle time before this step began (since the previous step ended).
  std::chrono::nanoseconds device_gap{0};
  /// CPU time of the loop's thread spent on this step: planning, launching,
  /// and handling its outputs (waiting for the device not included).
  std::chrono::nanoseconds host_cpu{0};
};

class engine_loop {
 public:
  /// `executor` runs the loop and the runners; it must be the executor that
  /// the devices' reactor delivers to (a coro::run_loop with the reactor
  /// attached). Throws engine_error naming a bad option or rank.
  engine_loop(asio::any_io_executor executor, std::span<const engine_rank> ranks, engine_options options);
  engine_loop(const engine_loop&) = delete;
  engine_loop& operator=(const engine_loop&) = delete;
  ~engine_loop();

  /// Queues a request (any thread). Bad input is not thrown: the stream's
  /// only chunk says refused, with the error.
  request_stream submit(generation_request request);
  /// Ends request `id` as cancelled (any thread); unknown ids are ignored.
  void cancel(request_id id);
  engine_gauges gauges() const;
  /// Ends the loop (any thread): open requests end as cancelled, the step in
  /// flight is waited for, then run() returns.
  void stop();

  /// The loop. Returns after stop(); throws only what the engine cannot
  /// recover from (a failed step is reported, its requests retried).
  coro::task<void> run();
  /// run() as an initiating function. Completion signature:
  /// `void(std::exception_ptr)`. Cancellation: none (use stop()).
  template <class Token>
  auto async_run(Token&& token) {
    return coro::spawn(executor_, run(), std::forward<Token>(token));
  }

  /// Called on the loop's thread for each collected step.
  void on_step(std::function<void(const step_report&)> observer) { observer_ = std::move(observer); }
  /// The last step failure, empty when none.
  std::string last_error() const;
  /// Spans of the following steps go to `trace` (rank 0), null: off.
  void set_timeline(timeline* trace);
  step_runner& runner(std::size_t rank) { return *runners_.at(rank); }
  const step_planner& planner() const noexcept { return *planner_; }
  const batch_size_tuner& tuner() const noexcept { return tuner_; }

 private:
  struct command {
    enum class kind : std::uint8_t { submit, cancel } what;
    request_id id;
    generation_request request;
    std::shared_ptr<detail::request_channel> channel;
  };
  struct in_flight {
    step_plan* plan = nullptr;
    std::vector<step_ticket> tickets;
    std::chrono::nanoseconds host_plan{0};
    std::chrono::nanoseconds host_launch{0};
    std::chrono::nanoseconds host_cpu{0};
  };

  void drain_commands();
  void deliver(step_updates& updates);
  void publish_gauges();
  coro::task<bool> launch(step_plan& plan, in_flight& f);
  coro::task<bool> collect(in_flight& f);
  coro::task<void> recover(in_flight* older, in_flight* newer);

  asio::any_io_executor executor_;
  engine_options options_;
  std::vector<engine_rank> ranks_;
  std::unique_ptr<step_planner> planner_;
  batch_size_tuner tuner_;
  std::vector<std::unique_ptr<step_runner>> runners_;
  std::unique_ptr<coro::async_event> wake_;
  std::array<step_plan, 2> plans_;
  std::uint64_t plan_cursor_ = 0;
  step_updates updates_;
  std::unordered_map<request_id, std::shared_ptr<detail::request_channel>> channels_;
  std::function<void(const step_report&)> observer_;
  std::chrono::steady_clock::time_point last_device_end_{};
  std::string last_failure_;

  mutable std::mutex mutex_;  // guards the members below
  std::vector<command> commands_;
  std::vector<command> taken_;
  std::atomic<request_id> next_id_{1};
  bool stopping_ = false;
  engine_gauges gauges_;
  std::string last_error_;
};

}  // namespace cobatch::engine
