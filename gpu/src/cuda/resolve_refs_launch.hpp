// Launcher of the resolve_refs kernel: plain C++17 on both sides of the nvcc
// boundary. Returns the launch's cudaError_t as int.
#pragma once

#include "cobatch/gpu/kernels/resolve_refs_args.hpp"

namespace cobatch::gpu::cuda::resolve_refs_launch {
int resolve_refs(const kernels::resolve_refs_args& a, void* stream);
}  // namespace cobatch::gpu::cuda::resolve_refs_launch
