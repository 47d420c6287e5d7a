#include "cobatch/gpu/cuda/error.hpp"

#include <catch2/catch.hpp>
#include <cuda_runtime.h>

#include <string>
#include <system_error>

using namespace cobatch::gpu;

TEST_CASE("CUDA codes carry the runtime's name and description", "[cuda][error]") {
  const auto ec = cuda::make_cuda_error_code(cudaErrorMemoryAllocation);
  CHECK(std::string(ec.category().name()) == "cuda");
  CHECK_THAT(ec.message(), Catch::Contains("cudaErrorMemoryAllocation"));
  CHECK_THAT(ec.message(), Catch::Contains("out of memory"));
  CHECK(ec == std::errc::not_enough_memory);
  CHECK(cuda::make_cuda_error_code(cudaErrorInvalidValue) == std::errc::invalid_argument);
  CHECK_THAT(cuda::make_cuda_error_code(cudaErrorInvalidConfiguration).message(),
             Catch::Contains("cudaErrorInvalidConfiguration"));
  CHECK_FALSE(cuda::make_cuda_error_code(cudaErrorLaunchFailure) == std::errc::invalid_argument);
}

TEST_CASE("NCCL codes have their own category", "[cuda][error][nccl]") {
  const auto ec = cuda::make_nccl_error_code(6);
  CHECK(std::string(ec.category().name()) == "nccl");
  CHECK_THAT(ec.message(), Catch::Contains("ncclRemoteError"));
  CHECK_THAT(cuda::make_nccl_error_code(7).message(), Catch::Contains("ncclInProgress"));
  CHECK_THAT(cuda::make_nccl_error_code(42).message(), Catch::Contains("unknown NCCL result 42"));
  CHECK(cuda::make_nccl_error_code(4) == std::errc::invalid_argument);
  // Same number, different category: never equal.
  CHECK(cuda::make_nccl_error_code(2) != cuda::make_cuda_error_code(2));
}

TEST_CASE("a failed check throws cuda_error with the code, the call and where", "[cuda][error]") {
  CHECK_NOTHROW(COBATCH_CUDA_CHECK(cudaSuccess));
  const int line = __LINE__ + 2;
  try {
    COBATCH_CUDA_CHECK(cudaErrorInvalidDevice);
    FAIL("no exception");
  } catch (const cuda::cuda_error& e) {
    CHECK(e.code() == cuda::make_cuda_error_code(cudaErrorInvalidDevice));
    CHECK(std::string(e.call()) == "cudaErrorInvalidDevice");
    CHECK(e.where().line() == static_cast<unsigned>(line));
    CHECK_THAT(e.what(), Catch::Contains("cuda_error_test.cpp"));
    CHECK_THAT(e.what(), Catch::Contains("cudaErrorInvalidDevice"));
  }
  try {
    cuda::check_nccl(5, "ncclSend");
    FAIL("no exception");
  } catch (const std::system_error& e) {  // cuda_error is a std::system_error
    CHECK(e.code() == cuda::make_nccl_error_code(5));
    CHECK_THAT(e.what(), Catch::Contains("ncclSend failed"));
  }
}
