#include "cobatch/engine/ubatch/ubatch_order.hpp"

#include "cobatch/coro/run_loop.hpp"
#include "cobatch/coro/sync_wait.hpp"
#include "cobatch/coro/use_task.hpp"
#include "cobatch/engine/ubatch/ubatch_scheduler.hpp"
#include "cobatch/gpu/host/host_device.hpp"
#include "engine_test_support.hpp"
#include "host_fixture.hpp"
#include "host_gate.hpp"

#include <catch2/catch.hpp>

#include <future>
#include <string>
#include <vector>

using namespace cobatch;
using engine::test::thrown_by;

namespace {

using fixture = test::host_pool_fixture;

}  // namespace

TEST_CASE("micro-batches are ordered by priority, ties by index", "[engine][ubatch][order]") {
  const std::vector<std::int32_t> p{0, 5, 0, 7, 5};
  CHECK(engine::order_by_priority(p) == std::vector<std::int32_t>{3, 1, 4, 0, 2});
  CHECK(engine::order_by_priority({}).empty());
}

TEST_CASE("decode micro-batches go before prefill ones", "[engine][ubatch][order]") {
  // Two prefills of 50 tokens, then 100 decodes: cut in two, micro-batch 0
  // holds the prefills, micro-batch 1 the decodes.
  std::vector<std::int32_t> q{50, 50};
  for (int i = 0; i < 100; ++i) q.push_back(1);
  const auto batch = engine::test::owned_batch::with_context(q, 10);
  const auto plan =
      engine::slice_batch(batch.view(), {2, 200}, {.thresholds = {.decode_tokens = 1, .prefill_tokens = 1}});
  REQUIRE(plan.size() == 2);
  CHECK_FALSE(engine::is_decode_ubatch(plan[0]));
  CHECK(engine::is_decode_ubatch(plan[1]));
  CHECK(engine::decode_first_order(plan) == std::vector<std::int32_t>{1, 0});
  // With a speculative length of 50 every micro-batch counts as decode.
  CHECK(engine::decode_first_order(plan, 50) == std::vector<std::int32_t>{0, 1});
  CHECK(thrown_by([&] { engine::decode_first_order(plan, 0); }).code() == engine::errc::invalid_argument);
}

TEST_CASE("a step takes turns in the order given; outputs stay in micro-batch order", "[engine][ubatch][order]") {
  fixture f;
  engine::ubatch_scheduler scheduler(f.dev, f.pool);
  std::vector<std::string> trace;
  auto body = [&](engine::ubatch_context& ctx) -> coro::task<int> {
    const auto me = std::to_string(ctx.index());
    trace.push_back(me + ":a");
    if (ctx.index() == 2) ctx.on_next_switch([&] { trace.push_back("hook of 2"); });
    co_await ctx.yield();
    trace.push_back(me + ":b");
    co_return ctx.index() * 10;
  };
  const std::vector<std::int32_t> order{2, 0, 1};
  const auto out = coro::sync_wait(f.loop, scheduler.run(3, body, {.turn_order = order}));
  CHECK(out == std::vector<int>{0, 10, 20});
  // The hook of 2 runs when the next in turn (0) reaches its switch.
  CHECK(trace == std::vector<std::string>{"2:a", "0:a", "hook of 2", "1:a", "2:b", "0:b", "1:b"});

  const std::vector<std::int32_t> short_order{0, 1};
  const std::vector<std::int32_t> twice{0, 1, 1};
  const std::vector<std::int32_t> outside{0, 3, 1};
  auto noop = [](engine::ubatch_context&) -> coro::task<void> { co_return; };
  auto e = thrown_by([&] { coro::sync_wait(f.loop, scheduler.run(3, noop, {.turn_order = short_order})); });
  CHECK(std::string(e.what()).find("2 entries for 3") != std::string::npos);
  e = thrown_by([&] { coro::sync_wait(f.loop, scheduler.run(3, noop, {.turn_order = twice})); });
  CHECK(std::string(e.what()).find("given twice") != std::string::npos);
  e = thrown_by([&] { coro::sync_wait(f.loop, scheduler.run(3, noop, {.turn_order = outside})); });
  CHECK(std::string(e.what()).find("outside [0, 3)") != std::string::npos);
  CHECK_NOTHROW(coro::sync_wait(f.loop, scheduler.run(3, noop)));  // usable after a rejected order
}

TEST_CASE("a stream pool's load is what was charged and is not done yet", "[engine][ubatch][least_loaded]") {
  fixture f;
  const auto compute = gpu::stream_role::compute;
  CHECK(f.pool.least_loaded(compute) == 0);
  test::scoped_host_gate g;
  g.hold(f.pool.at(compute, 0));
  f.pool.charge(compute, 0, 100, f.pool.at(compute, 0).mark());
  f.pool.charge(compute, 1, 30, gpu::fence{});  // already done
  CHECK(f.pool.load(compute, 0) == 100);
  CHECK(f.pool.load(compute, 1) == 0);
  CHECK(f.pool.least_loaded(compute) == 1);
  g.open();
  coro::sync_wait(f.loop, [&]() -> coro::task<void> { co_await f.pool.at(compute, 0).async_wait(coro::use_task); }());
  CHECK(f.pool.load(compute, 0) == 0);
  CHECK(f.pool.least_loaded(compute) == 0);
}

TEST_CASE("least_loaded gives each micro-batch the idlest stream and charges its tokens",
          "[engine][ubatch][least_loaded]") {
  fixture f;
  engine::ubatch_scheduler scheduler(f.dev, f.pool, {.streams = engine::stream_assignment::least_loaded});
  const auto compute = gpu::stream_role::compute;
  const auto comm = gpu::stream_role::communication;

  // Stream 0 of each role is busy with 1000 units of someone else's work.
  test::scoped_host_gate busy;
  for (auto role : {compute, comm}) {
    busy.hold(f.pool.at(role, 0));
    f.pool.charge(role, 0, 1000, f.pool.at(role, 0).mark());
  }
  std::vector<std::int32_t> q{40, 24, 8, 8};  // micro-batches of 40, 24 and 16 tokens
  const auto batch = engine::test::owned_batch::with_context(q, 0);
  auto plan = engine::slice_batch(batch.view(), {3, 80},
                                  {.mode = engine::split_mode::request_aligned,
                                   .thresholds = {.decode_tokens = 1, .prefill_tokens = 1},
                                   .min_request_aligned_share = 0});
  REQUIRE(plan.size() == 3);
  REQUIRE(plan[0].padded_tokens == 40);

  // Hold stream 1 of each role too, so this step's charges stay pending to be read.
  test::scoped_host_gate mine;
  for (auto role : {compute, comm}) mine.hold(f.pool.at(role, 1));

  std::vector<std::size_t> got;
  auto body = [&](engine::ubatch_context& ctx) -> coro::task<void> {
    for (std::size_t s = 0; s < 2; ++s)
      if (ctx.compute_stream() == f.pool.at(compute, s)) got.push_back(s);
    co_await ctx.switch_to_comm();
    CHECK(ctx.comm_stream() == f.pool.at(comm, got.back()));
  };
  coro::sync_wait(f.loop, scheduler.run(plan, body));
  // Every micro-batch lands on stream 1: 0 + 40 + 24 + 16 stays below 1000.
  CHECK(got == std::vector<std::size_t>{1, 1, 1});
  CHECK(f.pool.load(compute, 1) == 80);
  CHECK(f.pool.load(comm, 1) == 80);

  // Free stream 0; stream 1 still holds 80: the next step's first micro-batch
  // (in turn order: 2 goes first) gets stream 0 and the rest follow the loads.
  busy.open();
  coro::sync_wait(f.loop, [&]() -> coro::task<void> {
    co_await f.pool.at(compute, 0).async_wait(coro::use_task);
    co_await f.pool.at(comm, 0).async_wait(coro::use_task);
  }());
  got.clear();
  const std::vector<std::int32_t> order{2, 0, 1};
  coro::sync_wait(f.loop, scheduler.run(plan, body, {.turn_order = order}));
  // got is in turn order: mb2 (16) -> s0 (0 -> 16); mb0 (40) -> s0 (16 < 80; -> 56);
  // mb1 (24) -> s0 (56 < 80).
  CHECK(got == std::vector<std::size_t>{0, 0, 0});
  CHECK(scheduler.compute_stream(1) == f.pool.at(compute, 0));
  mine.open();
  coro::sync_wait(f.loop, [&]() -> coro::task<void> {
    for (std::size_t s = 0; s < 2; ++s) {
      co_await f.pool.at(compute, s).async_wait(coro::use_task);
      co_await f.pool.at(comm, s).async_wait(coro::use_task);
    }
  }());
  CHECK(f.pool.load(compute, 0) == 0);
  CHECK(f.pool.load(compute, 1) == 0);
}
