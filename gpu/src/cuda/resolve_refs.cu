// The resolve_refs kernel on CUDA: one thread per id.
#include "kernel_launch.hpp"
#include "resolve_refs_launch.hpp"

#include <cuda_runtime.h>

namespace cobatch::gpu::cuda::resolve_refs_launch {
namespace {

__global__ void resolve_refs_kernel(kernels::resolve_refs_args a) {
  const int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (i >= a.count) return;
  const std::int32_t v = a.src[i];
  const std::int32_t ref = -1 - v;
  a.dst[i] = v >= 0 ? v : ref < a.table_size ? a.table[ref] : 0;
}

}  // namespace

int resolve_refs(const kernels::resolve_refs_args& a, void* stream) {
  if (a.count <= 0) return cudaSuccess;
  constexpr int block = 256;
  const unsigned grid = static_cast<unsigned>((a.count + block - 1) / block);
  return detail::launch_kernel(resolve_refs_kernel, dim3(grid), dim3(block), stream, a);
}

}  // namespace cobatch::gpu::cuda::resolve_refs_launch
