// The probe kernels. Compiled by nvcc as C++17; the C++20 side reaches them
// through the launchers below, which return the launch status.
#include "probe_launch.hpp"

#include <cuda_runtime.h>

namespace cobatch::gpu::cuda::probe::launch {
namespace {

__global__ void fma_chain_kernel(const float* in, float* out, std::size_t n, std::uint32_t iterations) {
  const std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  float x = in[i];
  // Each step depends on the previous one, so the chain cannot be shortened
  // or run in parallel; the constants keep x bounded.
  for (std::uint32_t k = 0; k < iterations; ++k) x = fmaf(x, 0.999f, 0.001f);
  out[i] = x;
}

__global__ void spin_kernel(std::uint64_t cycles, std::uint32_t* flag, std::uint32_t value) {
  const long long start = clock64();
  while (static_cast<std::uint64_t>(clock64() - start) < cycles) {
  }
  if (flag != nullptr && threadIdx.x == 0) *flag = value;
}

__global__ void scale_copy_kernel(const float* in, float* out, std::size_t n, float scale) {
  const std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x;
  if (i < n) out[i] = in[i] * scale;
}

__global__ void empty_kernel() {}

constexpr unsigned threads = 256;

unsigned blocks_for(std::size_t n) { return static_cast<unsigned>((n + threads - 1) / threads); }

}  // namespace

int fma_chain(const float* in, float* out, std::size_t n, std::uint32_t iterations, void* stream) {
  if (n == 0) return 0;
  fma_chain_kernel<<<blocks_for(n), threads, 0, static_cast<cudaStream_t>(stream)>>>(in, out, n, iterations);
  return static_cast<int>(cudaPeekAtLastError());
}

int spin(std::uint64_t cycles, std::uint32_t* flag, std::uint32_t value, void* stream) {
  spin_kernel<<<1, 32, 0, static_cast<cudaStream_t>(stream)>>>(cycles, flag, value);
  return static_cast<int>(cudaPeekAtLastError());
}

int scale_copy(const float* in, float* out, std::size_t n, float scale, void* stream) {
  if (n == 0) return 0;
  scale_copy_kernel<<<blocks_for(n), threads, 0, static_cast<cudaStream_t>(stream)>>>(in, out, n, scale);
  return static_cast<int>(cudaPeekAtLastError());
}

int empty(void* stream) {
  empty_kernel<<<1, 1, 0, static_cast<cudaStream_t>(stream)>>>();
  return static_cast<int>(cudaPeekAtLastError());
}

int invalid_launch(void* stream) {
  // 4096 threads per block: more than any CUDA device allows (1024).
  empty_kernel<<<1, 4096, 0, static_cast<cudaStream_t>(stream)>>>();
  return static_cast<int>(cudaPeekAtLastError());
}

}  // namespace cobatch::gpu::cuda::probe::launch
