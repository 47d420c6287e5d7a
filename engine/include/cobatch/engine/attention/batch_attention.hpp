// batch_attention: plan then run, the seed's BatchDCPWrapper (and its prefill,
// decode and unified variants: one wrapper serves prefill, decode and mixed
// batches, since the plan's causal rule covers all three).
//
//   engine::batch_attention attn(device, cache, config, &dcp_comm);
//   engine::attention_plan plan;
//   attn.plan({batch, pages}, plan);                  // once per step, CPU only
//   for (int layer = 0; layer < layers; ++layer) {    // per layer
//     co_await attn.async_run(plan, {.layer = layer, .q = q, .new_k = k, .new_v = v,
//                                    .out = o, .lse = engine::lse_ref::base_e(lse)},
//                             compute, comm, asio::use_awaitable);
//   }
//
// A run is a sequence of phases, each on the compute or the communication
// stream: attention (with the split chunks merged) on compute; with DCP, the
// exchange on comm and the merge on compute (all_gather), or the LSE
// all-gather on comm, the correction on compute, the reduce-scatter on comm
// and the final conversion on compute (lse_all_gather_reduce_scatter).
// async_run enqueues them all, joined by events on the device; a micro-batch
// coroutine instead enqueues them one by one at its switch points
// (run_attention in ubatch_attention.hpp), so that one micro-batch's
// exchange overlaps another's attention.
//
// One wrapper runs one plan at a time on one compute stream: its workspace
// holds the plan's tables and partial results. Micro-batches use one wrapper
// each (they share the cache).
#pragma once

#include <cobatch/engine/attention/attention_plan.hpp>
#include <cobatch/engine/attention/attention_stats.hpp>
#include <cobatch/engine/attention/lse.hpp>
#include <cobatch/engine/attention/paged_kv_cache.hpp>
#include <cobatch/gpu/communicator.hpp>
#include <cobatch/gpu/device.hpp>
#include <cobatch/gpu/device_memory.hpp>
#include <cobatch/gpu/event.hpp>
#include <cobatch/gpu/stream.hpp>
#include <cobatch/gpu/stream_pool.hpp>

#include <asio/associated_cancellation_slot.hpp>
#include <asio/associated_executor.hpp>
#include <asio/async_result.hpp>
#include <asio/bind_cancellation_slot.hpp>
#include <asio/bind_executor.hpp>

#include <cstdint>
#include <memory>
#include <system_error>
#include <utility>

namespace cobatch::engine {

/// The tensors of one layer's run. Element types: the cache's storage type
/// (f32 or bf16) for q, new_k, new_v and out; f32 for the LSE.
struct attention_io {
  std::int32_t layer = 0;
  gpu::any_device_span q;      ///< [num_tokens][num_qo_heads][head_dim]
  /// Optional (both or neither): this step's new K/V rows,
  /// [num_tokens][num_kv_heads][head_dim], written into the cache at the
  /// plan's slots (the rows of tokens this rank's shard owns) before the
  /// attention reads it.
  gpu::any_device_span new_k;
  gpu::any_device_span new_v;
  gpu::any_device_span out;    ///< [num_tokens][plan.output_heads()][head_dim]
  /// Optional: [num_tokens][plan.output_heads()], written in the base it names.
  lse_ref lse;
};

class batch_attention {
 public:
  /// `dcp_comm` is the DCP group's communicator: required when
  /// config.dcp.world > 1, with size() == world and rank() == rank; it must
  /// outlive the wrapper. Allocates nothing yet (the workspace grows on the
  /// first reserve or run). Throws engine_error for a config the cache
  /// cannot serve or a communicator that does not match (naming both values).
  batch_attention(gpu::device& device, paged_kv_cache& cache, const attention_config& config,
                  const gpu::communicator* dcp_comm = nullptr);
  ~batch_attention();
  batch_attention(const batch_attention&) = delete;
  batch_attention& operator=(const batch_attention&) = delete;

  const attention_config& config() const noexcept { return config_; }
  paged_kv_cache& cache() const noexcept { return *cache_; }

  /// plan_attention() with this wrapper's cache and config, counted in the
  /// stats. Same errors.
  void plan(const attention_batch& batch, attention_plan& out);
  void plan(const attention_batch& batch, attention_plan& out, std::error_code& ec) noexcept;

  /// Grows the workspace to what `plan` needs (allocating only when it is
  /// larger than every plan before). Call it outside the hot path (or before
  /// a graph capture); runs call it too. Growing retires the old workspace
  /// through `s`: it is freed once the work enqueued on `s` so far is done.
  void reserve(const attention_plan& plan, gpu::stream_ref s);

  /// Checks that `plan` was made for this wrapper's cache and config
  /// (num_qo_heads, DCP world, rank, interleave, merge, cache geometry) and that
  /// `io` matches it (layer in range; element types; q, new_k/new_v, out and
  /// lse sizes; backends). Throws engine_error naming the value:
  /// errc::invalid_argument (unplanned plan, a mismatched config or DCP
  /// world or rank, layer, types, backends), errc::length_mismatch (sizes).
  void check(const attention_plan& plan, const attention_io& io) const;

  /// The phases of a run of `plan`: 1 without DCP, 3 for all_gather, 5 for
  /// lse_all_gather_reduce_scatter.
  std::int32_t phase_count(const attention_plan& plan) const noexcept;
  gpu::stream_role phase_role(const attention_plan& plan, std::int32_t phase) const noexcept;

  /// Enqueues phase `phase` on `s`. Phase 0 checks (check()) first and
  /// enqueues nothing when that throws; it also uploads the plan's tables
  /// when this wrapper has not uploaded this plan yet, and appends new_k/new_v.
  /// Phases must be enqueued in order, each on a stream ordered after the
  /// previous phase's (a micro-batch's switch points do that); the last
  /// phase's stream holds the result. Throws engine_error (invalid_argument)
  /// for a phase out of order.
  void enqueue_phase(const attention_plan& plan, const attention_io& io, std::int32_t phase, gpu::stream_ref s);

  /// Writes K/V rows into the cache at the plan's slots, without attention
  /// (e.g. a layer whose attention is skipped). Checks as check() does.
  void enqueue_append(const attention_plan& plan, std::int32_t layer, gpu::any_device_span new_k,
                      gpu::any_device_span new_v, gpu::stream_ref s);

  /// Enqueues every phase of one layer's run (compute phases on `compute`,
  /// communication phases on `comm`, joined by events on the device, ending
  /// on `compute`) and waits for the result.
  ///
  /// Bad input (check()'s errors) throws engine_error from this call, with
  /// nothing enqueued. Completion signature: `void(std::error_code)`: empty
  /// when out and lse are final; otherwise the stream's or the collective's
  /// error (gpu::errc::communicator_aborted, gpu::errc::timeout, a
  /// communicator's or CUDA's code). On any error and on cancellation the DCP
  /// communicator is aborted, so that a failed rank never leaves its peers
  /// inside a collective: every rank's run then completes with an error.
  /// Cancellation: terminal, partial, total (completes with
  /// asio::error::operation_aborted; the enqueued work is not withdrawn).
  /// The handler runs on its associated executor (default: the device
  /// reactor's). `plan`, `io`'s memory and this wrapper must stay valid until
  /// completion.
  template <class Token>
  auto async_run(const attention_plan& plan, const attention_io& io, gpu::stream_ref compute, gpu::stream_ref comm,
                 Token&& token) {
    enqueue_run(plan, io, compute, comm);
    return asio::async_initiate<Token, void(std::error_code)>(
        [this, compute](auto handler) {
          auto ex = asio::get_associated_executor(handler, compute.impl().reactor().get_executor());
          auto slot = asio::get_associated_cancellation_slot(handler);
          compute.async_wait(asio::bind_cancellation_slot(
              slot, asio::bind_executor(ex, [this, h = std::move(handler)](std::error_code ec) mutable {
                if (ec) abort_peers();
                std::move(h)(ec);
              })));
        },
        token);
  }

  /// Enqueues every phase as async_run does, without waiting.
  void enqueue_run(const attention_plan& plan, const attention_io& io, gpu::stream_ref compute, gpu::stream_ref comm);

  /// Aborts the DCP communicator (nothing without one): every pending and
  /// later collective of every rank fails instead of waiting.
  void abort_peers() noexcept;

  attention_stats stats() const noexcept { return stats_; }
  void reset_stats() noexcept;

 private:
  struct state;
  void upload_tables(const attention_plan& plan, gpu::stream_ref s);
  void enqueue_append_kernel(const attention_plan& plan, void* layer_pages, const void* k, const void* v,
                             gpu::stream_ref s);
  gpu::device* device_;
  paged_kv_cache* cache_;
  attention_config config_;
  const gpu::communicator* comm_;
  attention_stats stats_;
  std::unique_ptr<state> state_;  // workspace, events, upload bookkeeping
};

}  // namespace cobatch::engine
