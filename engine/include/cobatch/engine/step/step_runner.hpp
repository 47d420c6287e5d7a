// step_runner: runs planned steps on one rank's device.
//
// A step, as the device sees it, on the compute stream:
//
//   [start mark] [copy-in: one host->device copy of the inputs staged in
//   pinned host memory into the persistent buffers (device memory), padding
//   zeroed; a kernel resolving token references from the previous step's
//   sampled tokens, on the device]
//   micro-batch 0 and 1, interleaved by ubatch_scheduler: per graph stage a
//   replay (captured on first use) or eager work, eager stages (attention),
//   and collectives on the communication stream between switch points
//   [copy-out: device->host copies of the sampled tokens (and logits) into
//   the step's pinned host slot] [end mark]
//
// launch() returns once all of that is enqueued, without waiting for the
// device; collect() waits for the step's outputs. A serving loop launches
// step k+1 before it collects step k, so the device goes from one step to the
// next without waiting for the host (step k+1 reads step k's sampled tokens
// on the device: token_ref in the plan).
//
// Not synchronized: one loop drives a runner, at most `ring` steps in flight.
#pragma once

#include <cobatch/coro/spawn.hpp>
#include <cobatch/coro/task.hpp>
#include <cobatch/engine/dispatch/graph_cache.hpp>
#include <cobatch/engine/dispatch/persistent_inputs.hpp>
#include <cobatch/engine/step/step_model.hpp>
#include <cobatch/engine/step/step_plan.hpp>
#include <cobatch/engine/ubatch/ubatch_scheduler.hpp>
#include <cobatch/gpu/device.hpp>
#include <cobatch/gpu/device_memory.hpp>
#include <cobatch/gpu/event.hpp>
#include <cobatch/gpu/graph.hpp>
#include <cobatch/gpu/stream_pool.hpp>

#include <asio/any_io_executor.hpp>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace cobatch::engine {

class timeline;

struct runner_options {
  std::int32_t max_tokens = 2048;   ///< tokens per micro-batch (buffer rows), >= the ladder's top rung
  std::int32_t max_reqs = 256;      ///< requests per step
  std::int32_t max_pages = 0;       ///< KV page ids one micro-batch may list (the pool's pages)
  std::int32_t max_ubatches = 2;
  /// Copy each sampled row's logits back too (tests compare them).
  bool keep_logits = false;
  std::int32_t dcp_rank = 0;
  std::int32_t dcp_world = 1;
  graph_cache_options graphs{};
  address_check check = address_check::off;
  /// Steps in flight at once (launched, not collected), >= 1.
  std::int32_t ring = 2;
};

/// A launched step, to collect.
struct step_ticket {
  std::uint64_t step = 0;
  std::int32_t ring_slot = -1;
};

/// A collected step. The spans stay valid until the ring slot is reused
/// (`ring` launches later).
struct step_outputs {
  std::uint64_t step = 0;
  std::span<const std::int32_t> sampled;  ///< by step slot
  std::span<const float> logits;          ///< [slot x vocab] when kept
  /// When the device began and finished the step (stream marks).
  std::chrono::steady_clock::time_point device_begin{};
  std::chrono::steady_clock::time_point device_end{};
  std::chrono::nanoseconds device_time() const noexcept { return device_end - device_begin; }
};

struct runner_stats {
  std::uint64_t steps = 0;
  std::uint64_t graph_replays = 0;   ///< micro-batches that replayed a graph
  std::uint64_t graph_captures = 0;  ///< graphs captured on first use
  std::uint64_t eager_runs = 0;      ///< micro-batches run eagerly
  std::uint64_t failures = 0;
};

/// Graphs of one micro-batch slot at one padded size: one per graph stage
/// (empty for the others).
struct segment_graphs {
  std::vector<gpu::graph_exec> stages;
  capture_record inputs;
};

class step_runner {
 public:
  /// Throws engine_error naming a bad option. `device`, `model` outlive it;
  /// the model's slots are bound here.
  step_runner(asio::any_io_executor executor, gpu::device& device, step_model& model, runner_options options);
  step_runner(const step_runner&) = delete;
  step_runner& operator=(const step_runner&) = delete;
  ~step_runner();

  /// Enqueues step `plan` (see the file comment); `plan` must stay
  /// unchanged until the step is collected. Throws engine_error
  /// (invalid_argument) when the ring is full or the plan exceeds the
  /// buffers; ubatch_error when a micro-batch failed while enqueueing
  /// (its siblings were cancelled, the streams drained).
  coro::task<step_ticket> launch(const step_plan& plan);
  /// Waits for a launched step's outputs. Throws engine_error
  /// (ubatch_failed) naming the rank, the step and, for a collective, which
  /// one, when device work of the step failed.
  coro::task<step_outputs> collect(step_ticket ticket);
  /// launch() then collect().
  coro::task<step_outputs> run(const step_plan& plan);

  /// Runs step `plan` and waits for its outputs.
  ///
  /// Completion signature: `void(std::exception_ptr, step_outputs)`; the
  /// exception is what run() throws. The work is started by a post to the
  /// runner's executor. Cancellation (terminal, partial, total): before the
  /// micro-batches finish enqueueing it cancels them at their next switch,
  /// waits for the streams and completes with operation_aborted; after that
  /// it only stops the wait (the step still runs on the device).
  template <class Token>
  auto async_run(const step_plan& plan, Token&& token) {
    return coro::spawn(executor_, run(plan), std::forward<Token>(token));
  }

  /// After a failed step: waits for the streams, replaces them with fresh
  /// ones (a failed stream stays failed) and lets the model recover. The
  /// ring is emptied; graphs stay cached.
  coro::task<void> recover();

  /// Spans of the following steps go to `trace` (null: off).
  void set_timeline(timeline* trace) noexcept;
  const runner_stats& stats() const noexcept { return stats_; }
  const runner_options& options() const noexcept { return options_; }
  gpu::stream_ref compute_stream() const noexcept { return scheduler_->compute_stream(0); }
  const graph_cache<segment_graphs>& graphs(std::int32_t slot) const;

 private:
  struct input_layout;
  struct ring_entry;
  std::size_t stage(const step_plan& plan, std::int32_t u, ring_entry& e) const;
  void make_streams();

  asio::any_io_executor executor_;
  gpu::device* device_;
  step_model* model_;
  runner_options options_;
  std::vector<stage_kind> stages_;
  std::vector<std::int32_t> collective_stage_;  // stage of the k-th collective
  persistent_inputs inputs_;
  std::unique_ptr<input_layout> layout_;
  // The persistent buffers, in the device's memory: every slot's input block
  // (layout_), the resolved token ids per slot, the step's sampled tokens
  // (and logits) by step slot. Declared before the streams, which drain
  // their work when destroyed, and the ring, whose staging they read.
  gpu::typed_buffer<std::byte> inputs_dev_;
  gpu::typed_buffer<std::int32_t> token_ids_dev_;
  gpu::typed_buffer<std::int32_t> sampled_dev_;
  gpu::typed_buffer<float> logits_dev_;
  std::vector<ubatch_io> ios_;  // per slot: what the model was bound to
  std::vector<std::unique_ptr<ring_entry>> ring_;
  std::vector<graph_cache<segment_graphs>> caches_;
  std::unique_ptr<gpu::stream_pool> pool_;
  std::unique_ptr<ubatch_scheduler> scheduler_;
  timeline* trace_ = nullptr;
  std::uint64_t launched_ = 0;
  runner_stats stats_;
};

}  // namespace cobatch::engine
