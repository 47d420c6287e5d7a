#include "cobatch/gpu/cuda/device_census.hpp"

#include "cobatch/gpu/cuda/error.hpp"

#include <catch2/catch.hpp>
#include <cuda_runtime.h>

#include <string>

using namespace cobatch::gpu;

TEST_CASE("only a missing device or a missing driver counts as no GPU", "[cuda][census]") {
  SECTION("devices") {
    const auto c = cuda::classify_device_census(cudaSuccess, 1, 13000);
    CHECK(c.usable());
    CHECK(c.count == 1);
    CHECK_FALSE(c.error);
  }
  SECTION("no device") {
    const auto c = cuda::classify_device_census(cudaErrorNoDevice, 0, 13000);
    CHECK(c.skip());
    CHECK_THAT(std::string(c.none_because), Catch::Contains("no CUDA device"));
  }
  SECTION("no driver installed") {
    const auto c = cuda::classify_device_census(cudaErrorInsufficientDriver, 0, 0);
    CHECK(c.skip());
    CHECK_THAT(std::string(c.none_because), Catch::Contains("no CUDA driver"));
  }
  SECTION("a driver older than the runtime is a failure, named") {
    const auto c = cuda::classify_device_census(cudaErrorInsufficientDriver, 0, 12020);
    CHECK_FALSE(c.skip());
    CHECK_FALSE(c.usable());
    CHECK(c.error == cuda::make_cuda_error_code(cudaErrorInsufficientDriver));
    CHECK_THAT(c.error.message(), Catch::Contains("cudaErrorInsufficientDriver"));
  }
  SECTION("any other failure is reported, not skipped") {
    for (int status : {static_cast<int>(cudaErrorInitializationError), static_cast<int>(cudaErrorDevicesUnavailable),
                       static_cast<int>(cudaErrorSystemNotReady), static_cast<int>(cudaErrorUnknown)}) {
      const auto c = cuda::classify_device_census(status, 0, 13000);
      CHECK_FALSE(c.skip());
      CHECK(c.error == cuda::make_cuda_error_code(status));
    }
  }
}

TEST_CASE("the census of this machine is consistent", "[cuda][census]") {
  // Runs everywhere: on a GPU machine it finds devices, on CI it finds none
  // with a reason; an error here is a broken machine and should fail.
  const auto c = cuda::take_device_census();
  INFO("error: " << c.error.message() << ", none because: " << c.none_because);
  CHECK_FALSE(c.error);
  CHECK((c.usable() || !c.none_because.empty()));
}
