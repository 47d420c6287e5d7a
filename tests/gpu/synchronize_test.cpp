#include "cobatch/gpu/synchronize.hpp"

#include "cobatch/coro/run_loop.hpp"
#include "cobatch/gpu/host/host_device.hpp"
#include "host_fixture.hpp"
#include "host_gate.hpp"

#include <asio/bind_cancellation_slot.hpp>
#include <asio/bind_executor.hpp>
#include <asio/cancellation_signal.hpp>
#include <asio/error.hpp>
#include <catch2/catch.hpp>

#include <atomic>
#include <future>
#include <optional>
#include <stdexcept>
#include <vector>

using namespace cobatch;

namespace {

using fixture = test::host_pool_fixture;

}  // namespace

TEST_CASE("synchronize_all completes once every stream of the pool has run its work", "[gpu][synchronize]") {
  fixture f;
  test::scoped_host_gate g;
  std::atomic<int> finished{0};
  for (auto role : {gpu::stream_role::compute, gpu::stream_role::communication}) {
    for (std::size_t i = 0; i < 2; ++i) {
      auto s = f.pool.at(role, i);
      if (role == gpu::stream_role::communication && i == 1) g.hold(s);  // the last one waits for the gate
      s.enqueue([&] { finished.fetch_add(1); });
    }
  }
  std::optional<std::error_code> done;
  int seen_at_completion = -1;
  gpu::async_synchronize_all(f.pool, [&](std::error_code ec) {
    seen_at_completion = finished.load();
    done = ec;
  });
  // Nothing completes inline, and not before the gated stream runs.
  CHECK_FALSE(done);
  f.loop.poll();
  CHECK_FALSE(done);
  g.open();
  f.run_until(done);
  CHECK(*done == std::error_code{});
  CHECK(seen_at_completion == 4);
}

TEST_CASE("synchronize reports the first failed stream after waiting for all", "[gpu][synchronize]") {
  fixture f;
  auto a = f.dev.make_stream();
  auto b = f.dev.make_stream();
  test::scoped_host_gate g;
  a.enqueue([] { throw std::runtime_error("kernel failed"); });
  g.hold(b);
  std::atomic<bool> b_ran{false};
  b.enqueue([&] { b_ran = true; });
  const std::vector<gpu::stream_ref> streams{a.ref(), b.ref()};
  std::optional<std::error_code> done;
  bool b_done_first = false;
  gpu::async_synchronize(std::span<const gpu::stream_ref>(streams), [&](std::error_code ec) {
    b_done_first = b_ran.load();
    done = ec;
  });
  f.loop.poll();
  CHECK_FALSE(done);  // a failed, but b is still running
  g.open();
  f.run_until(done);
  CHECK(*done);
  CHECK(*done == a.ref().error());
  CHECK(b_done_first);
}

TEST_CASE("synchronize of no streams completes, posted", "[gpu][synchronize]") {
  fixture f;
  std::optional<std::error_code> done;
  gpu::async_synchronize(std::span<const gpu::stream_ref>{},
                         asio::bind_executor(f.loop.get_executor(), [&](std::error_code ec) { done = ec; }));
  CHECK_FALSE(done);
  f.run_until(done);
  CHECK(*done == std::error_code{});
}

TEST_CASE("a cancelled synchronize completes with operation_aborted; the work runs on", "[gpu][synchronize]") {
  for (auto type : {asio::cancellation_type::terminal, asio::cancellation_type::partial,
                    asio::cancellation_type::total}) {
    fixture f;
    test::scoped_host_gate g;
    g.hold(f.pool.at(gpu::stream_role::compute, 0));
    std::atomic<bool> ran{false};
    f.pool.at(gpu::stream_role::compute, 0).enqueue([&] { ran = true; });
    asio::cancellation_signal cancel;
    std::optional<std::error_code> done;
    gpu::async_synchronize_all(f.pool, asio::bind_cancellation_slot(cancel.slot(), [&](std::error_code ec) {
                                 done = ec;
                               }));
    f.loop.poll();
    CHECK_FALSE(done);
    cancel.emit(type);
    f.run_until(done);
    CHECK(*done == asio::error::operation_aborted);
    CHECK_FALSE(ran.load());
    g.open();
    std::optional<std::error_code> after;
    f.pool.at(gpu::stream_role::compute, 0).async_wait([&](std::error_code ec) { after = ec; });
    f.run_until(after);
    CHECK(ran.load());
  }
}
