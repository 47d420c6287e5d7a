#include "cobatch/gpu/cuda/nccl_communicator.hpp"

#include "cobatch/gpu/collective_wait.hpp"
#include "cobatch/gpu/cuda/error.hpp"
#include "cobatch/gpu/error.hpp"
#include "cuda_fixture.hpp"

#include <catch2/catch.hpp>

#include <memory>

using namespace cobatch;
using namespace std::chrono_literals;
namespace nccl = gpu::cuda::nccl;

// Collectives' data, aborts and joins are promises of every backend, run on
// NCCL by tests/cuda/device/backend_contract_test.cpp; here what is NCCL's
// own: creation that cannot finish, and its arguments.

TEST_CASE("a rank whose peer never arrives times out instead of hanging", "[cuda][nccl]") {
  cuda_test::fixture f;
  const auto id = nccl::make_unique_id();
  // Rank 0 of 2; rank 1 never comes, so initialization cannot finish.
  try {
    auto comm = nccl::make_communicator(f.dev, 0, 2, id, {1500ms});
    FAIL("initialization without the peer succeeded");
  } catch (const std::system_error& e) {
    CHECK(e.code() == gpu::errc::timeout);
  }
}

TEST_CASE("NCCL communicators reject bad arguments with clear errors", "[cuda][nccl]") {
  cuda_test::fixture f;
  const auto id = nccl::make_unique_id();
  CHECK_THROWS_WITH(nccl::make_communicator(f.dev, 2, 2, id), Catch::Contains("rank 2 is outside [0, 2)"));
  CHECK_THROWS_WITH(nccl::make_communicator(f.dev, 0, 0, id), Catch::Contains("world size must be at least 1"));
  CHECK_THROWS_AS(nccl::make_local_communicators({}), std::system_error);
}
