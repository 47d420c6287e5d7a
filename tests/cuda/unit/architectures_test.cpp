#include "cobatch/gpu/cuda/probe_kernels.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <sstream>
#include <string>
#include <vector>

namespace {
// "80-real,90-real,90-virtual" -> {800, 900}, as nvcc's __CUDA_ARCH_LIST__ has them.
std::vector<int> expected_list(const std::string& cmake_list) {
  std::vector<int> out;
  std::stringstream in(cmake_list);
  std::string item;
  while (std::getline(in, item, ',')) {
    const int number = std::stoi(item) * 10;
    if (std::find(out.begin(), out.end(), number) == out.end()) out.push_back(number);
  }
  std::sort(out.begin(), out.end());
  return out;
}
}  // namespace

TEST_CASE("the kernels are compiled for the architectures the build chose", "[cuda][build]") {
  auto compiled = cobatch::gpu::cuda::probe::compiled_architectures();
  std::sort(compiled.begin(), compiled.end());
  INFO("CMAKE_CUDA_ARCHITECTURES = " << COBATCH_TEST_CUDA_ARCHITECTURES);
  CHECK(compiled == expected_list(COBATCH_TEST_CUDA_ARCHITECTURES));
}

TEST_CASE("the default build includes Hopper machine code", "[cuda][build]") {
  // Without a choice of its own, enable_language(CUDA) picks the compiler's
  // default (sm_75 with nvcc 13) and a Hopper GPU JIT-compiles PTX.
  if (std::string(COBATCH_TEST_CUDA_ARCHITECTURES) != COBATCH_TEST_CUDA_ARCHITECTURES_DEFAULT) {
    SUCCEED("architectures chosen by the caller: " COBATCH_TEST_CUDA_ARCHITECTURES);
    return;
  }
  const auto compiled = cobatch::gpu::cuda::probe::compiled_architectures();
  CHECK(std::find(compiled.begin(), compiled.end(), 900) != compiled.end());
  CHECK_THAT(std::string(COBATCH_TEST_CUDA_ARCHITECTURES), Catch::Contains("90-real"));
}
