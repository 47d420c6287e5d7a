// How the backend's .cu files launch kernels: through cudaLaunchKernelEx,
// whose return value is that launch's own status. The <<<>>> syntax returns
// nothing, and reading the status afterwards (cudaGetLastError,
// cudaPeekAtLastError) also reports any earlier error left uncleared on the
// thread, failing a good launch for someone else's mistake. For nvcc only.
#pragma once

#include <cuda_runtime.h>

namespace cobatch::gpu::cuda::detail {

/// Enqueues kernel<<<grid, block, 0, stream>>>(args...) and returns the
/// launch's status as an int (cudaError_t).
template <typename... Params, typename... Args>
int launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, void* stream, Args... args) {
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = 0;
  config.stream = static_cast<cudaStream_t>(stream);
  return static_cast<int>(cudaLaunchKernelEx(&config, kernel, args...));
}

}  // namespace cobatch::gpu::cuda::detail
