#include "cobatch/coro/when_all.hpp"

#include "cobatch/coro/async_event.hpp"
#include "cobatch/coro/completion_reactor.hpp"
#include "cobatch/coro/run_loop.hpp"
#include "cobatch/coro/sync_wait.hpp"
#include "cobatch/coro/use_task.hpp"
#include "counted.hpp"
#include "manual_fence.hpp"
#include "host_gate.hpp"

#include <asio/bind_cancellation_slot.hpp>
#include <asio/post.hpp>
#include <catch2/catch.hpp>

#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

using namespace cobatch;

namespace {
coro::task<int> value(int v) { co_return v; }
coro::task<std::string> text() { co_return "two"; }
coro::task<void> nothing() { co_return; }
}  // namespace

TEST_CASE("when_all returns the results of different awaitables in order", "[coro][when_all]") {
  auto [a, b, c] = coro::sync_wait(coro::when_all(value(1), text(), nothing()));
  CHECK(a == 1);
  CHECK(b == "two");
  CHECK(std::is_same_v<decltype(c), std::monostate>);
}

TEST_CASE("when_all runs its children concurrently on one thread", "[coro][when_all]") {
  coro::run_loop loop;
  std::vector<std::string> trace;
  auto worker = [&](std::string name) -> coro::task<void> {
    for (int i = 0; i < 3; ++i) {
      trace.push_back(name + std::to_string(i));
      co_await loop.yield();
    }
  };
  coro::sync_wait(loop, coro::when_all(worker("a"), worker("b")));
  CHECK(trace == std::vector<std::string>{"a0", "b0", "a1", "b1", "a2", "b2"});
}

TEST_CASE("when_all's first failure cancels the siblings and is rethrown after all finish",
          "[coro][when_all][cancel]") {
  test::counted::reset();
  coro::run_loop loop;
  coro::completion_reactor reactor(loop.get_executor());
  loop.attach(reactor);
  test::manual_fence never;
  std::error_code sibling_result;
  auto waits_forever = [&](test::counted) -> coro::task<void> {
    auto [ec] = co_await reactor.async_wait(never, coro::as_tuple_task);
    sibling_result = ec;
  };
  auto fails = [&]() -> coro::task<void> {
    co_await loop.yield();
    throw std::runtime_error("micro-batch failed");
  };
  CHECK_THROWS_WITH(coro::sync_wait(loop, coro::when_all(waits_forever(test::counted{}), fails())),
                    "micro-batch failed");
  CHECK(sibling_result == asio::error::operation_aborted);
  CHECK(test::counted::alive == 0);
}

TEST_CASE("async_event wakes every waiter on set and honours cancellation", "[coro][async_event]") {
  coro::run_loop loop;
  coro::async_event ev(loop.get_executor());
  int woken = 0;
  auto waiter = [&]() -> coro::task<void> {
    co_await ev.async_wait(coro::use_task);
    ++woken;
  };
  auto setter = [&]() -> coro::task<void> {
    co_await loop.yield();
    CHECK(woken == 0);
    ev.set();
  };
  coro::sync_wait(loop, coro::when_all(waiter(), waiter(), waiter(), setter()));
  CHECK(woken == 3);
  CHECK(ev.is_set());
  coro::sync_wait(loop, waiter());  // already set: completes (by a post)
  CHECK(woken == 4);

  ev.reset();
  asio::cancellation_signal signal;
  std::error_code result;
  ev.async_wait(asio::bind_cancellation_slot(signal.slot(), [&](std::error_code ec) { result = ec; }));
  loop.restart();
  loop.poll();
  signal.emit(asio::cancellation_type::terminal);
  loop.run();
  CHECK(result == asio::error::operation_aborted);
}

TEST_CASE("async_event set from another thread resumes the coroutine on its loop", "[coro][async_event]") {
  coro::run_loop loop;
  coro::async_event ev(loop.get_executor());
  cobatch::test::host_gate waiting;  // opens once the coroutine waits
  std::thread setter([&] {
    waiting.wait();
    ev.set();
  });
  auto body = [&]() -> coro::task<bool> {
    // The loop runs this once the coroutine has suspended in async_wait.
    asio::post(loop.get_executor(), [waiting] { waiting.open(); });
    co_await ev.async_wait(coro::use_task);
    co_return loop.running_in_this_thread();
  };
  CHECK(coro::sync_wait(loop, body()));
  setter.join();
}

TEST_CASE("destroying an async_event aborts its waiters", "[coro][async_event]") {
  coro::run_loop loop;
  std::error_code result;
  {
    coro::async_event ev(loop.get_executor());
    ev.async_wait([&](std::error_code ec) { result = ec; });
  }
  loop.run();
  CHECK(result == asio::error::operation_aborted);
}
