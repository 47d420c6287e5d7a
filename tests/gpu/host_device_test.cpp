#include "cobatch/gpu/host/host_device.hpp"

#include "cobatch/coro/run_loop.hpp"
#include "cobatch/coro/sync_wait.hpp"
#include "cobatch/coro/use_task.hpp"
#include "cobatch/gpu/device_memory.hpp"
#include "cobatch/gpu/error.hpp"
#include "cobatch/gpu/stream_pool.hpp"
#include "host_fixture.hpp"
#include "host_gate.hpp"

#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <numeric>
#include <random>
#include <thread>
#include <vector>

using namespace cobatch;
using namespace std::chrono_literals;

namespace {
using fixture = test::host_fixture;
}  // namespace

// Failures reaching awaiters, crossing joins and their codes are promises of
// every backend: tests/support/backend_contract.hpp. What the host backend
// adds is that work after a failure on the same stream is skipped.
TEST_CASE("work after a failure on a host stream is skipped", "[gpu][host][error]") {
  fixture f;
  auto s = f.dev.make_stream();
  bool later_ran = false;
  s.enqueue([] { throw std::system_error(std::make_error_code(std::errc::bad_message)); });
  s.enqueue([&] { later_ran = true; });
  auto body = [&]() -> coro::task<std::error_code> {
    auto [ec] = co_await s.async_wait(coro::as_tuple_task);
    co_return ec;
  };
  CHECK(coro::sync_wait(f.loop, body()) == std::errc::bad_message);
  CHECK_FALSE(later_ran);  // sticky: work after a failure is skipped
}

// Collectives' results are promises of every backend (the contract); here
// what the host communicator refuses.
TEST_CASE("host communicators refuse misuse", "[gpu][host][comm]") {
  fixture f;
  auto comms = gpu::host::make_communicators(4);
  auto s = f.dev.make_stream();
  std::vector<std::int64_t> token{77};
  {
    gpu::group_guard g0(comms[0]);
    CHECK_THROWS_AS(comms[0].send(g0, token.data(), 1, gpu::data_type::i64, 0, s), std::system_error);
    gpu::group_guard g1(comms[1]);  // a guard of another rank's communicator opens no group on rank 0
    CHECK_THROWS_AS(comms[0].send(g1, token.data(), 1, gpu::data_type::i64, 2, s), std::system_error);
  }
  CHECK_THROWS_AS(gpu::host::make_communicators(0), std::system_error);
}

TEST_CASE("an aborted or timed-out communicator fails every pending rank", "[gpu][host][comm]") {
  fixture f;
  SECTION("timeout") {
    auto comms = gpu::host::make_communicators(2, {std::chrono::milliseconds(20)});
    auto s = f.dev.make_stream();
    float x = 1, y = 0;
    comms[0].all_reduce(&x, &y, 1, gpu::data_type::f32, gpu::reduce_op::sum, s);  // rank 1 never comes
    auto body = [&]() -> coro::task<std::error_code> {
      auto [ec] = co_await s.async_wait(coro::as_tuple_task);
      co_return ec;
    };
    CHECK(coro::sync_wait(f.loop, body()) == gpu::errc::timeout);
  }
  SECTION("abort") {
    // Rank 1 aborts once rank 0 is known to wait for it at the all_reduce
    // (no timeout: without the abort, rank 0 would wait forever).
    test::host_gate rank0_waits;
    auto comms = gpu::host::make_communicators(2, {std::chrono::milliseconds(0)},
                                               {.before_block = [rank0_waits](int rank) {
                                                 if (rank == 0) rank0_waits.open();
                                               }});
    auto s = f.dev.make_stream();
    float x = 1, y = 0;
    comms[0].all_reduce(&x, &y, 1, gpu::data_type::f32, gpu::reduce_op::sum, s);
    std::thread aborter([&] {
      rank0_waits.wait();
      comms[1].abort();
    });
    auto body = [&]() -> coro::task<std::error_code> {
      auto [ec] = co_await s.async_wait(coro::as_tuple_task);
      co_return ec;
    };
    CHECK(coro::sync_wait(f.loop, body()) == gpu::errc::communicator_aborted);
    aborter.join();
  }
}

TEST_CASE("host device memory is budgeted", "[gpu][host][memory]") {
  coro::run_loop loop;
  coro::completion_reactor reactor(loop.get_executor());
  gpu::host::host_device dev(reactor, {.name = "small", .ordinal = 1, .memory_budget = 1000});
  CHECK(dev.memory().free == 1000);
  {
    auto a = dev.allocate(600);
    CHECK(dev.memory().in_use == 600);
    CHECK(dev.memory().free == 400);
    CHECK(a.as<std::byte>()[599] == std::byte{0});
    CHECK_THROWS_AS(dev.allocate(500), std::system_error);
  }
  CHECK(dev.memory().in_use == 0);
}

TEST_CASE("host device buffers are zeroed, 256-byte aligned, 2 MiB-aligned from 16 MiB", "[gpu][host][memory]") {
  coro::run_loop loop;
  coro::completion_reactor reactor(loop.get_executor());
  gpu::host::host_device dev(reactor, {.name = "large", .ordinal = 0, .memory_budget = std::size_t{64} << 20});
  const std::size_t big = (std::size_t{16} << 20) + 100;  // not a whole number of 2 MiB pages
  for (std::size_t bytes : {std::size_t{1}, std::size_t{4097}, big}) {
    auto b = dev.allocate(bytes);
    const auto address = reinterpret_cast<std::uintptr_t>(b.data());
    INFO(bytes << " bytes at " << address);
    CHECK(address % 256 == 0);
    if (bytes == big) CHECK(address % (std::size_t{2} << 20) == 0);
    CHECK(dev.memory().in_use == bytes);  // the budget counts what was asked for
    CHECK(b.data()[0] == std::byte{0});
    CHECK(b.data()[bytes - 1] == std::byte{0});
  }
  CHECK(dev.memory().in_use == 0);
  auto typed = gpu::typed_buffer<float>(dev, 3);
  CHECK(reinterpret_cast<std::uintptr_t>(typed.data()) % 256 == 0);
  CHECK(dev.memory().in_use == 3 * sizeof(float));
}

TEST_CASE("stream pools hand out compute and communication streams", "[gpu][host][pool]") {
  fixture f;
  gpu::stream_pool pool(f.dev, {.compute_streams = 2, .communication_streams = 1});
  auto a = pool.next(gpu::stream_role::compute);
  auto b = pool.next(gpu::stream_role::compute);
  auto c = pool.next(gpu::stream_role::compute);
  CHECK_FALSE(a == b);
  CHECK(a == c);
  CHECK(pool.next(gpu::stream_role::communication).priority() == gpu::stream_priority::high);
  CHECK(pool.at(gpu::stream_role::compute, 3) == b);
  CHECK_THROWS_AS(gpu::stream_pool(f.dev, {.compute_streams = 0}), std::invalid_argument);
}
