#include "cobatch/engine/ubatch/ubatch_scheduler.hpp"

#include "cobatch/coro/run_loop.hpp"

#include <asio/bind_cancellation_slot.hpp>
#include "cobatch/coro/spawn.hpp"
#include "cobatch/coro/sync_wait.hpp"
#include "cobatch/coro/use_task.hpp"
#include "cobatch/engine/ubatch/ubatch_error.hpp"
#include "cobatch/engine/ubatch/timeline.hpp"
#include "cobatch/gpu/host/host_device.hpp"
#include "counted.hpp"
#include "engine_test_support.hpp"
#include "host_fixture.hpp"
#include "host_gate.hpp"
#include "ubatch_fixture.hpp"

#include <asio/bind_cancellation_slot.hpp>
#include <asio/error.hpp>
#include <asio/post.hpp>
#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <future>
#include <memory>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

using namespace cobatch;
using namespace std::chrono_literals;

namespace {

using fixture = test::ubatch_fixture;

// Fails the test process instead of letting a hung step hang CI.
class watchdog {
 public:
  explicit watchdog(std::chrono::seconds limit, std::string what)
      : thread_([this, limit, what = std::move(what)] {
          std::unique_lock lock(mutex_);
          if (!cv_.wait_for(lock, limit, [this] { return done_; })) {
            std::fprintf(stderr, "watchdog: %s did not finish within %lld s\n", what.c_str(),
                         static_cast<long long>(limit.count()));
            std::abort();
          }
        }) {}
  ~watchdog() {
    {
      std::lock_guard lock(mutex_);
      done_ = true;
    }
    cv_.notify_one();
    thread_.join();
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  bool done_ = false;
  std::thread thread_;
};

}  // namespace

TEST_CASE("micro-batches run in turn, switch by switch", "[engine][ubatch_scheduler]") {
  fixture f;
  std::vector<std::string> trace;
  auto body = [&](engine::ubatch_context& ctx) -> coro::task<void> {
    const auto me = std::to_string(ctx.index());
    trace.push_back(me + ":enter");
    co_await ctx.yield();
    trace.push_back(me + ":after-yield");
    co_await ctx.switch_to_comm();
    trace.push_back(me + ":on-comm");
    co_await ctx.switch_to_compute();
    trace.push_back(me + ":exit");
  };
  coro::sync_wait(f.loop, f.scheduler.run(3, body));
  const std::vector<std::string> expected = {
      "0:enter",   "1:enter",   "2:enter",   "0:after-yield", "1:after-yield", "2:after-yield",
      "0:on-comm", "1:on-comm", "2:on-comm", "0:exit",        "1:exit",        "2:exit"};
  CHECK(trace == expected);
}

TEST_CASE("a finished micro-batch drops out of the rotation", "[engine][ubatch_scheduler]") {
  fixture f;
  std::vector<std::string> trace;
  // Micro-batch i passes i + 1 switches.
  auto body = [&](engine::ubatch_context& ctx) -> coro::task<int> {
    for (int k = 0; k <= ctx.index(); ++k) {
      trace.push_back(std::to_string(ctx.index()) + "." + std::to_string(k));
      co_await ctx.yield();
    }
    trace.push_back(std::to_string(ctx.index()) + ".end");
    co_return ctx.index() * 10;
  };
  const auto outputs = coro::sync_wait(f.loop, f.scheduler.run(3, body));
  CHECK(outputs == std::vector<int>{0, 10, 20});
  const std::vector<std::string> expected = {"0.0", "1.0", "2.0", "0.end", "1.1", "2.1", "1.end", "2.2", "2.end"};
  CHECK(trace == expected);
}

TEST_CASE("one micro-batch switches to itself", "[engine][ubatch_scheduler]") {
  fixture f;
  int switches = 0;
  auto body = [&](engine::ubatch_context& ctx) -> coro::task<std::string> {
    co_await ctx.switch_to_comm();
    co_await ctx.switch_to_compute();
    co_await ctx.yield();
    switches = ctx.switches();
    co_return "only";
  };
  const auto outputs = coro::sync_wait(f.loop, f.scheduler.run(1, body));
  CHECK(outputs == std::vector<std::string>{"only"});
  CHECK(switches == 3);
}

TEST_CASE("switch_to_comm orders the comm stream after the compute stream", "[engine][ubatch_scheduler]") {
  fixture f;
  constexpr int n = 4;
  std::vector<int> produced(n, 0);
  std::vector<int> seen(n, -1);
  std::vector<int> final_value(n, -1);
  // The compute work is held until every micro-batch has enqueued its comm
  // work: only the joins keep the comm work from reading too early.
  test::host_gate compute_gate;
  auto body = [&](engine::ubatch_context& ctx) -> coro::task<void> {
    const int i = ctx.index();
    ctx.current_stream().enqueue([&produced, i, compute_gate] {
      compute_gate.wait();
      produced[i] = 100 + i;
    });
    co_await ctx.switch_to_comm();
    ctx.current_stream().enqueue([&seen, &produced, i] {
      seen[i] = produced[i];
      produced[i] += 1000;
    });
    co_await ctx.switch_to_compute();
    ctx.current_stream().enqueue([&final_value, &produced, i] { final_value[i] = produced[i]; });
  };
  auto step = [&]() -> coro::task<void> {
    co_await f.scheduler.run(n, body);
    compute_gate.open();
    // run() joined comm into compute: awaiting compute awaits the step.
    co_await f.scheduler.compute_stream(0).async_wait(coro::use_task);
  };
  coro::sync_wait(f.loop, step());
  for (int i = 0; i < n; ++i) {
    CHECK(seen[i] == 100 + i);
    CHECK(final_value[i] == 1100 + i);
  }
}

TEST_CASE("a hook runs when the next micro-batch reaches its next switch", "[engine][ubatch_scheduler]") {
  fixture f;
  std::vector<std::string> trace;
  auto body = [&](engine::ubatch_context& ctx) -> coro::task<void> {
    const auto me = std::to_string(ctx.index());
    trace.push_back(me + ":a");
    if (ctx.index() == 0) {
      ctx.on_next_switch([&trace] { trace.push_back("hook of 0"); });
    }
    co_await ctx.yield();
    trace.push_back(me + ":b");
    co_await ctx.yield();
    trace.push_back(me + ":c");
  };
  coro::sync_wait(f.loop, f.scheduler.run(2, body));
  const std::vector<std::string> expected = {"0:a", "1:a", "hook of 0", "0:b", "1:b", "0:c", "1:c"};
  CHECK(trace == expected);
}

TEST_CASE("an awaiting hook waits for the registrant's communication", "[engine][ubatch_scheduler]") {
  fixture f;
  std::atomic<int> received{0};
  std::vector<int> observed;
  // The "receive" finishes only once the loop thread is free to open the
  // gate, which it is only while the hook truly waits for the comm stream.
  test::host_gate arrived;
  auto body = [&](engine::ubatch_context& ctx) -> coro::task<void> {
    co_await ctx.switch_to_comm();
    if (ctx.index() == 0) {
      ctx.current_stream().enqueue([&received, arrived] {
        arrived.wait();
        received = 42;
      });
      asio::post(f.loop.get_executor(), [arrived] { arrived.open(); });
      gpu::stream_ref comm = ctx.current_stream();
      // vLLM's recv hook: wait for the all-to-all's data, but only once the
      // other micro-batch has enqueued its work.
      ctx.on_next_switch([comm]() -> coro::task<void> { co_await comm.async_wait(coro::use_task); });
    }
    co_await ctx.switch_to_compute();
    if (ctx.index() == 0) observed.push_back(received.load());
  };
  coro::sync_wait(f.loop, f.scheduler.run(2, body));
  CHECK(observed == std::vector<int>{42});
}

TEST_CASE("a task-returning hook's captures live as long as its task", "[engine][ubatch_scheduler][hook]") {
  // The lambda is called when registered, but its task runs at the next
  // switch: the captures (here a heap payload) must still be there then.
  fixture f;
  std::vector<int> seen;
  auto body = [&](engine::ubatch_context& ctx) -> coro::task<void> {
    if (ctx.index() == 0) {
      auto payload = std::make_unique<std::vector<int>>(std::vector<int>{7, 8, 9});
      ctx.on_next_switch([payload = std::move(payload), &seen]() -> coro::task<void> {
        co_await std::suspend_never{};
        seen.insert(seen.end(), payload->begin(), payload->end());
      });
    }
    co_await ctx.yield();
    co_await ctx.yield();
  };
  coro::sync_wait(f.loop, f.scheduler.run(2, body));
  CHECK(seen == std::vector<int>{7, 8, 9});
}

TEST_CASE("a step never hangs when any micro-batch fails at any switch", "[engine][ubatch_scheduler][failure]") {
  watchdog dog(120s, "the failure-injection sweep");
  constexpr int switches_per_mb = 4;
  for (int n = 1; n <= 4; ++n) {
    for (int victim = 0; victim < n; ++victim) {
      for (int fail_at = 0; fail_at <= switches_per_mb; ++fail_at) {
        CAPTURE(n, victim, fail_at);
        fixture f;
        test::counted::reset();
        std::vector<int> progress(n, 0);  // switches each micro-batch came back from
        std::vector<int> started(n, 0);
        auto body = [&](engine::ubatch_context& ctx) -> coro::task<int> {
          test::counted frame_local;
          const int i = ctx.index();
          started[i] = 1;
          for (int k = 0; k < switches_per_mb; ++k) {
            if (i == victim && k == fail_at) throw std::runtime_error("injected failure");
            ctx.current_stream().enqueue([] {});  // work the failed step must drain
            if (k % 2 == 0) {
              co_await ctx.switch_to_comm();
            } else {
              co_await ctx.switch_to_compute();
            }
            ++progress[i];
          }
          if (i == victim) throw std::runtime_error("injected failure");
          co_return i;
        };
        bool threw = false;
        try {
          coro::sync_wait(f.loop, f.scheduler.run(n, body));
        } catch (const engine::ubatch_error& e) {
          threw = true;
          CHECK(e.code() == engine::errc::ubatch_failed);
          CHECK(e.ubatch() == victim);
          CHECK(e.count() == n);
          CHECK(e.switches() == fail_at);
          CHECK(std::string(e.what()).find("micro-batch " + std::to_string(victim)) != std::string::npos);
          CHECK(std::string(e.what()).find("injected failure") != std::string::npos);
          REQUIRE(e.cause());
          CHECK_THROWS_AS(std::rethrow_exception(e.cause()), std::runtime_error);
        }
        CHECK(threw);
        CHECK(test::counted::alive == 0);  // every frame that started was destroyed
        for (int i = 0; i < n; ++i) {
          if (i == victim) continue;
          // A sibling gets at most to its next switch after the failure:
          // siblings before the victim in the turn order got as far as the
          // victim, those after it one switch less.
          const int limit = i < victim ? fail_at : std::max(0, fail_at - 1);
          CHECK(progress[i] <= limit);
          if (fail_at == 0 && i > victim) CHECK(started[i] == 0);  // never started
        }
      }
    }
  }
}

TEST_CASE("a throwing hook fails the micro-batch that registered it", "[engine][ubatch_scheduler][failure]") {
  fixture f;
  watchdog dog(30s, "the throwing hook step");
  auto body = [&](engine::ubatch_context& ctx) -> coro::task<void> {
    if (ctx.index() == 1) ctx.on_next_switch([] { throw std::runtime_error("recv failed"); });
    co_await ctx.yield();
    co_await ctx.yield();
  };
  const auto e = engine::test::thrown_by<engine::ubatch_error>([&] { coro::sync_wait(f.loop, f.scheduler.run(3, body)); });
  CHECK(e.ubatch() == 1);
  CHECK(std::string(e.what()).find("recv failed") != std::string::npos);
}

TEST_CASE("the caller's cancellation ends the step with operation_aborted", "[engine][ubatch_scheduler]") {
  fixture f;
  watchdog dog(30s, "the cancelled step");
  asio::cancellation_signal cancel;
  std::vector<int> after_cancel;
  test::host_gate device_work;
  auto body = [&](engine::ubatch_context& ctx) -> coro::task<void> {
    if (ctx.index() == 0) {
      // Device work awaited on the host: the caller gives up meanwhile, and
      // only then does the work finish (the step drains it before throwing).
      ctx.current_stream().enqueue([device_work] { device_work.wait(); });
      asio::post(f.loop.get_executor(), [&cancel, device_work] {
        cancel.emit(asio::cancellation_type::terminal);
        device_work.open();
      });
      co_await ctx.current_stream().async_wait(coro::use_task);
    }
    co_await ctx.yield();
    after_cancel.push_back(ctx.index());
  };
  std::exception_ptr error;
  bool done = false;
  coro::spawn(f.loop.get_executor(), f.scheduler.run(2, body),
              asio::bind_cancellation_slot(cancel.slot(), [&](std::exception_ptr e) {
                error = e;
                done = true;
              }));
  f.run_until(done);
  REQUIRE(error);
  try {
    std::rethrow_exception(error);
  } catch (const std::system_error& e) {
    CHECK(e.code() == asio::error::operation_aborted);
  }
  CHECK(after_cancel.empty());
}

TEST_CASE("bad use of a scheduler gets a clear error", "[engine][ubatch_scheduler]") {
  fixture f;
  auto noop = [](engine::ubatch_context&) -> coro::task<void> { co_return; };
  auto zero = engine::test::thrown_by([&] { coro::sync_wait(f.loop, f.scheduler.run(0, noop)); });
  CHECK(zero.code() == engine::errc::invalid_argument);
  CHECK(std::string(zero.what()).find("at least 1") != std::string::npos);

  auto twice = [](engine::ubatch_context& ctx) -> coro::task<void> {
    co_await ctx.switch_to_comm();
    co_await ctx.switch_to_comm();
  };
  const auto twice_error =
      engine::test::thrown_by<engine::ubatch_error>([&] { coro::sync_wait(f.loop, f.scheduler.run(2, twice)); });
  CHECK(twice_error.ubatch() == 0);
  CHECK(std::string(twice_error.what()).find("already on the comm stream") != std::string::npos);

  auto no_plan = [](engine::ubatch_context& ctx) -> coro::task<void> {
    (void)ctx.slice();
    co_return;
  };
  CHECK_THROWS_AS(coro::sync_wait(f.loop, f.scheduler.run(1, no_plan)), engine::ubatch_error);

  // One step at a time per scheduler.
  auto nested = [&](engine::ubatch_context&) -> coro::task<void> { co_await f.scheduler.run(1, noop); };
  const auto nested_error =
      engine::test::thrown_by<engine::ubatch_error>([&] { coro::sync_wait(f.loop, f.scheduler.run(1, nested)); });
  CHECK(std::string(nested_error.what()).find("already running") != std::string::npos);
  // ...and the scheduler is usable again afterwards.
  CHECK_NOTHROW(coro::sync_wait(f.loop, f.scheduler.run(2, noop)));
}

TEST_CASE("a step over a plan hands each micro-batch its slice", "[engine][ubatch_scheduler]") {
  fixture f;
  const auto batch = engine::test::owned_batch::with_context({5, 300, 7, 200, 1, 512}, 16);
  const auto plan = engine::slice_batch(batch.view(), {3, 1032}, {.thresholds = {.prefill_tokens = 1}});
  REQUIRE(plan.size() == 3);
  auto body = [&](engine::ubatch_context& ctx) -> coro::task<std::vector<std::int32_t>> {
    const auto& s = ctx.slice();
    co_await ctx.yield();
    co_return std::vector<std::int32_t>{s.token_begin, s.token_end, s.padded_tokens};
  };
  const auto outputs = coro::sync_wait(f.loop, f.scheduler.run(plan, body));
  REQUIRE(outputs.size() == 3);
  for (std::int32_t k = 0; k < 3; ++k) {
    CHECK(outputs[k] == std::vector<std::int32_t>{plan[k].token_begin, plan[k].token_end, plan[k].padded_tokens});
  }
}

TEST_CASE("a traced step records spans per micro-batch per lane", "[engine][ubatch_scheduler][timeline]") {
  fixture f;
  engine::timeline tl;
  f.scheduler.set_timeline(&tl);
  auto body = [&](engine::ubatch_context& ctx) -> coro::task<void> {
    for (int layer = 0; layer < 2; ++layer) {
      ctx.label("attn");
      ctx.current_stream().enqueue([] {});
      co_await ctx.switch_to_comm();
      ctx.label("all-to-all");
      ctx.current_stream().enqueue([] {});
      co_await ctx.switch_to_compute();
    }
  };
  auto step = [&]() -> coro::task<void> {
    co_await f.scheduler.run(2, body);
    co_await f.scheduler.compute_stream(0).async_wait(coro::use_task);
  };
  coro::sync_wait(f.loop, step());
  const auto spans = tl.spans();
  int compute = 0, comm = 0, host = 0;
  for (const auto& s : spans) {
    REQUIRE(s.complete());
    if (s.lane == "compute") {
      ++compute;
      CHECK((s.label == "attn" || s.label == "compute"));
    }
    if (s.lane == "comm") {
      ++comm;
      CHECK(s.label == "all-to-all");
    }
    if (s.lane == "host") ++host;
  }
  CHECK(compute == 2 * 3);  // two layers, plus the empty tail span, per micro-batch
  CHECK(comm == 2 * 2);
  CHECK(host == 2 * 5);     // four switches and the end, per micro-batch
  // Shared streams: a micro-batch's comm span never overlaps another's.
  for (const auto& a : spans) {
    for (const auto& b : spans) {
      if (&a == &b || a.lane != "comm" || b.lane != "comm") continue;
      CHECK((a.end_us <= b.begin_us + 1.0 || b.end_us <= a.begin_us + 1.0));
    }
  }
  std::ostringstream json, svg;
  tl.write_chrome_trace(json);
  tl.write_svg(svg, {.title = "test"});
  CHECK(json.str().find("\"traceEvents\"") != std::string::npos);
  CHECK(json.str().find("mb1 all-to-all") != std::string::npos);
  CHECK(svg.str().rfind("<svg", 0) == 0);
  CHECK(svg.str().find("micro-batch 1") != std::string::npos);
}

TEST_CASE("async_run: the step as an initiating function, with a callback and with cancellation",
          "[engine][ubatch_scheduler]") {
  fixture f;
  auto body = [](engine::ubatch_context& ctx) -> coro::task<int> {
    co_await ctx.switch_to_comm();
    co_await ctx.switch_to_compute();
    co_return ctx.index() * 10;
  };
  std::vector<int> outputs;
  std::exception_ptr error;
  bool done = false;
  f.scheduler.async_run(f.loop.get_executor(), 3, body, [&](std::exception_ptr e, std::vector<int> out) {
    error = e;
    outputs = std::move(out);
    done = true;
  });
  CHECK_FALSE(done);  // started by a post, never inline
  f.run_until(done);
  CHECK_FALSE(error);
  CHECK(outputs == std::vector<int>{0, 10, 20});

  // Cancelled through the handler's slot while the micro-batches run (Asio
  // cancellation is not sticky: it reaches what is running when emitted).
  asio::cancellation_signal signal;
  done = false;
  auto cancelling = [&](engine::ubatch_context& ctx) -> coro::task<int> {
    if (ctx.index() == 0) signal.emit(asio::cancellation_type::terminal);
    co_await ctx.yield();
    co_return 1;
  };
  f.scheduler.async_run(f.loop.get_executor(), 2, cancelling,
                        asio::bind_cancellation_slot(signal.slot(), [&](std::exception_ptr e, std::vector<int>) {
                          error = e;
                          done = true;
                        }));
  f.run_until(done);
  REQUIRE(error);
  CHECK_THROWS_AS(std::rethrow_exception(error), std::system_error);
}

TEST_CASE("per_ubatch streams: micro-batch i runs on compute and comm stream i, joined after the step",
          "[engine][ubatch_scheduler][per_ubatch]") {
  test::host_fixture f;
  auto& loop = f.loop;
  gpu::stream_pool pool{f.dev, {.compute_streams = 2, .communication_streams = 2}};
  engine::ubatch_scheduler scheduler{f.dev, pool, {.streams = engine::stream_assignment::per_ubatch}};

  CHECK(scheduler.compute_stream(0) == pool.at(gpu::stream_role::compute, 0));
  CHECK(scheduler.compute_stream(1) == pool.at(gpu::stream_role::compute, 1));
  CHECK(scheduler.comm_stream(1) == pool.at(gpu::stream_role::communication, 1));
  CHECK(scheduler.compute_stream(2) == pool.at(gpu::stream_role::compute, 0));  // modulo the pool

  // Micro-batch i's comm work is held by a gate until after the step; the
  // compute stream's next work must still come after it (the step's join).
  std::vector<std::promise<void>> gates(2);
  std::vector<std::shared_future<void>> opened;
  for (auto& g : gates) opened.push_back(g.get_future().share());
  std::vector<std::atomic<bool>> comm_done(2);
  std::vector<gpu::stream_ref> seen_compute, seen_comm;
  auto body = [&](engine::ubatch_context& ctx) -> coro::task<void> {
    const auto i = static_cast<std::size_t>(ctx.index());
    seen_compute.push_back(ctx.compute_stream());
    co_await ctx.switch_to_comm();
    seen_comm.push_back(ctx.current_stream());
    ctx.current_stream().enqueue([gate = opened[i], &done = comm_done[i]] {
      gate.wait();
      done = true;
    });
    co_await ctx.switch_to_compute();
  };
  coro::sync_wait(loop, scheduler.run(2, body));
  REQUIRE(seen_compute.size() == 2);
  CHECK(seen_compute[0] == scheduler.compute_stream(0));
  CHECK(seen_compute[1] == scheduler.compute_stream(1));
  CHECK_FALSE(seen_compute[0] == seen_compute[1]);
  CHECK(seen_comm[0] == scheduler.comm_stream(0));
  CHECK(seen_comm[1] == scheduler.comm_stream(1));

  std::vector<int> saw_comm_done(2, -1);
  for (std::size_t i = 0; i < 2; ++i) {
    scheduler.compute_stream(static_cast<std::int32_t>(i)).enqueue([&, i] { saw_comm_done[i] = comm_done[i] ? 1 : 0; });
  }
  for (auto& g : gates) g.set_value();
  auto wait_all = [&]() -> coro::task<void> {
    co_await scheduler.compute_stream(0).async_wait(coro::use_task);
    co_await scheduler.compute_stream(1).async_wait(coro::use_task);
  };
  coro::sync_wait(loop, wait_all());
  CHECK(saw_comm_done == std::vector<int>{1, 1});
}
