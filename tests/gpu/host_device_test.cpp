#include "cobatch/gpu/host/host_device.hpp"

#include "cobatch/coro/run_loop.hpp"
#include "cobatch/coro/sync_wait.hpp"
#include "cobatch/coro/use_task.hpp"
#include "cobatch/gpu/error.hpp"
#include "cobatch/gpu/stream_pool.hpp"
#include "host_fixture.hpp"
#include "host_gate.hpp"

#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <numeric>
#include <random>
#include <thread>
#include <vector>

using namespace cobatch;
using namespace std::chrono_literals;

namespace {
using fixture = test::host_fixture;
}  // namespace

TEST_CASE("a stream runs its work in order", "[gpu][host][stream]") {
  fixture f;
  auto s = f.dev.make_stream();
  std::vector<int> order;  // written only by the stream's worker
  for (int i = 0; i < 100; ++i) s.enqueue([&order, i] { order.push_back(i); });
  auto body = [&]() -> coro::task<void> { co_await s.async_wait(coro::use_task); };
  coro::sync_wait(f.loop, body());
  std::vector<int> expected(100);
  std::iota(expected.begin(), expected.end(), 0);
  CHECK(order == expected);
}

TEST_CASE("an event join makes one stream's data visible to another", "[gpu][host][event]") {
  fixture f;
  auto producer = f.dev.make_stream();
  auto consumer = f.dev.make_stream();
  auto ready = f.dev.make_event();
  std::vector<int> data(1000, 0);
  long sum = 0;
  // The producer is held until the consumer's work is enqueued too: only
  // the join keeps the consumer from reading first.
  test::host_gate produce;
  producer.enqueue([&, produce] {
    produce.wait();
    for (std::size_t i = 0; i < data.size(); ++i) data[i] = static_cast<int>(i);
  });
  producer.record(ready);
  consumer.wait(ready);  // device-side: no host thread blocks here
  consumer.enqueue([&] { sum = std::accumulate(data.begin(), data.end(), 0L); });
  produce.open();
  auto body = [&]() -> coro::task<void> { co_await consumer.async_wait(coro::use_task); };
  coro::sync_wait(f.loop, body());
  CHECK(sum == 999L * 1000 / 2);
  CHECK(ready.query().is_ready());
}

TEST_CASE("an awaited event resumes only after its work finished", "[gpu][host][event]") {
  fixture f;
  auto s = f.dev.make_stream();
  auto e = f.dev.make_event();
  CHECK(e.query().is_ready());  // never recorded: complete, as in CUDA
  std::atomic<bool> written{false};
  test::host_gate work;
  s.enqueue([&, work] {
    work.wait();
    written = true;
  });
  s.record(e);
  CHECK(e.query().is_pending());  // certain: the work waits for the gate
  work.open();
  auto body = [&]() -> coro::task<bool> {
    co_await e.async_wait(coro::use_task);
    co_return written.load();
  };
  CHECK(coro::sync_wait(f.loop, body()));
}

TEST_CASE("an error inside a stream operation reaches the awaiting coroutine", "[gpu][host][error]") {
  fixture f;
  auto s = f.dev.make_stream();
  bool later_ran = false;
  s.enqueue([] { throw std::system_error(std::make_error_code(std::errc::bad_message)); });
  s.enqueue([&] { later_ran = true; });
  auto body = [&]() -> coro::task<std::error_code> {
    try {
      co_await s.async_wait(coro::use_task);
    } catch (const std::system_error& e) {
      co_return e.code();
    }
    co_return std::error_code{};
  };
  CHECK(coro::sync_wait(f.loop, body()) == std::errc::bad_message);
  CHECK_FALSE(later_ran);  // sticky: work after a failure is skipped
  CHECK(s.ref().error() == std::errc::bad_message);

  // A stream that joins the failed one inherits the failure.
  auto other = f.dev.make_stream();
  auto e = f.dev.make_event();
  s.record(e);
  other.wait(e);
  auto joined = [&]() -> coro::task<std::error_code> {
    auto [ec] = co_await other.async_wait(coro::as_tuple_task);
    co_return ec;
  };
  CHECK(coro::sync_wait(f.loop, joined()) == std::errc::bad_message);

  auto unknown = f.dev.make_stream();
  unknown.enqueue([] { throw 42; });
  CHECK(coro::sync_wait(f.loop, [&]() -> coro::task<std::error_code> {
          auto [ec] = co_await unknown.async_wait(coro::as_tuple_task);
          co_return ec;
        }()) == gpu::errc::operation_failed);
}

TEST_CASE("a host graph replays the captured work and equals eager execution", "[gpu][host][graph]") {
  fixture f;
  auto s = f.dev.make_stream();
  auto done = f.dev.make_event();
  std::vector<float> in(256), out_eager(256), out_graph(256);
  auto step = [&](std::vector<float>& out) {
    // Three dependent operations: scale, shift, square.
    s.enqueue([&in, &out] {
      for (std::size_t i = 0; i < in.size(); ++i) out[i] = in[i] * 2.0f;
    });
    s.enqueue([&out] {
      for (auto& v : out) v += 1.0f;
    });
    s.enqueue([&out] {
      for (auto& v : out) v *= v;
    });
    s.record(done);
  };
  s.ref().begin_capture();
  step(out_graph);
  auto g = s.ref().end_capture();
  CHECK(g.node_count() == 4);
  auto exec = g.instantiate();

  std::mt19937 rng(7);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  for (int round = 0; round < 5; ++round) {
    auto body = [&]() -> coro::task<void> {
      for (auto& v : in) v = dist(rng);
      step(out_eager);
      co_await done.async_wait(coro::use_task);
      exec.launch(s);
      CHECK_FALSE(done.query().is_failed());
      co_await done.async_wait(coro::use_task);
    };
    coro::sync_wait(f.loop, body());
    REQUIRE(out_graph == out_eager);
  }
  CHECK_THROWS_AS(s.ref().end_capture(), std::system_error);
}

TEST_CASE("host communicators run collectives between ranks", "[gpu][host][comm]") {
  fixture f;
  constexpr int world = 4;
  auto comms = gpu::host::make_communicators(world);
  std::vector<gpu::stream> streams;
  for (int r = 0; r < world; ++r) streams.push_back(f.dev.make_stream({gpu::stream_priority::high}));

  std::vector<std::vector<float>> send(world), gathered(world, std::vector<float>(3 * world)),
      reduced(world, std::vector<float>(3)), scattered(world, std::vector<float>(2));
  std::vector<std::vector<float>> rs_in(world, std::vector<float>(2 * world));
  for (int r = 0; r < world; ++r) {
    send[r] = {float(r), float(10 * r), float(100 * r)};
    for (int i = 0; i < 2 * world; ++i) rs_in[r][i] = float(r + i);
    comms[r].all_gather(send[r].data(), gathered[r].data(), 3, gpu::data_type::f32, streams[r]);
    comms[r].all_reduce(send[r].data(), reduced[r].data(), 3, gpu::data_type::f32, gpu::reduce_op::sum, streams[r]);
    comms[r].reduce_scatter(rs_in[r].data(), scattered[r].data(), 2, gpu::data_type::f32, gpu::reduce_op::max,
                            streams[r]);
    comms[r].barrier(streams[r]);
  }
  std::vector<std::int64_t> token{0};
  std::vector<std::int64_t> got{-1};
  token[0] = 77;
  {
    gpu::group_guard g0(comms[0]);
    gpu::group_guard g3(comms[3]);
    comms[0].send(g0, token.data(), 1, gpu::data_type::i64, 3, streams[0]);
    comms[3].recv(g3, got.data(), 1, gpu::data_type::i64, 0, streams[3]);
  }

  auto body = [&]() -> coro::task<void> {
    for (auto& s : streams) co_await s.async_wait(coro::use_task);
  };
  coro::sync_wait(f.loop, body());
  for (int r = 0; r < world; ++r) {
    for (int q = 0; q < world; ++q) {
      CHECK(gathered[r][3 * q + 0] == float(q));
      CHECK(gathered[r][3 * q + 2] == float(100 * q));
    }
    CHECK(reduced[r] == std::vector<float>{6.0f, 60.0f, 600.0f});
    CHECK(scattered[r] == std::vector<float>{float(world - 1 + 2 * r), float(world + 2 * r)});
  }
  CHECK(got[0] == 77);
  {
    gpu::group_guard g0(comms[0]);
    CHECK_THROWS_AS(comms[0].send(g0, token.data(), 1, gpu::data_type::i64, 0, streams[0]), std::system_error);
    gpu::group_guard g1(comms[1]);  // a guard of another rank's communicator opens no group on rank 0
    CHECK_THROWS_AS(comms[0].send(g1, token.data(), 1, gpu::data_type::i64, 2, streams[0]), std::system_error);
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
    auto comms = gpu::host::make_communicators(2, {std::chrono::milliseconds(0)});
    auto s = f.dev.make_stream();
    float x = 1, y = 0;
    comms[0].all_reduce(&x, &y, 1, gpu::data_type::f32, gpu::reduce_op::sum, s);
    std::thread aborter([&] {
      std::this_thread::sleep_for(5ms);
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
