// Device tests of the failure paths that the first GPU run depends on:
// launch status, machine code for the device, failures crossing stream joins,
// waits and polls while a capture is open, stream destruction.
#include "cobatch/gpu/cuda/cuda_device.hpp"

#include "cobatch/gpu/cuda/error.hpp"
#include "cobatch/gpu/cuda/probe_kernels.hpp"
#include "cobatch/gpu/error.hpp"
#include "cuda_fixture.hpp"

#include <catch2/catch.hpp>
#include <cuda_runtime.h>

#include <atomic>
#include <sstream>
#include <string>

using namespace cobatch;
using cuda_test::fixture;
namespace probe = gpu::cuda::probe;

namespace {
std::error_code wait_for(fixture& f, gpu::stream_ref s) {
  auto body = [&]() -> coro::task<std::error_code> {
    auto [ec] = co_await s.async_wait(coro::as_tuple_task);
    co_return ec;
  };
  return coro::sync_wait(f.loop, body());
}
}  // namespace

TEST_CASE("the kernels run as machine code built for this device, not JIT-compiled PTX", "[cuda][build]") {
  fixture f;
  cudaDeviceProp props{};
  REQUIRE(cudaGetDeviceProperties(&props, 0) == cudaSuccess);
  const int cc = props.major * 10 + props.minor;
  std::stringstream list(COBATCH_TEST_CUDA_ARCHITECTURES);
  std::string item;
  bool built_for_device = false;
  while (std::getline(list, item, ',')) {
    if (std::stoi(item) == cc && item.find("-virtual") == std::string::npos) built_for_device = true;
  }
  INFO("device " << props.name << " is sm_" << cc << "; built for " << COBATCH_TEST_CUDA_ARCHITECTURES);
  if (cc == 90) CHECK(built_for_device);  // Hopper (H100, H200) is a target of the default build
  if (built_for_device) CHECK(probe::binary_version() == cc);
}

TEST_CASE("a launch reports its own status, not an earlier error left on the thread", "[cuda][error]") {
  fixture f;
  auto s = f.dev.make_stream();
  SECTION("an error that a check threw") {
    CHECK_THROWS_AS(COBATCH_CUDA_CHECK(cudaSetDevice(9999)), gpu::cuda::cuda_error);
    CHECK(cudaPeekAtLastError() == cudaSuccess);  // the throw took it off the thread
  }
  SECTION("an error nobody read") {
    // Someone else's call failed and left cudaErrorInvalidDevice as the
    // thread's last error.
    REQUIRE(cudaSetDevice(9999) == cudaErrorInvalidDevice);
  }
  f.dev.make_current();
  probe::empty(s);
  CHECK_FALSE(s.ref().error());
  CHECK_FALSE(wait_for(f, s));
  cudaGetLastError();
}

// Failures of host functions crossing joins are a promise of every backend
// (tests/support/backend_contract.hpp); a launch CUDA refused is this
// backend's own kind of failure, and must cross a join as well.
TEST_CASE("a refused launch crosses a stream join", "[cuda][stream][join]") {
  fixture f;
  auto a = f.dev.make_stream();
  auto b = f.dev.make_stream();
  auto b_before = b.ref().mark();
  probe::invalid_launch(a);
  auto after_a = f.dev.make_event();
  a.record(after_a);
  b.wait(after_a);
  probe::empty(b);
  const auto ec = wait_for(f, b);
  CHECK(cuda_test::is_refused_launch(ec));
  CHECK(b.ref().error() == ec);
  auto earlier = [&]() -> coro::task<std::error_code> {
    auto [e] = co_await f.reactor.async_wait(b_before, coro::as_tuple_task);
    co_return e;
  };
  CHECK_FALSE(coro::sync_wait(f.loop, earlier()));
}

TEST_CASE("awaiting while a capture is open on the same thread leaves the capture intact", "[cuda][capture]") {
  fixture f;
  auto capturing = f.dev.make_stream();
  auto other = f.dev.make_stream();
  constexpr std::size_t n = 1024;
  gpu::cuda::device_buffer in(n * sizeof(float), capturing), out(n * sizeof(float), capturing);
  gpu::cuda::fill_async(in.data(), 0, n * sizeof(float), capturing);
  CHECK_FALSE(wait_for(f, capturing));

  capturing.ref().begin_capture();
  probe::scale_copy(in.as<float>(), out.as<float>(), n, 3.0f, capturing);
  // The reactor polls other's fence on this thread, the capturing one, as
  // does error(); both must be legal during the capture.
  probe::spin(2'000'000, nullptr, 0, other);
  CHECK_FALSE(wait_for(f, other));
  CHECK_FALSE(other.ref().error());
  CHECK_FALSE(capturing.ref().error());
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  REQUIRE(cudaStreamIsCapturing(static_cast<cudaStream_t>(capturing.ref().native_handle()), &status) == cudaSuccess);
  CHECK(status == cudaStreamCaptureStatusActive);  // not invalidated
  auto g = capturing.ref().end_capture();
  CHECK(g.node_count() == 1);
  auto exec = g.instantiate();
  exec.launch(capturing);
  CHECK_FALSE(wait_for(f, capturing));
}

TEST_CASE("destroying a stream waits for its enqueued work", "[cuda][stream]") {
  fixture f;
  std::atomic<bool> ran{false};
  {
    auto s = f.dev.make_stream();
    probe::spin(20'000'000, nullptr, 0, s);  // about 10 ms
    s.enqueue([&] { ran.store(true); });
  }
  CHECK(ran.load());
}
