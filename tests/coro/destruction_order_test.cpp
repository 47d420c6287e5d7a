// The destruction orders docs/lifetimes.md allows, with waits still pending or
// completions still queued: nothing is used after it is freed, nothing leaks.
#include "cobatch/coro/completion_reactor.hpp"

#include "cobatch/coro/run_loop.hpp"
#include "cobatch/coro/spawn.hpp"
#include "cobatch/coro/use_task.hpp"
#include "cobatch/coro/when_all.hpp"
#include "counted.hpp"
#include "manual_fence.hpp"

#include <asio/bind_cancellation_slot.hpp>
#include <asio/cancellation_signal.hpp>
#include <catch2/catch.hpp>

#include <atomic>
#include <latch>
#include <memory>
#include <thread>
#include <vector>

using namespace cobatch;
using test::counted;
using test::manual_fence;

namespace {

coro::task<void> leaf(coro::completion_reactor& reactor, manual_fence fence) {
  counted here;
  co_await reactor.async_wait(fence, coro::use_task);
}

coro::task<void> middle(coro::completion_reactor& reactor, manual_fence fence) {
  counted here;
  co_await leaf(reactor, fence);
}

// Runs the loop until the reactor holds `n` waits: no timing, every step is
// the loop's own work.
void poll_until_pending(coro::run_loop& loop, coro::completion_reactor& reactor, std::size_t n) {
  while (reactor.pending() < n) loop.poll();
}

}  // namespace

TEST_CASE("a reactor destroyed with a wait pending, then the wait cancelled, never touches the reactor",
          "[coro][reactor][lifetime]") {
  counted::reset();
  coro::run_loop loop;
  auto reactor = std::make_unique<coro::completion_reactor>(loop.get_executor());
  manual_fence fence;
  asio::cancellation_signal cancel;
  std::exception_ptr result;
  bool done = false;
  coro::spawn(loop.get_executor(), middle(*reactor, fence),
              asio::bind_cancellation_slot(cancel.slot(), [&](std::exception_ptr e) {
                result = e;
                done = true;
              }));
  while (reactor->pending() == 0) loop.poll();
  reactor.reset();  // completes the wait with operation_aborted: queued on the loop
  cancel.emit(asio::cancellation_type::terminal);  // before the completion runs
  loop.run();
  REQUIRE(done);
  REQUIRE(result);
  try {
    std::rethrow_exception(result);
  } catch (const std::system_error& e) {
    CHECK(e.code() == asio::error::operation_aborted);
  }
  CHECK(counted::alive == 0);
  CHECK(fence.use_count() == 1);
}

TEST_CASE("a run_loop destroyed before its reactor, with a wait pending, frees the wait and its chain",
          "[coro][reactor][lifetime]") {
  counted::reset();
  manual_fence fence;
  bool done = false;
  {
    auto loop = std::make_unique<coro::run_loop>();
    coro::completion_reactor reactor(loop->get_executor());
    loop->attach(reactor);
    coro::spawn(loop->get_executor(), middle(reactor, fence), [&](std::exception_ptr) { done = true; });
    poll_until_pending(*loop, reactor, 1);
    CHECK(counted::alive == 2);
    loop.reset();  // the order the docs allow: the loop first
    CHECK(reactor.pending() == 0);
    CHECK(counted::alive == 0);
  }  // the reactor's shutdown finds nothing to post to the dead loop
  CHECK_FALSE(done);  // destroyed, not run: as io_context destroys queued handlers
  CHECK(fence.use_count() == 1);
}

TEST_CASE("a run_loop destroyed with completions queued destroys the coroutine chains waiting for them",
          "[coro][reactor][lifetime]") {
  counted::reset();
  manual_fence first, second;
  int finished = 0;
  SECTION("one chain") {
    coro::run_loop loop;
    coro::completion_reactor reactor(loop.get_executor());
    loop.attach(reactor);
    coro::spawn(loop.get_executor(), middle(reactor, first), [&](std::exception_ptr) { ++finished; });
    poll_until_pending(loop, reactor, 1);
    // The fixtures' order: the reactor (declared last) goes first, and its
    // shutdown queues the completion on the loop, which never runs it.
  }
  SECTION("a chain waiting in two when_all children: destroyed once") {
    coro::run_loop loop;
    coro::completion_reactor reactor(loop.get_executor());
    loop.attach(reactor);
    auto both = [&]() -> coro::task<void> {
      counted here;
      co_await coro::when_all(middle(reactor, first), middle(reactor, second));
    };
    coro::spawn(loop.get_executor(), both(), [&](std::exception_ptr) { ++finished; });
    poll_until_pending(loop, reactor, 2);
    CHECK(counted::alive == 5);
  }
  CHECK(finished == 0);
  CHECK(counted::alive == 0);
  CHECK(first.use_count() == 1);
  CHECK(second.use_count() == 1);
}

TEST_CASE("start_thread from several threads at once starts one poller", "[coro][reactor][threads]") {
  for (int round = 0; round < 20; ++round) {
    coro::run_loop loop;
    coro::completion_reactor reactor(loop.get_executor());
    std::latch go(3);
    std::vector<std::thread> starters;
    for (int t = 0; t < 2; ++t) {
      starters.emplace_back([&] {
        go.arrive_and_wait();
        reactor.start_thread();
      });
    }
    go.arrive_and_wait();
    for (auto& t : starters) t.join();
    // The one poller delivers a wait.
    manual_fence fence;
    std::atomic<bool> delivered{false};
    reactor.async_wait(fence, [&](std::error_code) { delivered = true; });
    fence.signal();
    while (!delivered) loop.poll();
  }
}
