// NCCL failure paths on one GPU: a group or a call that fails after NCCL
// accepted it, a collective's failure crossing a stream join, and
// collectives captured into a graph. NCCL cannot be made to fail on demand
// once a call is accepted on a single GPU, so the failure is injected
// (nccl_fault.hpp) at the point where NCCL would report it: after the calls
// were enqueued.
#include "cobatch/gpu/cuda/nccl_communicator.hpp"

#include "cobatch/gpu/collective_wait.hpp"
#include "cobatch/gpu/cuda/error.hpp"
#include "cobatch/gpu/cuda/probe_kernels.hpp"
#include "cobatch/gpu/error.hpp"
#include "cuda_fixture.hpp"
#include "nccl_fault.hpp"

#include <catch2/catch.hpp>
#include <cuda_runtime.h>

using namespace cobatch;
using namespace std::chrono_literals;
namespace nccl = gpu::cuda::nccl;
namespace probe = gpu::cuda::probe;

namespace {
struct one_rank : cuda_test::fixture {
  gpu::communicator comm = std::move(nccl::make_local_communicators({&dev}, {30s}).front());
  gpu::stream comm_stream = dev.make_stream({gpu::stream_priority::high});

  std::error_code wait_for(gpu::stream_ref s) {
    auto body = [&]() -> coro::task<std::error_code> {
      auto [ec] = co_await s.async_wait(coro::as_tuple_task);
      co_return ec;
    };
    return coro::sync_wait(loop, body());
  }
};
const auto remote_error = gpu::cuda::make_nccl_error_code(6);  // ncclRemoteError: a peer died
}  // namespace

TEST_CASE("every stream of a group that failed after issuing fails", "[cuda][nccl][failure]") {
  one_rank w;
  gpu::cuda::device_buffer send(4 * sizeof(float), w.comm_stream), recv(4 * sizeof(float), w.comm_stream);
  auto second = w.dev.make_stream();
  gpu::cuda::device_buffer send2(4 * sizeof(float), second), recv2(4 * sizeof(float), second);
  SECTION("the guard's destructor swallows the exception, the streams do not") {
    {
      nccl::thread_group_guard group;
      w.comm.all_gather(send.data(), recv.data(), 4, gpu::data_type::f32, w.comm_stream);
      w.comm.all_gather(send2.data(), recv2.data(), 4, gpu::data_type::f32, second);
      nccl::fault::fail_next_enqueue_wait(remote_error);
    }
  }
  SECTION("end() throws, and the streams fail as well") {
    nccl::thread_group_guard group;
    w.comm.all_gather(send.data(), recv.data(), 4, gpu::data_type::f32, w.comm_stream);
    w.comm.all_gather(send2.data(), recv2.data(), 4, gpu::data_type::f32, second);
    nccl::fault::fail_next_enqueue_wait(remote_error);
    CHECK_THROWS_AS(group.end(), std::system_error);
  }
  CHECK(w.wait_for(w.comm_stream) == remote_error);
  CHECK(w.wait_for(second) == remote_error);
  CHECK(w.comm_stream.ref().error() == remote_error);
}

TEST_CASE("a collective that fails after issuing fails its stream", "[cuda][nccl][failure]") {
  one_rank w;
  gpu::cuda::device_buffer buf(4 * sizeof(float), w.comm_stream);
  nccl::fault::fail_next_enqueue_wait(remote_error);
  CHECK_THROWS_AS(w.comm.all_reduce(buf.data(), buf.data(), 4, gpu::data_type::f32, gpu::reduce_op::sum, w.comm_stream),
                  std::system_error);
  CHECK(w.wait_for(w.comm_stream) == remote_error);
}

TEST_CASE("a collective captured into a graph replays and is watched per launch", "[cuda][nccl][capture]") {
  one_rank w;
  constexpr std::size_t n = 256;
  gpu::cuda::device_buffer in(n * sizeof(float), w.comm_stream), out(n * sizeof(float), w.comm_stream);
  auto host = cuda_test::pinned_floats(n);
  for (std::size_t i = 0; i < n; ++i) host.as<float>()[i] = float(i);
  gpu::cuda::copy_async(in.data(), host.data(), n * sizeof(float), w.comm_stream);
  REQUIRE_FALSE(w.wait_for(w.comm_stream));

  w.comm_stream.ref().begin_capture();
  w.comm.all_reduce(in.data(), out.data(), n, gpu::data_type::f32, gpu::reduce_op::sum, w.comm_stream);
  probe::scale_copy(out.as<float>(), out.as<float>(), n, 2.0f, w.comm_stream);
  auto g = w.comm_stream.ref().end_capture();
  auto exec = g.instantiate();
  for (int replay = 0; replay < 3; ++replay) {
    gpu::cuda::fill_async(out.data(), 0, n * sizeof(float), w.comm_stream);
    exec.launch(w.comm_stream);
    gpu::cuda::copy_async(host.data(), out.data(), n * sizeof(float), w.comm_stream);
    auto body = [&]() -> coro::task<std::error_code> {
      auto [ec] = co_await gpu::async_wait_collective(w.comm, w.comm_stream, coro::as_tuple_task);
      co_return ec;
    };
    REQUIRE_FALSE(coro::sync_wait(w.loop, body()));
    for (std::size_t i = 0; i < n; i += 17) REQUIRE(host.as<float>()[i] == 2.0f * float(i));  // one rank: sum = input
    for (std::size_t i = 0; i < n; ++i) host.as<float>()[i] = float(i);
  }
  // After an abort, a replay fails its stream instead of running blind.
  w.comm.abort();
  exec.launch(w.comm_stream);
  CHECK(w.wait_for(w.comm_stream) == gpu::errc::communicator_aborted);
}
