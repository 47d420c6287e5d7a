// llama_model: the reference model as a step_model, on one rank of the host
// or the CUDA backend. The layer math is the backend's llama_kernels (host:
// OpenBLAS; CUDA: cuBLAS and .cu kernels); attention goes through the
// engine's batch attention (paged KV cache, plan per micro-batch per step,
// DCP exchange and merge as collective stages) on the device's backend.
//
// Stages of a forward pass (L layers; with DCP the attention's exchange and
// merge are stages of their own, so micro-batches switch around them):
//
//   graph  embedding, layer 0: RMSNorm, Q/K/V projections, rotary positions
//   per layer l:
//     eager       attention phase 0: append K/V to the pages, attend (partials under DCP)
//     collective  (DCP) all-gather of the partial outputs and LSEs
//     eager       (DCP) merge
//     graph       O projection, residual, RMSNorm, SwiGLU MLP, residual, then
//                 layer l+1's norm/QKV/rotary, or the final norm, the LM head
//                 over the rows that sample, and sampling
//
// Graph stages read only the micro-batch slot's persistent buffers and the
// model's, so their captured graphs replay every step; attention depends on
// the step's plan and stays eager (vLLM's piecewise graphs).
#pragma once

#include "dcp_group.hpp"
#include "llama_kernels.hpp"
#include "llama_weights.hpp"

#include <cobatch/engine/attention/batch_attention.hpp>
#include <cobatch/engine/attention/page_table.hpp>
#include <cobatch/engine/attention/paged_kv_cache.hpp>
#include <cobatch/engine/step/step_model.hpp>
#include <cobatch/gpu/device_memory.hpp>

#include <cstdint>
#include <memory>
#include <vector>

namespace cobatch::model {

struct llama_rank_options {
  std::int32_t num_pages = 256;  ///< KV pages on this rank (the planner's num_pages)
  std::int32_t page_size = 16;
  std::int32_t rank = 0;
  /// The in-process DCP group; null for a single rank.
  dcp_group* group = nullptr;
  /// Host kernels: OpenBLAS threads (one count for the whole process; give
  /// every rank the same). CUDA kernels ignore it.
  std::int32_t blas_threads = 1;
};

class llama_model final : public engine::step_model {
 public:
  /// `weights` and `device` outlive the model; the kernels are the device's
  /// backend's (make_llama_kernels: on CUDA the weights are uploaded once).
  /// Throws std::invalid_argument for a bad configuration or rank, a backend
  /// without kernels in this build, or a DCP group on a CUDA device (its
  /// communicators are the host backend's); engine_error from the attention
  /// layer.
  llama_model(gpu::device& device, const llama_weights& weights, llama_rank_options options);
  ~llama_model() override;

  engine::model_info info() const override;
  std::span<const engine::stage_kind> stages() const override { return kinds_; }
  void bind(const engine::ubatch_io& io) override;
  void plan(const engine::step_plan& step, std::int32_t index, const engine::ubatch& slice,
            const engine::ubatch_io& io, gpu::stream_ref s) override;
  void enqueue_stage(std::int32_t stage, const engine::ubatch_io& io, std::int32_t run_tokens,
                     gpu::stream_ref s) override;
  void recover() override;

  const llama_config& config() const noexcept { return weights_->config; }
  engine::paged_kv_cache& cache() noexcept { return cache_; }

 private:
  enum class op : std::uint8_t { embed_pre, attend, exchange, merge, post };
  struct stage {
    op what;
    std::int32_t layer;
  };
  struct slot;
  engine::attention_io attention_io_of(slot& s, std::int32_t layer) const;

  gpu::device* device_;
  const llama_weights* weights_;
  llama_rank_options options_;
  std::int32_t world_ = 1;
  engine::paged_kv_cache cache_;
  std::vector<stage> stages_;
  std::vector<engine::stage_kind> kinds_;
  std::vector<std::unique_ptr<slot>> slots_;
  std::unique_ptr<llama_kernels> kernels_;
};

}  // namespace cobatch::model
