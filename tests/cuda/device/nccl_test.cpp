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

namespace {
// Every visible GPU, one rank each, driven from this thread.
struct local_world {
  coro::run_loop loop;
  coro::completion_reactor reactor{loop.get_executor()};
  std::vector<std::unique_ptr<gpu::cuda::cuda_device>> devices;
  std::vector<gpu::communicator> comms;
  std::vector<gpu::stream> streams;

  local_world() {
    loop.attach(reactor);
    std::vector<gpu::cuda::cuda_device*> raw;
    for (int d = 0; d < gpu::cuda::cuda_device::count(); ++d) {
      devices.push_back(std::make_unique<gpu::cuda::cuda_device>(reactor, d));
      raw.push_back(devices.back().get());
    }
    comms = nccl::make_local_communicators(raw, {30s});
    for (auto& d : devices) streams.push_back(d->make_stream({gpu::stream_priority::high}));
  }
  int size() const { return static_cast<int>(devices.size()); }

  void wait_all() {
    auto body = [&]() -> coro::task<void> {
      for (std::size_t r = 0; r < streams.size(); ++r) {
        co_await gpu::async_wait_collective(comms[r], streams[r], coro::use_task);
      }
    };
    coro::sync_wait(loop, body());
  }
};
}  // namespace

TEST_CASE("NCCL all_gather and all_to_all in single-process mode return the expected data", "[cuda][nccl]") {
  local_world w;
  const int world = w.size();
  constexpr std::size_t count = 1024;
  std::vector<gpu::cuda::device_buffer> send, gathered, a2a_in, a2a_out;
  std::vector<gpu::cuda::allocation> host_send, host_gathered, host_a2a;
  for (int r = 0; r < world; ++r) {
    w.devices[r]->make_current();
    auto& s = w.streams[r];
    send.emplace_back(count * sizeof(float), s);
    gathered.emplace_back(count * world * sizeof(float), s);
    a2a_in.emplace_back(count * world * sizeof(float), s);
    a2a_out.emplace_back(count * world * sizeof(float), s);
    host_send.push_back(cuda_test::pinned_floats(count * world));
    host_gathered.push_back(cuda_test::pinned_floats(count * world));
    host_a2a.push_back(cuda_test::pinned_floats(count * world));
    // Element i of the slice for rank q on rank r: 1e6 r + 1e3 q + i.
    for (int q = 0; q < world; ++q) {
      for (std::size_t i = 0; i < count; ++i) {
        host_send[r].as<float>()[q * count + i] = float(1000000 * r + 1000 * q + int(i % 1000));
      }
    }
    gpu::cuda::copy_async(send[r].data(), host_send[r].data(), count * sizeof(float), s);
    gpu::cuda::copy_async(a2a_in[r].data(), host_send[r].data(), count * world * sizeof(float), s);
  }
  {
    nccl::thread_group_guard all_ranks;  // one thread drives every rank
    for (int r = 0; r < world; ++r) {
      w.comms[r].all_gather(send[r].data(), gathered[r].data(), count, gpu::data_type::f32, w.streams[r]);
      gpu::group_guard p2p(w.comms[r]);
      w.comms[r].all_to_all(p2p, a2a_in[r].data(), a2a_out[r].data(), count, gpu::data_type::f32, w.streams[r]);
    }
  }
  for (int r = 0; r < world; ++r) {
    w.devices[r]->make_current();
    gpu::cuda::copy_async(host_gathered[r].data(), gathered[r].data(), count * world * sizeof(float), w.streams[r]);
    gpu::cuda::copy_async(host_a2a[r].data(), a2a_out[r].data(), count * world * sizeof(float), w.streams[r]);
  }
  w.wait_all();
  for (int r = 0; r < world; ++r) {
    for (int q = 0; q < world; ++q) {
      for (std::size_t i = 0; i < count; i += 31) {
        // all_gather: slice q is rank q's send (its slice 0).
        REQUIRE(host_gathered[r].as<float>()[q * count + i] == float(1000000 * q + int(i % 1000)));
        // all_to_all: slice q is rank q's slice for r.
        REQUIRE(host_a2a[r].as<float>()[q * count + i] == float(1000000 * q + 1000 * r + int(i % 1000)));
      }
    }
  }
}

TEST_CASE("an aborted NCCL communicator refuses further collectives", "[cuda][nccl]") {
  local_world w;
  gpu::cuda::device_buffer buf(sizeof(float) * 4 * w.size(), w.streams[0]);
  w.comms[0].abort();
  try {
    w.comms[0].all_reduce(buf.data(), buf.data(), 4, gpu::data_type::f32, gpu::reduce_op::sum, w.streams[0]);
    FAIL("all_reduce on an aborted communicator did not throw");
  } catch (const std::system_error& e) {
    CHECK(e.code() == gpu::errc::communicator_aborted);
  }
}

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
