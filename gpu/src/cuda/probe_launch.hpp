// Launchers of the probe kernels: plain C++17 on both sides of the nvcc
// boundary. Each returns the launch's cudaError_t as int.
#pragma once

#include <cstddef>
#include <cstdint>

namespace cobatch::gpu::cuda::probe::launch {
int fma_chain(const float* in, float* out, std::size_t n, std::uint32_t iterations, void* stream);
int spin(std::uint64_t cycles, std::uint32_t* flag, std::uint32_t value, void* stream);
int scale_copy(const float* in, float* out, std::size_t n, float scale, void* stream);
int empty(void* stream);
int invalid_launch(void* stream);
}  // namespace cobatch::gpu::cuda::probe::launch
