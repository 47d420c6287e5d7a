// Internals of the CUDA backend's memory and kernels for the backend-neutral
// entry points (device_memory.hpp, copy.hpp, kernels/attention_kernels.hpp,
// kernels/resolve_refs.hpp).
// Not installed.
#pragma once

#include "cobatch/gpu/copy.hpp"
#include "cobatch/gpu/device_memory.hpp"
#include "cobatch/gpu/kernels/attention_kernels.hpp"
#include "cobatch/gpu/kernels/resolve_refs_args.hpp"

#include <cstddef>
#include <system_error>

namespace cobatch::gpu::cuda::detail {

device_buffer allocate_device(device& d, std::size_t bytes, std::error_code& ec) noexcept;
void copy_bytes(copy_direction direction, void* dst, const void* src, std::size_t bytes, stream_ref s);
void fill_bytes(void* dst, const void* pattern, std::size_t pattern_bytes, std::size_t count, stream_ref s);

void paged_attention(const kernels::paged_attention_args& args, stream_ref s);
void chunk_merge(const kernels::chunk_merge_args& args, stream_ref s);
void lse_merge(const kernels::lse_merge_args& args, stream_ref s);
void lse_correct(const kernels::lse_correct_args& args, stream_ref s);
void convert(const kernels::convert_args& args, stream_ref s);
void kv_scatter(const kernels::kv_scatter_args& args, stream_ref s);
void kv_gather(const kernels::kv_gather_args& args, stream_ref s);
void kv_append(const kernels::kv_append_args& args, stream_ref s);
void resolve_refs(const kernels::resolve_refs_args& args, stream_ref s);

/// Page-locked host memory (cudaMallocHost) for allocate_pinned.
pinned_buffer allocate_pinned(device& d, std::size_t bytes);

}  // namespace cobatch::gpu::cuda::detail
