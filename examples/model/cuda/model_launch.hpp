// Launchers of the reference model's CUDA kernels (model_kernels.cu): plain
// C++17 on both sides of the nvcc boundary, so that neither side includes the
// other's headers. Each enqueues on `stream` (a cudaStream_t) and returns the
// launch's cudaError_t as int; none launches for zero rows.
#pragma once

#include <cstddef>
#include <cstdint>

namespace cobatch::model::cuda_launch {

/// x[r] = embed[clamp(token_ids[r], 0, vocab - 1)], r < rows.
int embed(float* x, const float* embed, const std::int32_t* token_ids, std::int32_t rows, std::int32_t hidden,
          std::int32_t vocab, void* stream);

/// y[r] = x[src] * rsqrt(mean(x[src]^2) + eps) * w, r < rows, where src = r,
/// or src = row_of[r] when row_of is given; then rows r >= *count, or whose
/// row_of[r] < 0, are zeroed instead (the LM head's gather of the sampled
/// rows).
int rms_norm(const float* x, const float* w, float* y, std::int32_t rows, std::int32_t n, float eps,
             const std::int32_t* row_of, const std::int32_t* count, void* stream);

/// Rotate-half rotary positions on q [rows][heads][head_dim] and k
/// [rows][kv_heads][head_dim] by positions[r] * inv_freq[i].
int rope(float* q, float* k, const std::int32_t* positions, const float* inv_freq, std::int32_t rows,
         std::int32_t heads, std::int32_t kv_heads, std::int32_t head_dim, void* stream);

/// gate = silu(gate) * up over n elements.
int swiglu(float* gate, const float* up, std::size_t n, void* stream);

struct sample_args {
  const float* logits;            ///< [rows][vocab]: row r is request r's
  std::int32_t rows;              ///< launched rows (>= the requests)
  std::int32_t vocab;
  std::int32_t sort_size;         ///< power of two >= vocab: the sort's length
  const std::int32_t* counts;     ///< counts[1]: requests
  const std::int32_t* sample_rows;
  const std::int32_t* req_slots;
  const std::int32_t* sample_index;
  const float* temperature;
  const float* top_p;
  const std::uint64_t* seed;
  std::int32_t* sampled;          ///< by step slot
  float* kept_logits;             ///< [step slot][vocab], or null
  float* keys;                    ///< workspace: [rows][sort_size]
  std::int32_t* ids;              ///< workspace: [rows][sort_size]
  double* cumulative;             ///< workspace: [rows][sort_size]
};

/// One block per request: greedy argmax (lowest id on ties) at temperature
/// 0, else the seeded temperature/top-p draw of sampling.hpp's sample_token.
int sample(const sample_args& a, void* stream);

}  // namespace cobatch::model::cuda_launch
