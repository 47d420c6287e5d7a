// llama_kernels: the math of the reference model's forward pass on one
// backend, behind the structure that llama_model keeps for every backend
// (stages, slots, attention plans). The host kernels run as host functions on
// the stream with OpenBLAS for the matrix products; the CUDA kernels
// (examples/model/cuda/, where the build has CUDA) launch .cu kernels and
// cuBLAS on the stream. Attention is neither's: it is the engine's
// batch_attention on the device's backend.
//
// Every operation is enqueued on `s` and reads the micro-batch's inputs
// (`io`) and sizes (io.counts) when it runs, not when it is enqueued, so that
// graph stages replay; `rows` is the padded row count the stage was enqueued
// for. io's buffers are the step runner's, in the device's memory (on CUDA,
// device memory the kernels read directly).
#pragma once

#include "llama_weights.hpp"

#include <cobatch/engine/step/step_model.hpp>
#include <cobatch/gpu/device_memory.hpp>
#include <cobatch/gpu/stream.hpp>

#include <cstdint>
#include <memory>
#include <vector>

namespace cobatch::model {

/// One micro-batch slot's activations, in the device's memory: per token
/// rows (x, xn, q, k, v, attn, gate, up) and per request rows (rows: the
/// final norm of the sampled rows, logits).
struct llama_activations {
  gpu::typed_buffer<float> x, xn, q, k, v, attn, gate, up, rows, logits;
  /// What a backend keeps besides (the CUDA sampler's workspace).
  gpu::device_buffer workspace;
  /// The host sampler's scratch (host kernels only).
  std::vector<std::int32_t> scratch, sample_reqs;
};

class llama_kernels {
 public:
  virtual ~llama_kernels() = default;

  /// After the slot's activations are allocated: anything else it needs.
  virtual void bind(llama_activations& a, const engine::ubatch_io& io) = 0;
  /// x = embedding rows of io.token_ids.
  virtual void embed(llama_activations& a, const engine::ubatch_io& io, std::int32_t rows, gpu::stream_ref s) = 0;
  /// xn = RMSNorm(x); q, k, v = projections of xn; rotary positions on q, k.
  virtual void pre_attention(llama_activations& a, const engine::ubatch_io& io, std::int32_t layer, std::int32_t rows,
                             gpu::stream_ref s) = 0;
  /// x += O(attn); x += down(SwiGLU(gate(norm x), up(norm x))).
  virtual void post_attention(llama_activations& a, std::int32_t layer, std::int32_t rows, gpu::stream_ref s) = 0;
  /// Final norm of each request's sampled row, the LM head, sampling into
  /// io.sampled (and the logits into io.logits when kept).
  virtual void head_and_sample(llama_activations& a, const engine::ubatch_io& io, std::int32_t rows,
                               gpu::stream_ref s) = 0;
};

/// Rotary inverse frequencies theta^(-2i/d), i < head_dim / 2: one table for
/// every backend, so that they rotate by the same angles.
std::vector<float> rope_inverse_frequencies(const llama_config& c);

/// The host backend's kernels (OpenBLAS). OpenBLAS's thread count is one
/// setting for the whole process: each call sets it to `blas_threads`, so
/// every rank of a process should be given the same count.
std::unique_ptr<llama_kernels> make_host_kernels(const llama_weights& weights, std::int32_t blas_threads = 1);

/// The kernels for `device`'s backend. Throws std::invalid_argument for a
/// backend this build has no kernels for (CUDA where the model was built
/// without it). `blas_threads` is the host kernels' (make_host_kernels).
std::unique_ptr<llama_kernels> make_llama_kernels(gpu::device& device, const llama_weights& weights,
                                                  std::int32_t blas_threads = 1);

}  // namespace cobatch::model
