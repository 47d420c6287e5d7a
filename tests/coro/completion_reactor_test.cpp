#include "cobatch/coro/completion_reactor.hpp"

#include "cobatch/coro/run_loop.hpp"
#include "cobatch/coro/sync_wait.hpp"
#include "cobatch/coro/use_task.hpp"
#include "cobatch/coro/when_all.hpp"
#include "counted.hpp"
#include "manual_fence.hpp"
#include "host_gate.hpp"

#include <asio/bind_cancellation_slot.hpp>
#include <asio/bind_executor.hpp>
#include <asio/post.hpp>
#include <catch2/catch.hpp>

#include <atomic>
#include <thread>
#include <vector>

using namespace cobatch;
using test::manual_fence;

TEST_CASE("reactor completes a wait only after the fence is signalled", "[coro][reactor]") {
  coro::run_loop loop;
  coro::completion_reactor reactor(loop.get_executor());
  manual_fence fence;
  int calls = 0;
  std::error_code result = asio::error::would_block;
  reactor.async_wait(fence, [&](std::error_code ec) {
    ++calls;
    result = ec;
  });
  CHECK(reactor.pending() == 1);
  CHECK(reactor.poll() == 0);
  loop.poll();
  CHECK(calls == 0);  // nothing inline, nothing before the signal
  fence.signal();
  CHECK(reactor.poll() == 1);
  CHECK(calls == 0);  // delivered through the executor, not on the poller
  loop.poll();
  CHECK(calls == 1);
  CHECK_FALSE(result);
  CHECK(reactor.pending() == 0);
}

TEST_CASE("a failed fence's error reaches the awaiting coroutine", "[coro][reactor]") {
  coro::run_loop loop;
  coro::completion_reactor reactor(loop.get_executor());
  loop.attach(reactor);
  manual_fence fence;
  test::host_gate waiting;  // opens once the coroutine waits
  auto waiter = [&]() -> coro::task<std::error_code> {
    // The loop runs this once the coroutine has suspended in async_wait.
    asio::post(loop.get_executor(), [waiting] { waiting.open(); });
    try {
      co_await reactor.async_wait(fence, coro::use_task);
    } catch (const std::system_error& e) {
      co_return e.code();
    }
    co_return std::error_code{};
  };
  std::thread signaller([&] {
    waiting.wait();
    fence.fail(std::make_error_code(std::errc::io_error));
  });
  auto ec = coro::sync_wait(loop, waiter());
  signaller.join();
  CHECK(ec == std::errc::io_error);
}

TEST_CASE("cancelling a wait completes it with operation_aborted and leaks nothing", "[coro][reactor][cancel]") {
  test::counted::reset();
  {
    coro::run_loop loop;
    coro::completion_reactor reactor(loop.get_executor());
    loop.attach(reactor);
    manual_fence fence;
    asio::cancellation_signal signal;
    std::error_code result;
    int calls = 0;
    reactor.async_wait(fence, asio::bind_cancellation_slot(signal.slot(), [&, c = test::counted{}](std::error_code ec) {
                         ++calls;
                         result = ec;
                       }));
    CHECK(test::counted::alive >= 1);
    loop.poll();
    signal.emit(asio::cancellation_type::terminal);
    loop.run();  // returns once the aborted wait was delivered
    CHECK(calls == 1);
    CHECK(result == asio::error::operation_aborted);
    CHECK(fence.use_count() == 1);  // the op and its copy of the fence are gone
  }
  CHECK(test::counted::alive == 0);
}

TEST_CASE("cancelling a task chain reaches the wait in flight", "[coro][reactor][cancel]") {
  coro::run_loop loop;
  coro::completion_reactor reactor(loop.get_executor());
  loop.attach(reactor);
  manual_fence never;
  asio::cancellation_signal signal;
  auto body = [&]() -> coro::task<std::error_code> {
    auto [ec] = co_await reactor.async_wait(never, coro::as_tuple_task);
    co_return ec;
  };
  std::error_code got;
  bool done = false;
  coro::spawn(loop.get_executor(), body(),
              asio::bind_cancellation_slot(signal.slot(), [&](std::exception_ptr, std::error_code ec) {
                got = ec;
                done = true;
              }));
  loop.poll();
  loop.poll();
  CHECK_FALSE(done);
  signal.emit(asio::cancellation_type::terminal);
  loop.run();
  CHECK(done);
  CHECK(got == asio::error::operation_aborted);
}

TEST_CASE("shutdown completes every pending wait with operation_aborted", "[coro][reactor]") {
  coro::run_loop loop;
  int aborted = 0;
  {
    coro::completion_reactor reactor(loop.get_executor());
    std::vector<manual_fence> fences(10);
    for (auto& f : fences) {
      reactor.async_wait(f, [&](std::error_code ec) { aborted += ec == asio::error::operation_aborted; });
    }
  }
  loop.run();
  CHECK(aborted == 10);
}

TEST_CASE("thousands of waits from several threads complete exactly once each", "[coro][reactor][stress]") {
  constexpr int threads = 4;
  constexpr int per_thread = 1000;
  coro::run_loop loop;
  coro::completion_reactor reactor(loop.get_executor());
  loop.attach(reactor);
  std::vector<manual_fence> fences(threads * per_thread);
  std::vector<int> completions(fences.size(), 0);  // touched only on the loop thread
  std::atomic<int> submitted{0};
  auto guard = asio::prefer(loop.get_executor(), asio::execution::outstanding_work.tracked);

  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      for (int i = 0; i < per_thread; ++i) {
        const int id = t * per_thread + i;
        reactor.async_wait(fences[id], asio::bind_executor(loop.get_executor(), [&, id](std::error_code ec) {
                             REQUIRE_FALSE(ec);
                             ++completions[id];
                           }));
        ++submitted;
        if (i % 3 == 0) fences[id].signal();
      }
      for (int i = 0; i < per_thread; ++i) fences[t * per_thread + i].signal();
    });
  }
  std::thread releaser([&] {
    for (auto& w : workers) w.join();
    auto g = std::move(guard);  // last reference to the loop's work
    (void)g;
  });
  loop.run();
  releaser.join();
  CHECK(submitted == threads * per_thread);
  for (int c : completions) REQUIRE(c == 1);
  CHECK(reactor.pending() == 0);
}

TEST_CASE("the reactor's own thread delivers to an io-less executor", "[coro][reactor]") {
  coro::run_loop loop;
  coro::completion_reactor reactor(loop.get_executor());
  reactor.start_thread();
  manual_fence fence;
  test::host_gate waiting;  // opens once the wait is registered
  std::thread signaller([&] {
    waiting.wait();
    fence.signal();
  });
  bool done = false;
  reactor.async_wait(fence, [&](std::error_code ec) { done = !ec; });
  waiting.open();
  loop.run();
  signaller.join();
  reactor.stop_thread();
  CHECK(done);
}
