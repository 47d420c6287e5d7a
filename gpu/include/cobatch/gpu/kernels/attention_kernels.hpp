// attention_kernels: the device work of batch attention as plain C++ entry
// points, one per kernel, each taking a struct of plain arguments (pointers
// into device memory, sizes) and the stream to enqueue on. The engine's
// attention plan fills the structs; the backend named by `backend_kind`
// runs them: on the host backend as functions on the stream's worker (they
// are the reference every CPU test runs), on the CUDA backend as kernels from
// .cu files. Nothing here allocates; nothing here validates beyond what a
// kernel needs not to write out of bounds (the engine validates its plans).
//
// Layout shared by all kernels:
// - one layer's KV page pool: [num_pages][2][page_size][num_kv_heads][head_dim],
//   K then V within a page (FlashInfer's NHD layout with K and V of a page
//   side by side, so a page of a layer is one contiguous block);
// - queries and outputs: [num_tokens][num_heads][head_dim], row-major;
// - LSE: [num_tokens][num_heads], f32, natural logarithm unless a field says
//   otherwise (the engine converts at its boundary, where the base is typed);
// - storage types: f32 or bf16 (data_type::bf16) for q, K/V and outputs;
//   every accumulation is f32.
#pragma once

#include "cobatch/gpu/data_type.hpp"
#include "cobatch/gpu/kernels/attention_args.hpp"
#include "cobatch/gpu/device.hpp"
#include "cobatch/gpu/stream.hpp"

#include <cstdint>

namespace cobatch::gpu::kernels {

/// Enqueue on `s`, a stream of a device of `backend`. Throw std::system_error
/// (gpu::errc::invalid_argument) for a backend this build lacks or a storage
/// type the kernel does not have; a CUDA launch failure is a cuda_error.
void enqueue_paged_attention(backend_kind backend, const paged_attention_args& args, stream_ref s);
void enqueue_chunk_merge(backend_kind backend, const chunk_merge_args& args, stream_ref s);
void enqueue_lse_merge(backend_kind backend, const lse_merge_args& args, stream_ref s);
void enqueue_lse_correct(backend_kind backend, const lse_correct_args& args, stream_ref s);
void enqueue_convert(backend_kind backend, const convert_args& args, stream_ref s);
void enqueue_kv_scatter(backend_kind backend, const kv_scatter_args& args, stream_ref s);
void enqueue_kv_gather(backend_kind backend, const kv_gather_args& args, stream_ref s);
void enqueue_kv_append(backend_kind backend, const kv_append_args& args, stream_ref s);

/// The host kernels, run on the calling thread (the reference the tests and
/// the merge benchmark call directly).
namespace host {
void paged_attention(const paged_attention_args& args);
void chunk_merge(const chunk_merge_args& args);
void lse_merge(const lse_merge_args& args);
void lse_correct(const lse_correct_args& args);
void convert(const convert_args& args);
void kv_scatter(const kv_scatter_args& args);
void kv_gather(const kv_gather_args& args);
void kv_append(const kv_append_args& args);
}  // namespace host

}  // namespace cobatch::gpu::kernels
