// Stream capture is bookkeeping of the thread that records it: another
// thread's operation on a capturing stream is refused with a typed error.
#include "cobatch/gpu/host/host_device.hpp"

#include "cobatch/coro/run_loop.hpp"
#include "cobatch/coro/sync_wait.hpp"
#include "cobatch/coro/use_task.hpp"
#include "cobatch/gpu/error.hpp"
#include "host_fixture.hpp"

#include <catch2/catch.hpp>

#include <atomic>
#include <thread>

using namespace cobatch;

namespace {
using fixture = test::host_fixture;

std::error_code code_of(auto&& f) {
  try {
    f();
  } catch (const std::system_error& e) {
    return e.code();
  }
  return {};
}
}  // namespace

TEST_CASE("enqueueing on a capturing stream from another thread is a capture_invalid error",
          "[gpu][host][graph][threads]") {
  fixture f;
  auto s = f.dev.make_stream();
  auto e = f.dev.make_event();
  s.ref().begin_capture();
  s.enqueue([] {});
  std::error_code enqueue_error, record_error, wait_error, end_error;
  std::thread other([&] {
    enqueue_error = code_of([&] { s.enqueue([] {}); });
    record_error = code_of([&] { s.record(e); });
    wait_error = code_of([&] { s.wait(e); });
    end_error = code_of([&] { (void)s.ref().end_capture(); });
  });
  other.join();
  CHECK(enqueue_error == gpu::errc::capture_invalid);
  CHECK(record_error == gpu::errc::capture_invalid);
  CHECK(wait_error == gpu::errc::capture_invalid);
  CHECK(end_error == gpu::errc::capture_invalid);
  auto g = s.ref().end_capture();  // the capturing thread's capture is intact
  CHECK(g.node_count() == 1);
}

TEST_CASE("another thread enqueueing while captures begin and end either runs eagerly or is refused",
          "[gpu][host][graph][threads]") {
  fixture f;
  auto s = f.dev.make_stream();
  std::atomic<bool> stop{false};
  std::atomic<int> ran{0};
  int accepted = 0;
  int refused = 0;
  // Catch2's assertions are not thread-safe: the other thread keeps what it
  // saw, and this one checks it after the join.
  std::error_code unexpected;
  std::thread other([&] {
    while (!stop.load(std::memory_order_acquire)) {
      try {
        s.enqueue([&ran] { ran.fetch_add(1, std::memory_order_relaxed); });
        ++accepted;
      } catch (const std::system_error& e) {
        if (e.code() != gpu::errc::capture_invalid && !unexpected) unexpected = e.code();
        ++refused;
      }
    }
  });
  for (int round = 0; round < 200; ++round) {
    s.ref().begin_capture();
    s.enqueue([] {});
    auto g = s.ref().end_capture();
    CHECK(g.node_count() == 1);  // nothing of the other thread's got in
  }
  stop.store(true, std::memory_order_release);
  other.join();
  auto wait_all = [&]() -> coro::task<void> { co_await s.async_wait(coro::use_task); };
  coro::sync_wait(f.loop, wait_all());
  CHECK(unexpected == std::error_code{});  // a refusal is capture_invalid, nothing else
  CHECK(ran.load() == accepted);  // every accepted enqueue ran eagerly
  (void)refused;
}
