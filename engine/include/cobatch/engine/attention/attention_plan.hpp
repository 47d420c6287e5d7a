// attention_plan: the pure-CPU half of batch attention. plan_attention()
// validates a step's batch (the batch_view, the page table, the head and DCP
// configuration), deals this rank's KV shard out into balanced work chunks,
// and sizes every buffer the run needs. It makes no device call and, once the
// plan's storage has grown to the largest batch seen, allocates nothing. It
// reads indptr but not the page indices themselves (unless they come
// unchecked): where a step's new K/V go is found on the device, so planning
// costs no cache miss per request. One plan serves every layer of the step
// (the layers share the batch and the page table).
//
// Query rows, outputs and LSEs are laid out as the batch's tokens:
// [num_tokens][heads][head_dim]. Request i's query row j sits at global
// position seq_lens[i] - query_len(i) + j and attends causally to the global
// KV tokens at or before it: prefill against a cached prefix, decode (one
// query row) and speculative decode (1 + k rows) are the same rule, so a
// mixed batch is one call.
#pragma once

#include <cobatch/engine/attention/dcp.hpp>
#include <cobatch/engine/attention/page_table.hpp>
#include <cobatch/engine/attention/paged_kv_cache.hpp>
#include <cobatch/engine/batch.hpp>
#include <cobatch/gpu/kernels/attention_kernels.hpp>

#include <cstddef>
#include <cstdint>
#include <span>
#include <system_error>
#include <vector>

namespace cobatch::engine {

/// What does not change from step to step: the query heads, the softmax
/// scale, where this rank sits in its DCP group and how partials are merged.
struct attention_config {
  std::int32_t num_qo_heads = 0;  ///< a multiple of the cache's num_kv_heads (GQA)
  float softmax_scale = 0.0f;     ///< finite, > 0; usually 1 / sqrt(head_dim)
  dcp_layout dcp;
  dcp_merge merge = dcp_merge::all_gather;
  /// Longest KV chunk of one work item, in pages. 0: chosen per plan so that
  /// the batch has about target_work_items items (long contexts split, short
  /// ones whole), as FlashInfer sizes its split-KV chunks.
  std::int32_t kv_chunk_pages = 0;
  std::int32_t target_work_items = 512;
};

/// One step's batch as attention sees it: the batch (seq_lens are global
/// lengths, over all DCP ranks, this step's tokens included) and this rank's
/// page table (its shard's pages only; with world 1, all pages).
struct attention_batch {
  batch_view batch;
  page_table_view pages;
};

/// Byte offsets of the run's buffers in a wrapper's workspace (each aligned
/// to 256 bytes). Zero-sized parts have size 0.
struct attention_workspace_layout {
  std::size_t requests = 0;     ///< gpu::kernels::attention_request[num_reqs]
  std::size_t work = 0;         ///< attention_work_item[num_work]
  std::size_t chunk_items = 0;  ///< chunk_merge_item[num_split]
  std::size_t indices = 0;      ///< int32 page indices
  std::size_t partial_out = 0;  ///< f32 [partial_rows][heads][head_dim]
  std::size_t partial_lse = 0;  ///< f32 [partial_rows][heads]
  std::size_t local_out = 0;    ///< f32 [tokens][heads][head_dim] (DCP or f32 staging)
  std::size_t local_lse = 0;    ///< f32 [tokens][heads]
  std::size_t gather_out = 0;   ///< f32 [world][tokens][heads][head_dim] (all_gather)
  std::size_t gather_lse = 0;   ///< f32 [world][tokens][heads]
  std::size_t scatter_out = 0;  ///< f32 [world][tokens][heads/world][head_dim] (reduce-scatter)
  std::size_t reduced_out = 0;  ///< f32 [tokens][heads/world][head_dim]
  std::size_t total = 0;        ///< bytes in all
};

class attention_plan {
 public:
  attention_plan() = default;

  /// Grows the plan's storage so that plans up to these sizes allocate
  /// nothing.
  void reserve(std::int32_t max_reqs, std::int32_t max_tokens, std::int32_t max_work_items);

  /// Unique per successful plan_attention() call (0: never planned); a
  /// wrapper uploads a plan's tables to the device once per id.
  std::uint64_t id() const noexcept { return id_; }
  bool planned() const noexcept { return id_ != 0; }

  const kv_cache_config& cache() const noexcept { return cache_; }
  const attention_config& config() const noexcept { return config_; }
  const batch_shape& shape() const noexcept { return shape_; }
  std::int32_t num_reqs() const noexcept { return shape_.num_reqs; }
  std::int32_t num_tokens() const noexcept { return shape_.num_tokens; }
  /// Query heads of this rank's output: all of them, or heads / world with
  /// dcp_merge::lse_all_gather_reduce_scatter.
  std::int32_t output_heads() const noexcept { return output_heads_; }
  /// Elements of the output and of the LSE the run writes.
  std::size_t output_elements() const noexcept;
  std::size_t lse_elements() const noexcept;
  /// KV tokens of this rank's shard, summed over requests.
  std::int64_t local_kv_tokens() const noexcept { return local_kv_tokens_; }
  /// Tokens of a work chunk at most (a multiple of the page size).
  std::int32_t kv_chunk_tokens() const noexcept { return chunk_tokens_; }
  /// Bytes this rank's collectives send plus receive per layer run.
  std::int64_t dcp_bytes_per_run() const noexcept { return dcp_bytes_; }
  /// Query tokens this rank appends to its cache (those it owns).
  std::int32_t appended_tokens() const noexcept { return appended_tokens_; }

  const attention_workspace_layout& workspace() const noexcept { return layout_; }

  /// The tables the run uploads.
  std::span<const gpu::kernels::attention_request> requests() const noexcept {
    return {requests_.data(), static_cast<std::size_t>(shape_.num_reqs)};
  }
  /// The work items; empty when no request is split (work_is_identity()).
  std::span<const gpu::kernels::attention_work_item> work() const noexcept { return {work_.data(), num_work_}; }
  /// True when every request is one work item, whole: the kernels then walk
  /// the request table and the plan builds no work list (the common case of
  /// large batches, whose parallelism is in their requests).
  bool work_is_identity() const noexcept { return identity_work_; }
  /// Work items the attention kernel runs.
  std::int32_t num_work_items() const noexcept {
    return identity_work_ ? shape_.num_reqs : static_cast<std::int32_t>(num_work_);
  }
  std::span<const gpu::kernels::chunk_merge_item> chunk_items() const noexcept {
    return {chunk_items_.data(), num_chunk_items_};
  }
  /// The page indices, borrowed from the page table the plan was made from.
  std::span<const std::int32_t> indices() const noexcept { return indices_; }
  std::int32_t partial_rows() const noexcept { return partial_rows_; }

 private:
  friend void plan_attention(const kv_cache_config&, const attention_config&, const attention_batch&,
                             attention_plan&);
  friend void plan_attention(const kv_cache_config&, const attention_config&, const attention_batch&,
                             attention_plan&, std::error_code&) noexcept;
  friend struct attention_planner;

  std::uint64_t id_ = 0;
  kv_cache_config cache_;
  attention_config config_;
  batch_shape shape_;
  std::int32_t output_heads_ = 0;
  std::int64_t local_kv_tokens_ = 0;
  std::int32_t chunk_tokens_ = 0;
  std::int64_t dcp_bytes_ = 0;
  std::int32_t appended_tokens_ = 0;
  std::int32_t partial_rows_ = 0;
  attention_workspace_layout layout_;
  std::vector<gpu::kernels::attention_request> requests_;
  std::vector<gpu::kernels::attention_work_item> work_;
  std::size_t num_work_ = 0;
  bool identity_work_ = false;
  std::vector<gpu::kernels::chunk_merge_item> chunk_items_;
  std::size_t num_chunk_items_ = 0;
  std::span<const std::int32_t> indices_;
};

/// Plans one step. Throws engine_error naming the first offending value, with
/// `out` left unplanned (id() == 0):
/// - the batch_view's errors (validate_batch: empty_batch, length_mismatch,
///   negative_length, invalid_argument, overflow);
/// - the cache config's (validate_kv_cache_config);
/// - errc::invalid_argument: num_qo_heads < 1 or not a multiple of
///   num_kv_heads; a softmax_scale that is not finite and > 0; a DCP layout
///   out of range; heads not divisible by the DCP world for the
///   reduce-scatter merge; kv_chunk_pages or target_work_items negative; a page
///   index outside [0, num_pages) (naming request, position and index);
/// - errc::length_mismatch: a page table whose request count differs from the
///   batch's, or whose request holds a different number of pages than its
///   shard of seq_len needs (naming request, pages, tokens), or whose indptr
///   does not start at 0, decreases, or runs past the indices;
/// - errc::unknown_mode: a dcp_merge outside the enum;
/// - errc::overflow: buffer sizes beyond what int32 rows or size_t bytes hold.
void plan_attention(const kv_cache_config& cache, const attention_config& config, const attention_batch& batch,
                    attention_plan& out);
/// As above, reporting failure through `ec` without building a message.
void plan_attention(const kv_cache_config& cache, const attention_config& config, const attention_batch& batch,
                    attention_plan& out, std::error_code& ec) noexcept;

/// Checks an attention_config against a cache config (the plan's checks that
/// do not depend on the batch). Throws as plan_attention.
void validate_attention_config(const kv_cache_config& cache, const attention_config& config);

}  // namespace cobatch::engine
