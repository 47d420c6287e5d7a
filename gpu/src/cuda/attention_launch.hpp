// Launchers of the attention kernels: plain C++17 on both sides of the nvcc
// boundary. Each returns the launch's cudaError_t as int.
#pragma once

#include "cobatch/gpu/kernels/attention_args.hpp"

#include <cstddef>

namespace cobatch::gpu::cuda::attention_launch {
int paged_attention(const kernels::paged_attention_args& a, void* stream);
int chunk_merge(const kernels::chunk_merge_args& a, void* stream);
int lse_merge(const kernels::lse_merge_args& a, void* stream);
int lse_correct(const kernels::lse_correct_args& a, void* stream);
int convert(const kernels::convert_args& a, void* stream);
int kv_scatter(const kernels::kv_scatter_args& a, void* stream);
int kv_gather(const kernels::kv_gather_args& a, void* stream);
int kv_append(const kernels::kv_append_args& a, void* stream);
/// Writes `count` copies of a 2-, 4- or 8-byte pattern.
int fill(void* dst, std::uint64_t pattern, std::size_t pattern_bytes, std::size_t count, void* stream);
}  // namespace cobatch::gpu::cuda::attention_launch
