// A step never completes while the work it enqueued can still touch the
// caller's buffers, whatever is cancelled; and a scheduler runs one step at a
// time, whichever threads call run().
#include "cobatch/engine/ubatch/ubatch_scheduler.hpp"

#include "cobatch/coro/run_loop.hpp"
#include "cobatch/coro/spawn.hpp"
#include "cobatch/coro/sync_wait.hpp"
#include "cobatch/coro/use_task.hpp"
#include "cobatch/engine/error.hpp"
#include "cobatch/engine/ubatch/ubatch_error.hpp"
#include "cobatch/gpu/host/host_device.hpp"
#include "ubatch_fixture.hpp"
#include "host_gate.hpp"

#include <asio/bind_cancellation_slot.hpp>
#include <asio/cancellation_signal.hpp>
#include <catch2/catch.hpp>

#include <atomic>
#include <memory>
#include <stdexcept>
#include <thread>
#include <vector>

using namespace cobatch;

namespace {

using fixture = test::ubatch_fixture;

}  // namespace

TEST_CASE("cancelling a failed step while it drains its streams does not return before the work is done",
          "[engine][ubatch_scheduler][lifetime]") {
  fixture f;
  test::scoped_host_gate held;
  auto buffer = std::make_unique<std::vector<int>>(64, 0);
  std::atomic<bool> work_done{false};
  asio::cancellation_signal cancel;
  bool completed = false;
  bool work_done_at_completion = false;
  std::exception_ptr error;

  auto body = [&](engine::ubatch_context& ctx) -> coro::task<void> {
    if (ctx.index() == 0) {
      auto* data = buffer.get();
      held.hold(ctx.compute_stream());
      ctx.compute_stream().enqueue([&work_done, data] {
        for (auto& x : *data) x = 1;  // the caller's buffer
        work_done.store(true, std::memory_order_release);
      });
      throw std::runtime_error("micro-batch 0 fails after enqueueing");
    }
    co_await ctx.yield();
  };
  coro::spawn(f.loop.get_executor(), f.scheduler.run(2, body),
              asio::bind_cancellation_slot(cancel.slot(), [&](std::exception_ptr e) {
                completed = true;
                work_done_at_completion = work_done.load(std::memory_order_acquire);
                error = e;
                buffer.reset();  // the docs allow it once run() has returned
              }));
  // Run until the drain waits for the held stream.
  while (f.reactor.pending() == 0) f.loop.poll();
  // The caller cancels, again and again, while run() waits for the streams;
  // each round lets the loop deliver whatever the cancellation completed.
  for (int round = 0; round < 100 && !completed; ++round) {
    cancel.emit(asio::cancellation_type::terminal);
    f.loop.poll();
  }
  CHECK_FALSE(completed);
  held.open();
  while (!completed) f.loop.poll();
  CHECK(work_done_at_completion);
  REQUIRE(error);
  CHECK_THROWS_AS(std::rethrow_exception(error), engine::ubatch_error);
}

TEST_CASE("run() from a second thread while a step runs is refused, not a race",
          "[engine][ubatch_scheduler][threads]") {
  fixture f;
  test::scoped_host_gate held;
  // Relaxed on purpose: the second thread learns that the step runs without
  // any synchronisation, as an unrelated thread would.
  std::atomic<bool> step_running{false};
  auto body = [&](engine::ubatch_context& ctx) -> coro::task<void> {
    held.hold(ctx.compute_stream());
    step_running.store(true, std::memory_order_relaxed);
    co_await ctx.compute_stream().async_wait(coro::use_task);
  };
  std::error_code second_error;
  std::thread second([&] {
    while (!step_running.load(std::memory_order_relaxed)) std::this_thread::yield();
    coro::run_loop loop;
    auto other = [](engine::ubatch_context&) -> coro::task<void> { co_return; };
    try {
      coro::sync_wait(loop, f.scheduler.run(1, other));
    } catch (const engine::engine_error& e) {
      second_error = e.code();
    }
    held.open();
  });
  coro::sync_wait(f.loop, f.scheduler.run(1, body));
  second.join();
  CHECK(second_error == engine::errc::invalid_argument);
  // The first step's end frees the scheduler for the next one.
  auto again = [](engine::ubatch_context&) -> coro::task<void> { co_return; };
  coro::sync_wait(f.loop, f.scheduler.run(2, again));
}
