// The probe kernels. Compiled by nvcc as C++17; the C++20 side reaches them
// through the launchers below, which return the launch status.
//
// Launches go through detail::launch_kernel (cudaLaunchKernelEx): each
// returns that launch's own status (kernel_launch.hpp says why).
#include "probe_launch.hpp"

#include "kernel_launch.hpp"

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
  return detail::launch_kernel(fma_chain_kernel, blocks_for(n), threads, stream, in, out, n, iterations);
}

int spin(std::uint64_t cycles, std::uint32_t* flag, std::uint32_t value, void* stream) {
  return detail::launch_kernel(spin_kernel, 1, 32, stream, cycles, flag, value);
}

int scale_copy(const float* in, float* out, std::size_t n, float scale, void* stream) {
  if (n == 0) return 0;
  return detail::launch_kernel(scale_copy_kernel, blocks_for(n), threads, stream, in, out, n, scale);
}

int empty(void* stream) { return detail::launch_kernel(empty_kernel, 1, 1, stream); }

int invalid_launch(void* stream) {
  // 4096 threads per block: more than any CUDA device allows (1024).
  return detail::launch_kernel(empty_kernel, 1, 4096, stream);
}

int compiled_architectures(int* out, int capacity) {
  // nvcc's list of the virtual architectures this file was compiled for
  // (e.g. 800,900): what CMAKE_CUDA_ARCHITECTURES turned into.
  static constexpr int list[] = {__CUDA_ARCH_LIST__};
  const int n = static_cast<int>(sizeof(list) / sizeof(list[0]));
  for (int i = 0; i < n && i < capacity; ++i) out[i] = list[i];
  return n;
}

int binary_version(int* version) {
  cudaFuncAttributes attributes{};
  const cudaError_t status = cudaFuncGetAttributes(&attributes, empty_kernel);
  if (status == cudaSuccess) *version = attributes.binaryVersion;
  return static_cast<int>(status);
}

}  // namespace cobatch::gpu::cuda::probe::launch
