// What every CUDA device test starts from: a loop with a reactor attached
// and device 0.
#pragma once

#include "device_fixture.hpp"

#include "cobatch/coro/run_loop.hpp"
#include "cobatch/coro/sync_wait.hpp"
#include "cobatch/coro/use_task.hpp"
#include "cobatch/gpu/cuda/buffer.hpp"
#include "cobatch/gpu/cuda/cuda_device.hpp"
#include "cobatch/gpu/cuda/error.hpp"

#include <cuda_runtime_api.h>

#include <cstddef>
#include <random>
#include <system_error>
#include <vector>

namespace cuda_test {

/// On device 0.
struct fixture : cobatch::test::device_fixture<cobatch::gpu::cuda::cuda_device> {
  fixture() : device_fixture(0) {}
};

inline std::vector<float> random_floats(std::size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-4.0f, 4.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

/// Whether `ec` is how the runtime refuses probe::invalid_launch's block of
/// 4096 threads: CUDA 12 answers cudaErrorInvalidConfiguration, CUDA 13
/// (driver 580) cudaErrorInvalidValue. Either is the launch's own refusal;
/// the tests are about where that code travels, not which one it is.
inline bool is_refused_launch(const std::error_code& ec) {
  return ec.category() == cobatch::gpu::cuda::cuda_category() &&
         (ec.value() == cudaErrorInvalidConfiguration || ec.value() == cudaErrorInvalidValue);
}

/// Pinned host memory holding `n` floats.
inline cobatch::gpu::cuda::allocation pinned_floats(std::size_t n) {
  return cobatch::gpu::cuda::allocation(n * sizeof(float), cobatch::gpu::cuda::memory_kind::pinned_host);
}

}  // namespace cuda_test
