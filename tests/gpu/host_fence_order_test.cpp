// Host backend: stream markers claim their order, so the reactor keeps their
// waits ordered per stream. Ordering, failure and cancellation in the middle
// of a stream's queue, with streams held back by a gate the test opens.
#include "cobatch/gpu/host/host_device.hpp"

#include "cobatch/coro/run_loop.hpp"
#include "cobatch/gpu/error.hpp"
#include "host_fixture.hpp"
#include "host_gate.hpp"

#include <asio/bind_cancellation_slot.hpp>
#include <asio/cancellation_signal.hpp>
#include <catch2/catch.hpp>

#include <atomic>
#include <system_error>
#include <vector>

using namespace cobatch;

namespace {

using fixture = test::host_fixture;

}  // namespace

TEST_CASE("host markers claim increasing positions on their own stream", "[gpu][host][order]") {
  fixture f;
  auto s = f.dev.make_stream();
  auto t = f.dev.make_stream();
  auto e = f.dev.make_event();
  const auto a = s.ref().mark();
  s.record(e);
  const auto b = e.ref().impl().current();
  const auto c = s.ref().mark();
  const auto other = t.ref().mark();
  REQUIRE(a.order().claimed());
  CHECK(b.order().stream == a.order().stream);
  CHECK(c.order().stream == a.order().stream);
  CHECK(a.order().position < b.order().position);
  CHECK(b.order().position < c.order().position);
  CHECK(other.order().claimed());
  CHECK(other.order().stream != a.order().stream);
  CHECK_FALSE(gpu::fence{}.order().claimed());  // reached already: nothing to order
}

TEST_CASE("a marker recorded inside a graph claims no order", "[gpu][host][order][graph]") {
  fixture f;
  auto s = f.dev.make_stream();
  auto e = f.dev.make_event();
  s.ref().begin_capture();
  s.enqueue([] {});
  s.record(e);
  auto exec = s.ref().end_capture().instantiate();
  exec.launch(s);
  // The graph's record is signalled from a lane of the replay, not in the
  // launch stream's own order.
  CHECK_FALSE(e.ref().impl().current().order().claimed());
  f.reactor.async_wait(e.ref().impl().current(), [](std::error_code ec) { CHECK_FALSE(ec); });
  f.loop.run();
}

TEST_CASE("waits on one host stream complete in stream order", "[gpu][host][order]") {
  fixture f;
  auto s = f.dev.make_stream();
  test::scoped_host_gate g;
  g.hold(s);
  std::vector<gpu::fence> marks;
  for (int i = 0; i < 4; ++i) {
    s.enqueue([] {});
    marks.push_back(s.ref().mark());
  }
  std::vector<int> order;
  for (int i : {3, 0, 2, 1}) {  // awaited out of order
    f.reactor.async_wait(marks[static_cast<std::size_t>(i)], [&order, i](std::error_code ec) {
      CHECK_FALSE(ec);
      order.push_back(i);
    });
  }
  CHECK(f.reactor.poll() == 0);
  g.open();
  f.loop.run();  // returns once every wait was delivered
  CHECK(order == std::vector<int>{0, 1, 2, 3});
}

TEST_CASE("a failure in the middle of a host stream fails the waits the stream's rule says",
          "[gpu][host][order]") {
  fixture f;
  auto s = f.dev.make_stream();
  auto t = f.dev.make_stream();
  test::scoped_host_gate g;
  g.hold(s);
  g.hold(t);
  const auto before = s.ref().mark();
  s.enqueue([] { throw std::system_error(std::make_error_code(std::errc::io_error)); });
  const auto after = s.ref().mark();
  s.enqueue([] {});
  const auto later = s.ref().mark();
  t.enqueue([] {});
  const auto other = t.ref().mark();

  std::vector<std::error_code> results(4, asio::error::would_block);
  const gpu::fence fences[] = {later, other, after, before};
  for (std::size_t i = 0; i < 4; ++i) {
    f.reactor.async_wait(fences[i], [&results, i](std::error_code ec) { results[i] = ec; });
  }
  CHECK(f.reactor.poll() == 0);
  g.open();
  f.loop.run();
  const auto io = std::make_error_code(std::errc::io_error);
  CHECK_FALSE(results[3]);      // before the failing work: fine
  CHECK(results[2] == io);      // the marker right after it
  CHECK(results[0] == io);      // and every later one: a failed stream stays failed
  CHECK_FALSE(results[1]);      // another stream is not touched
}

TEST_CASE("a cancelled wait in the middle of a host stream completes while the stream is held",
          "[gpu][host][order][cancel]") {
  fixture f;
  auto s = f.dev.make_stream();
  test::scoped_host_gate g;
  g.hold(s);
  const auto first = s.ref().mark();
  const auto middle = s.ref().mark();
  const auto last = s.ref().mark();
  std::error_code first_ec = asio::error::would_block;
  std::error_code middle_ec = asio::error::would_block;
  std::error_code last_ec = asio::error::would_block;
  asio::cancellation_signal signal;
  f.reactor.async_wait(first, [&](std::error_code ec) { first_ec = ec; });
  f.reactor.async_wait(middle, asio::bind_cancellation_slot(signal.slot(), [&](std::error_code ec) { middle_ec = ec; }));
  f.reactor.async_wait(last, [&](std::error_code ec) { last_ec = ec; });
  f.loop.poll();
  signal.emit(asio::cancellation_type::terminal);
  f.loop.poll();  // polls the reactor and runs what it delivered
  CHECK(middle_ec == asio::error::operation_aborted);
  CHECK(first_ec == asio::error::would_block);  // the gate is still closed
  CHECK(last_ec == asio::error::would_block);
  CHECK(first.query().is_pending());
  g.open();
  f.loop.run();
  CHECK_FALSE(first_ec);
  CHECK_FALSE(last_ec);
}

TEST_CASE("an awaited event follows its stream's order", "[gpu][host][order][event]") {
  fixture f;
  auto s = f.dev.make_stream();
  auto e = f.dev.make_event();
  test::scoped_host_gate g;
  g.hold(s);
  const auto first = s.ref().mark();
  s.record(e);
  std::vector<int> order;
  e.async_wait([&](std::error_code ec) {
    CHECK_FALSE(ec);
    order.push_back(1);
  });
  f.reactor.async_wait(first, [&](std::error_code ec) {
    CHECK_FALSE(ec);
    order.push_back(0);
  });
  g.open();
  f.loop.run();
  CHECK(order == std::vector<int>{0, 1});
}
