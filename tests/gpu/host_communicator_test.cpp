#include "cobatch/gpu/communicator.hpp"

#include "cobatch/coro/run_loop.hpp"
#include "cobatch/gpu/collective_wait.hpp"
#include "cobatch/coro/sync_wait.hpp"
#include "cobatch/coro/use_task.hpp"
#include "cobatch/gpu/error.hpp"
#include "cobatch/gpu/host/host_device.hpp"
#include "host_fixture.hpp"

#include <asio/bind_cancellation_slot.hpp>
#include <asio/bind_executor.hpp>
#include <asio/cancellation_signal.hpp>
#include <asio/post.hpp>
#include <catch2/catch.hpp>

#include <chrono>
#include <cstdint>
#include <thread>
#include <vector>

using namespace cobatch;

namespace {
struct fixture : test::host_fixture {

  void wait_all(std::vector<gpu::stream>& streams) {
    auto body = [&]() -> coro::task<void> {
      for (auto& s : streams) co_await s.async_wait(coro::use_task);
    };
    coro::sync_wait(loop, body());
  }
};
}  // namespace

TEST_CASE("all_to_all sends slice r of every rank to rank r", "[gpu][host][comm]") {
  fixture f;
  constexpr int world = 3;
  constexpr std::size_t count = 4;
  auto comms = gpu::host::make_communicators(world);
  std::vector<gpu::stream> streams;
  for (int r = 0; r < world; ++r) streams.push_back(f.dev.make_stream());
  std::vector<std::vector<std::int32_t>> send(world), recv(world, std::vector<std::int32_t>(count * world, -1));
  // Element i of the slice rank r sends to rank q encodes (r, q, i).
  for (int r = 0; r < world; ++r) {
    for (int q = 0; q < world; ++q) {
      for (std::size_t i = 0; i < count; ++i) send[r].push_back(100 * r + 10 * q + static_cast<int>(i));
    }
  }
  for (int r = 0; r < world; ++r) {
    gpu::group_guard group(comms[r]);
    comms[r].all_to_all(group, send[r].data(), recv[r].data(), count, gpu::data_type::i32, streams[r]);
  }
  f.wait_all(streams);
  for (int r = 0; r < world; ++r) {
    for (int q = 0; q < world; ++q) {
      for (std::size_t i = 0; i < count; ++i) {
        CHECK(recv[r][static_cast<std::size_t>(q) * count + i] == 100 * q + 10 * r + static_cast<int>(i));
      }
    }
  }
}

TEST_CASE("all_to_all rejects overlapping buffers and calls outside a group", "[gpu][host][comm]") {
  fixture f;
  auto comms = gpu::host::make_communicators(2);
  auto s = f.dev.make_stream();
  std::vector<float> buf(8);
  gpu::group_guard group(comms[0]);
  CHECK_THROWS_AS(comms[0].all_to_all(group, buf.data(), buf.data() + 1, 2, gpu::data_type::f32, s),
                  std::system_error);
  group.end();
  // An ended guard opens no group any more.
  CHECK_THROWS_AS(comms[0].all_to_all(group, buf.data(), buf.data() + 4, 2, gpu::data_type::f32, s),
                  std::system_error);
}

TEST_CASE("a grouped exchange in which both ranks send first does not deadlock", "[gpu][host][comm]") {
  fixture f;
  // With a short timeout a deadlock would surface as errc::timeout.
  auto comms = gpu::host::make_communicators(2, {std::chrono::milliseconds(2000)});
  std::vector<gpu::stream> streams;
  streams.push_back(f.dev.make_stream());
  streams.push_back(f.dev.make_stream());
  std::vector<std::vector<double>> out{{1.5, 2.5}, {-3.0, -4.0}}, in(2, std::vector<double>(2, 0.0));
  for (int r = 0; r < 2; ++r) {
    gpu::group_guard group(comms[r]);
    comms[r].send(group, out[r].data(), 2, gpu::data_type::f64, 1 - r, streams[r]);
    comms[r].recv(group, in[r].data(), 2, gpu::data_type::f64, 1 - r, streams[r]);
  }
  f.wait_all(streams);
  CHECK(in[0] == out[1]);
  CHECK(in[1] == out[0]);
}

TEST_CASE("a receive of another size than was sent fails with rank_mismatch", "[gpu][host][comm]") {
  fixture f;
  auto comms = gpu::host::make_communicators(2, {std::chrono::milliseconds(2000)});
  auto s0 = f.dev.make_stream();
  auto s1 = f.dev.make_stream();
  std::vector<float> a(4, 1.0f), b(4, 0.0f);
  {
    gpu::group_guard g0(comms[0]);
    gpu::group_guard g1(comms[1]);
    comms[0].send(g0, a.data(), 4, gpu::data_type::f32, 1, s0);
    comms[1].recv(g1, b.data(), 3, gpu::data_type::f32, 0, s1);
  }
  auto body = [&]() -> coro::task<std::error_code> {
    auto [ec] = co_await s1.async_wait(coro::as_tuple_task);
    co_await s0.async_wait(coro::as_tuple_task);
    co_return ec;
  };
  CHECK(coro::sync_wait(f.loop, body()) == gpu::errc::rank_mismatch);
}

TEST_CASE("cancelling a wait on a collective aborts the communicator, so no rank waits forever",
          "[gpu][host][comm]") {
  fixture f;
  // No timeout: only the abort can end the collective rank 1 never joins.
  auto comms = gpu::host::make_communicators(2, {std::chrono::milliseconds(0)});
  auto s = f.dev.make_stream();
  float x = 1, y = 0;
  comms[0].all_reduce(&x, &y, 1, gpu::data_type::f32, gpu::reduce_op::sum, s);
  asio::cancellation_signal cancel;
  std::error_code waited;
  bool done = false;
  gpu::async_wait_collective(comms[0], s,
                             asio::bind_cancellation_slot(cancel.slot(), asio::bind_executor(f.loop.get_executor(),
                                                                                              [&](std::error_code ec) {
                                                                                                waited = ec;
                                                                                                done = true;
                                                                                              })));
  // The wait was initiated above; the loop runs the cancellation first.
  asio::post(f.loop.get_executor(), [&] { cancel.emit(asio::cancellation_type::terminal); });
  f.loop.restart();
  f.loop.run();
  REQUIRE(done);
  CHECK(waited == asio::error::operation_aborted);
  // The collective itself now fails on the stream instead of hanging it.
  auto body = [&]() -> coro::task<std::error_code> {
    auto [ec] = co_await s.async_wait(coro::as_tuple_task);
    co_return ec;
  };
  CHECK(coro::sync_wait(f.loop, body()) == gpu::errc::communicator_aborted);
}

TEST_CASE("a point-to-point size mismatch fails every rank with rank_mismatch, the sender and bystanders too",
          "[gpu][host][comm]") {
  fixture f;
  // No timeout: a bystander must learn of the mismatch, not wait for ever.
  auto comms = gpu::host::make_communicators(3, {std::chrono::milliseconds(0)});
  gpu::stream s[3] = {f.dev.make_stream(), f.dev.make_stream(), f.dev.make_stream()};
  std::vector<float> a(4, 1.0f), b(4, 0.0f);
  float x[3] = {1, 2, 3}, y[3] = {0, 0, 0};
  {
    gpu::group_guard g0(comms[0]);
    gpu::group_guard g1(comms[1]);
    comms[0].send(g0, a.data(), 4, gpu::data_type::f32, 1, s[0]);
    comms[1].recv(g1, b.data(), 3, gpu::data_type::f32, 0, s[1]);
  }
  // Rank 2 is not part of the exchange; it waits at the next collective.
  comms[2].all_reduce(&x[2], &y[2], 1, gpu::data_type::f32, gpu::reduce_op::sum, s[2]);
  auto body = [&](int r) -> coro::task<std::error_code> {
    auto [ec] = co_await s[r].async_wait(coro::as_tuple_task);
    co_return ec;
  };
  CHECK(coro::sync_wait(f.loop, body(1)) == gpu::errc::rank_mismatch);
  CHECK(coro::sync_wait(f.loop, body(0)) == gpu::errc::rank_mismatch);
  CHECK(coro::sync_wait(f.loop, body(2)) == gpu::errc::rank_mismatch);
}
