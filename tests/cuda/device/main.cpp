// The CUDA device tests' runner: with no device it reports the skip (exit
// code 77, which CTest counts as skipped) instead of failing every test.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>
#include <cuda_runtime.h>

#include <iostream>

int main(int argc, char** argv) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::cout << "SKIPPED: no CUDA device visible" << std::endl;
    return 77;
  }
  return Catch::Session().run(argc, argv);
}
