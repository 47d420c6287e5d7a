#include "cobatch/coro/task.hpp"

#include "cobatch/coro/run_loop.hpp"
#include "cobatch/coro/spawn.hpp"
#include "cobatch/coro/sync_wait.hpp"
#include "counted.hpp"

#include <catch2/catch.hpp>

#include <stdexcept>
#include <string>

using namespace cobatch;
using cobatch::test::counted;

namespace {
coro::task<int> forty_two() { co_return 42; }
coro::task<int> add_one(coro::task<int> inner) { co_return co_await std::move(inner) + 1; }
coro::task<void> throws_logic() {
  throw std::logic_error("boom");
  co_return;
}
coro::task<std::string> catches(coro::task<void> inner) {
  try {
    co_await std::move(inner);
  } catch (const std::logic_error& e) {
    co_return std::string("caught ") + e.what();
  }
  co_return "not thrown";
}
coro::task<int> holds_counted(counted c) {
  (void)c;
  co_return 1;
}
coro::task<int> deep(int n) {
  if (n == 0) co_return 0;
  co_return co_await deep(n - 1) + 1;
}
}  // namespace

TEST_CASE("task is lazy and returns its value", "[coro][task]") {
  bool started = false;
  // The lambda must outlive its coroutine: the frame refers to its captures.
  auto body = [&]() -> coro::task<int> {
    started = true;
    co_return 7;
  };
  auto t = body();
  CHECK_FALSE(started);
  CHECK(coro::sync_wait(std::move(t)) == 7);
  CHECK(started);
  CHECK(coro::sync_wait(add_one(forty_two())) == 43);
}

TEST_CASE("task exceptions propagate to the awaiter", "[coro][task]") {
  CHECK(coro::sync_wait(catches(throws_logic())) == "caught boom");
  CHECK_THROWS_AS(coro::sync_wait(throws_logic()), std::logic_error);
}

TEST_CASE("task frames are destroyed whether run or not", "[coro][task][lifetime]") {
  counted::reset();
  {
    auto never_run = holds_counted(counted{});
    CHECK(counted::alive == 1);
  }
  CHECK(counted::alive == 0);
  CHECK(coro::sync_wait(holds_counted(counted{})) == 1);
  CHECK(counted::alive == 0);
}

TEST_CASE("deep chains of tasks complete", "[coro][task]") {
  // Kept moderate: sanitizer builds at -O1 do not turn symmetric transfer into
  // tail calls, so a very deep chain would test the stack size, not the code.
  CHECK(coro::sync_wait(deep(2000)) == 2000);
}

TEST_CASE("tasks inherit the executor of the chain", "[coro][task]") {
  coro::run_loop loop;
  auto t = [&]() -> coro::task<bool> {
    auto inner = []() -> coro::task<asio::any_io_executor> { co_return co_await coro::current_executor(); };
    auto ex = co_await inner();
    co_return ex == asio::any_io_executor(loop.get_executor());
  };
  CHECK(coro::sync_wait(loop, t()));
}

TEST_CASE("spawn completes its handler with the result or the exception", "[coro][spawn]") {
  coro::run_loop loop;
  int value = 0;
  std::exception_ptr error;
  coro::spawn(loop.get_executor(), forty_two(), [&](std::exception_ptr e, int v) {
    error = e;
    value = v;
  });
  CHECK(value == 0);  // started by a post, not inline
  loop.run();
  CHECK(value == 42);
  CHECK_FALSE(error);

  bool failed = false;
  coro::spawn(loop.get_executor(), throws_logic(), [&](std::exception_ptr e) { failed = e != nullptr; });
  loop.restart();
  loop.run();
  CHECK(failed);
}

TEST_CASE("a spawned task whose loop is destroyed before it starts leaks nothing", "[coro][spawn][lifetime]") {
  counted::reset();
  {
    coro::run_loop loop;
    coro::spawn(loop.get_executor(), holds_counted(counted{}), [](std::exception_ptr, int) {});
    CHECK(counted::alive == 1);
  }
  CHECK(counted::alive == 0);
}
