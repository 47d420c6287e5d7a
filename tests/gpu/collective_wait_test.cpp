#include "cobatch/gpu/collective_wait.hpp"

#include "cobatch/coro/run_loop.hpp"
#include "cobatch/coro/sync_wait.hpp"
#include "cobatch/coro/use_task.hpp"
#include "cobatch/gpu/error.hpp"
#include "cobatch/gpu/host/host_device.hpp"

#include <asio/bind_executor.hpp>
#include <catch2/catch.hpp>

#include <chrono>

using namespace cobatch;

TEST_CASE("a reactor that shuts down ends the wait without aborting the communicator", "[gpu][host][comm]") {
  // The device whose reactor goes away, and a second loop that sees the
  // collective through.
  coro::run_loop loop;
  coro::completion_reactor reactor{loop.get_executor()};
  loop.attach(reactor);
  gpu::host::host_device dev{reactor};
  coro::run_loop other_loop;
  coro::completion_reactor other{other_loop.get_executor()};
  other_loop.attach(other);

  auto comms = gpu::host::make_communicators(2, {std::chrono::milliseconds(0)});
  auto s0 = dev.make_stream();
  auto s1 = dev.make_stream();
  float x0 = 1, x1 = 2, y0 = 0, y1 = 0;
  comms[0].all_reduce(&x0, &y0, 1, gpu::data_type::f32, gpu::reduce_op::sum, s0);  // rank 1 has not joined yet
  std::error_code waited;
  bool done = false;
  gpu::async_wait_collective(comms[0], s0, asio::bind_executor(loop.get_executor(), [&](std::error_code ec) {
                               waited = ec;
                               done = true;
                             }));
  reactor.shutdown();
  loop.run();
  REQUIRE(done);
  CHECK(waited == asio::error::operation_aborted);

  // The collective is still alive: rank 1 joins and both ranks finish.
  comms[1].all_reduce(&x1, &y1, 1, gpu::data_type::f32, gpu::reduce_op::sum, s1);
  auto rank0 = s0.ref().mark();
  auto rank1 = s1.ref().mark();
  auto body = [&]() -> coro::task<std::error_code> {
    auto [e0] = co_await other.async_wait(rank0, coro::as_tuple_task);
    auto [e1] = co_await other.async_wait(rank1, coro::as_tuple_task);
    co_return e0 ? e0 : e1;
  };
  CHECK_FALSE(coro::sync_wait(other_loop, body()));
  CHECK(y0 == 3.0f);
  CHECK(y1 == 3.0f);
}
