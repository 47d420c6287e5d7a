// What every CUDA device test starts from: a loop with a reactor attached
// and device 0.
#pragma once

#include "device_fixture.hpp"

#include "cobatch/coro/run_loop.hpp"
#include "cobatch/coro/sync_wait.hpp"
#include "cobatch/coro/use_task.hpp"
#include "cobatch/gpu/cuda/buffer.hpp"
#include "cobatch/gpu/cuda/cuda_device.hpp"

#include <cstddef>
#include <random>
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

/// Pinned host memory holding `n` floats.
inline cobatch::gpu::cuda::allocation pinned_floats(std::size_t n) {
  return cobatch::gpu::cuda::allocation(n * sizeof(float), cobatch::gpu::cuda::memory_kind::pinned_host);
}

}  // namespace cuda_test
