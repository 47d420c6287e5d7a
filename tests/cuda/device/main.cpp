// The CUDA device tests' runner. Where the machine has no GPU (no device, or
// no driver at all) it reports the skip with its reason (exit code 77, which
// CTest counts as skipped) instead of failing every test. Any other failure
// to count devices is a fault of a GPU machine and fails, with its name.
#define CATCH_CONFIG_RUNNER
#include "cobatch/gpu/cuda/device_census.hpp"

#include <catch2/catch.hpp>

#include <iostream>

int main(int argc, char** argv) {
  const auto census = cobatch::gpu::cuda::take_device_census();
  if (census.error) {
    std::cout << "FAILED: cudaGetDeviceCount: " << census.error.message() << std::endl;
    return 1;
  }
  if (census.skip()) {
    std::cout << "SKIPPED: " << census.none_because << std::endl;
    return 77;
  }
  return Catch::Session().run(argc, argv);
}
