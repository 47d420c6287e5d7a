// attention_args: the argument structs of the attention kernels (see
// attention_kernels.hpp for the layouts and the entry points). Plain C++17
// without other cobatch headers but data_type.hpp, so that the .cu files that
// implement the kernels include the very same structs.
#pragma once

#include "cobatch/gpu/data_type.hpp"

#include <cstdint>

namespace cobatch::gpu::kernels {

/// Per request (device array): where its queries are and where its pages are.
struct attention_request {
  std::int32_t q_begin = 0;     ///< first query row of the request
  std::int32_t q_len = 0;       ///< query rows
  std::int32_t seq_len = 0;     ///< global KV length, this step's tokens included
  std::int32_t page_begin = 0;  ///< first entry of its pages in kv_indices
  std::int32_t kv_len = 0;      ///< KV tokens held by this rank (the DCP shard)
};

/// One unit of attention work: every query row of one request against one
/// chunk [kv_begin, kv_end) of the request's local KV tokens.
struct attention_work_item {
  std::int32_t request = 0;
  std::int32_t kv_begin = 0;
  std::int32_t kv_end = 0;
  /// -1: the chunk is the request's only one; its result goes to `out` and
  /// `out_lse` at the request's query rows. Otherwise the first row of its
  /// result in `partial_out` / `partial_lse` (q_len rows).
  std::int32_t partial_row = -1;
};

struct paged_attention_args {
  data_type storage = data_type::f32;   ///< q and K/V: f32 or bf16
  data_type out_type = data_type::f32;  ///< out: f32 or the storage type
  const void* q = nullptr;              ///< [num_tokens][num_qo_heads][head_dim]
  const void* kv_pages = nullptr;       ///< one layer's pool
  std::int32_t num_pages = 0;
  std::int32_t page_size = 0;
  std::int32_t num_qo_heads = 0;
  std::int32_t num_kv_heads = 0;  ///< divides num_qo_heads (GQA)
  std::int32_t head_dim = 0;      ///< 64 or 128
  float sm_scale = 1.0f;          ///< applied to q.k before the softmax
  /// Decode context parallelism: local KV token l of a request is global
  /// token ((l / interleave) * world + rank) * interleave + l % interleave.
  /// Query row j of a request sits at global position seq_len - q_len + j and
  /// attends to global tokens at or before it (causal).
  std::int32_t dcp_world = 1;
  std::int32_t dcp_rank = 0;
  std::int32_t dcp_interleave = 1;
  const std::int32_t* kv_indices = nullptr;  ///< pages of every request, back to back
  const attention_request* requests = nullptr;
  /// Null: no request is split, and work item w is request w whole
  /// ({w, 0, kv_len, -1}), with num_work == the number of requests.
  const attention_work_item* work = nullptr;
  std::int32_t num_work = 0;
  std::int32_t num_tokens = 0;
  std::int32_t max_q_len = 0;  ///< longest request query (sizes the CUDA grid)
  void* out = nullptr;              ///< [num_tokens][num_qo_heads][head_dim], out_type
  float* out_lse = nullptr;         ///< [num_tokens][num_qo_heads], may be null
  float lse_out_scale = 1.0f;       ///< out_lse = natural * lse_out_scale (partial_lse stays natural)
  float* partial_out = nullptr;     ///< [rows][num_qo_heads][head_dim]
  float* partial_lse = nullptr;     ///< [rows][num_qo_heads], natural
};

/// Combines the chunks of the requests whose KV was split.
struct chunk_merge_item {
  std::int32_t q_begin = 0;     ///< first query row of the request
  std::int32_t q_len = 0;
  std::int32_t first_row = 0;   ///< chunk c's row j is partial row first_row + c * q_len + j
  std::int32_t num_chunks = 0;
};

struct chunk_merge_args {
  std::int32_t num_heads = 0;
  std::int32_t head_dim = 0;
  const chunk_merge_item* items = nullptr;
  std::int32_t num_items = 0;
  std::int32_t max_q_len = 0;  ///< longest q_len of the items (sizes the CUDA grid)
  const float* partial_out = nullptr;
  const float* partial_lse = nullptr;
  void* out = nullptr;  ///< out_type, rows as in paged_attention_args
  data_type out_type = data_type::f32;
  float* out_lse = nullptr;     ///< may be null
  float lse_out_scale = 1.0f;   ///< out_lse = natural * lse_out_scale
};

/// N-way merge of attention states (o_i, lse_i) of the same rows:
///   lse = log(sum_i exp(lse_i)),  o = sum_i exp(lse_i - lse) o_i,
/// over the shards whose lse_i is finite. A shard with an LSE of -inf, +inf
/// or NaN adds nothing; a row with no finite shard gets o = 0, lse = -inf.
/// No NaN leaves the merge.
struct lse_merge_args {
  std::int32_t num_shards = 0;
  std::int64_t rows = 0;  ///< tokens x heads
  std::int32_t head_dim = 0;
  const float* shard_out = nullptr;  ///< shard i's row r at shard_out + i * shard_out_stride + r * head_dim
  std::int64_t shard_out_stride = 0;
  const float* shard_lse = nullptr;  ///< shard i's row r at shard_lse + i * shard_lse_stride + r
  std::int64_t shard_lse_stride = 0;
  float lse_in_scale = 1.0f;   ///< natural = stored * lse_in_scale (ln 2 for base-2 inputs)
  void* out = nullptr;         ///< [rows][head_dim], out_type
  data_type out_type = data_type::f32;
  float* out_lse = nullptr;    ///< [rows], may be null
  float lse_out_scale = 1.0f;  ///< stored = natural * lse_out_scale (1 / ln 2 for base 2)
};

/// vLLM's local correction before a reduce-scatter over heads: with every
/// rank's LSE gathered, rank `rank` scales its partial output by
/// exp(lse_local - lse_global) (0 where its shard is empty) and lays it out so
/// that a reduce-scatter (sum) leaves rank r the heads
/// [r * heads / world, (r + 1) * heads / world) of every token.
struct lse_correct_args {
  std::int32_t world = 1;
  std::int32_t rank = 0;
  std::int32_t num_tokens = 0;
  std::int32_t num_heads = 0;  ///< a multiple of world
  std::int32_t head_dim = 0;
  const float* all_lse = nullptr;    ///< [world][num_tokens][num_heads], natural
  const float* local_out = nullptr;  ///< [num_tokens][num_heads][head_dim]
  float* scatter_out = nullptr;      ///< [world][num_tokens][num_heads / world][head_dim]
  float* out_lse = nullptr;          ///< [num_tokens][num_heads / world]: this rank's heads
  float lse_out_scale = 1.0f;
};

/// dst[i] = src[i] converted to dst_type (f32, bf16 or f16).
struct convert_args {
  const float* src = nullptr;
  void* dst = nullptr;
  data_type dst_type = data_type::f32;
  std::int64_t count = 0;
};

/// One layer's pool as the KV row kernels address it: page p holds its K
/// block then its V block, each [page_size][num_kv_heads][head_dim] of
/// `storage`. `Pages` is `void` where the kernel writes the pool and
/// `const void` where it only reads it.
template <class Pages>
struct kv_pool_args {
  data_type storage = data_type::f32;
  Pages* kv_pages = nullptr;
  std::int32_t num_pages = 0;
  std::int32_t page_size = 0;
  std::int32_t num_kv_heads = 0;
  std::int32_t head_dim = 0;
};

/// Writes token rows into one layer's pool at slots (slot = page * page_size +
/// offset; a negative slot skips the row): appending a step's new K/V, and
/// the receiving end of a KV hand-off.
struct kv_scatter_args : kv_pool_args<void> {
  const void* k = nullptr;     ///< row i at k + i * row_stride elements: [num_kv_heads][head_dim]
  const void* v = nullptr;
  std::int64_t row_stride = 0; ///< elements between rows
  const std::int32_t* slots = nullptr;
  std::int32_t num_rows = 0;
};

/// Appends a step's new K/V rows (one per query row) into one layer's pool:
/// query row j of a request is global token seq_len - q_len + j, written when
/// this rank's DCP shard owns it, at the slot its page table gives. The slot
/// is found on the device, so that planning never reads the page indices
/// (a cache miss per request on the host).
struct kv_append_args : kv_pool_args<void> {
  const void* k = nullptr;  ///< [num_tokens][num_kv_heads][head_dim]
  const void* v = nullptr;
  const attention_request* requests = nullptr;
  std::int32_t num_reqs = 0;
  std::int32_t max_q_len = 0;
  const std::int32_t* kv_indices = nullptr;
  std::int32_t dcp_world = 1;
  std::int32_t dcp_rank = 0;
  std::int32_t dcp_interleave = 1;
};

/// Reads token rows out of one layer's pool (the sending end of a hand-off).
struct kv_gather_args : kv_pool_args<const void> {
  void* k = nullptr;  ///< as kv_scatter_args
  void* v = nullptr;
  std::int64_t row_stride = 0;
  const std::int32_t* slots = nullptr;
  std::int32_t num_rows = 0;
};

}  // namespace cobatch::gpu::kernels
