// The completion reactor's ordered path: waits on fences that state their
// place on a stream are queried oldest first, one per stream, and still fail
// and cancel exactly. Fences are stepped by hand; query counts prove which
// fences a sweep looked at.
#include "cobatch/coro/completion_reactor.hpp"

#include "cobatch/coro/run_loop.hpp"
#include "counted.hpp"
#include "manual_fence.hpp"

#include <asio/bind_cancellation_slot.hpp>
#include <asio/cancellation_signal.hpp>
#include <catch2/catch.hpp>

#include <cstdint>
#include <system_error>
#include <vector>

using namespace cobatch;
using test::manual_fence;

namespace {

struct fixture {
  coro::run_loop loop;
  coro::completion_reactor reactor{loop.get_executor()};
};

// `count` fences at positions 1..count of one stream.
std::vector<manual_fence> stream_of(std::uint64_t stream, int count) {
  std::vector<manual_fence> fences;
  for (int i = 1; i <= count; ++i) fences.emplace_back(coro::fence_order{stream, static_cast<std::uint64_t>(i)});
  return fences;
}

// Runs every handler the reactor posted. The reactor is polled here from
// outside the loop, so its completions arrive through the loop's remote
// queue, which one poll() takes only a batch of.
void run_delivered(coro::run_loop& loop) {
  while (loop.poll() > 0) {
  }
}

long total_queries(const std::vector<manual_fence>& fences) {
  long n = 0;
  for (const auto& f : fences) n += f.queries();
  return n;
}

}  // namespace

TEST_CASE("new_order_stream hands out distinct non-zero identities", "[coro][reactor][order]") {
  const auto a = coro::new_order_stream();
  const auto b = coro::new_order_stream();
  CHECK(a != 0);
  CHECK(b != 0);
  CHECK(a != b);
  CHECK_FALSE(coro::fence_order::none().claimed());
  STATIC_REQUIRE(coro::ordered_fence<manual_fence>);
}

TEST_CASE("a sweep queries only the oldest pending wait of each stream", "[coro][reactor][order]") {
  fixture f;
  const auto s1 = coro::new_order_stream();
  const auto s2 = coro::new_order_stream();
  auto a = stream_of(s1, 500);
  auto b = stream_of(s2, 500);
  int delivered = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    f.reactor.async_wait(a[i], [&](std::error_code ec) { delivered += !ec; });
    f.reactor.async_wait(b[i], [&](std::error_code ec) { delivered += !ec; });
  }
  CHECK(f.reactor.poll() == 0);
  CHECK(a[0].queries() == 1);
  CHECK(b[0].queries() == 1);
  CHECK(total_queries(a) + total_queries(b) == 2);

  CHECK(f.reactor.poll() == 0);
  CHECK(total_queries(a) + total_queries(b) == 4);

  // Stream 1 reaches its 300th fence: one sweep delivers all 300 and stops
  // at the first pending one; stream 2 is asked once more.
  for (int i = 0; i < 300; ++i) a[i].signal();
  CHECK(f.reactor.poll() == 300);
  CHECK(a[300].queries() == 1);
  CHECK(a[301].queries() == 0);
  CHECK(b[1].queries() == 0);
  CHECK(f.reactor.pending() == 700);
  run_delivered(f.loop);
  CHECK(delivered == 300);

  for (auto& fence : a) fence.signal();
  for (auto& fence : b) fence.signal();
  CHECK(f.reactor.poll() == 700);
  run_delivered(f.loop);
  CHECK(delivered == 1000);
  CHECK(f.reactor.pending() == 0);
}

TEST_CASE("ordered completions are delivered in stream order whatever the order of the waits",
          "[coro][reactor][order]") {
  fixture f;
  auto fences = stream_of(coro::new_order_stream(), 5);
  std::vector<int> order;
  for (int i : {4, 1, 3, 0, 2}) {  // waits arrive out of order
    f.reactor.async_wait(fences[static_cast<std::size_t>(i)], [&order, i](std::error_code ec) {
      CHECK_FALSE(ec);
      order.push_back(i);
    });
  }
  CHECK(f.reactor.poll() == 0);
  CHECK(fences[0].queries() == 1);  // the oldest, although it was waited on fourth
  CHECK(total_queries(fences) == 1);
  for (auto& fence : fences) fence.signal();
  CHECK(f.reactor.poll() == 5);
  run_delivered(f.loop);
  CHECK(order == std::vector<int>{0, 1, 2, 3, 4});
}

TEST_CASE("several waits on one fence of a stream all complete", "[coro][reactor][order]") {
  fixture f;
  auto fences = stream_of(coro::new_order_stream(), 2);
  int done = 0;
  for (int i = 0; i < 3; ++i) f.reactor.async_wait(fences[1], [&](std::error_code ec) { done += !ec; });
  f.reactor.async_wait(fences[0], [&](std::error_code ec) { done += !ec; });
  fences[0].signal();
  CHECK(f.reactor.poll() == 1);
  fences[1].signal();
  CHECK(f.reactor.poll() == 3);
  run_delivered(f.loop);
  CHECK(done == 4);
}

TEST_CASE("a failed fence in the middle of a stream fails its own waiters only", "[coro][reactor][order]") {
  fixture f;
  auto fences = stream_of(coro::new_order_stream(), 4);
  std::vector<std::error_code> results(4, asio::error::would_block);
  for (std::size_t i = 0; i < fences.size(); ++i) {
    f.reactor.async_wait(fences[i], [&results, i](std::error_code ec) { results[i] = ec; });
  }
  const auto io = std::make_error_code(std::errc::io_error);
  fences[0].signal();
  fences[1].fail(io);
  // The fence after the failed one says it is ready (its stream has no
  // sticky error): its waiter must see that, not the neighbour's failure.
  fences[2].signal();
  CHECK(f.reactor.poll() == 3);
  run_delivered(f.loop);
  CHECK_FALSE(results[0]);
  CHECK(results[1] == io);
  CHECK_FALSE(results[2]);
  CHECK(results[3] == asio::error::would_block);  // still pending, not presumed failed
  CHECK(f.reactor.pending() == 1);
  fences[3].fail(io);
  CHECK(f.reactor.poll() == 1);
  run_delivered(f.loop);
  CHECK(results[3] == io);
}

TEST_CASE("a cancelled wait in the middle of a stream completes at once", "[coro][reactor][order][cancel]") {
  test::counted::reset();
  {
    fixture f;
    auto fences = stream_of(coro::new_order_stream(), 3);
    std::vector<std::error_code> results(3, asio::error::would_block);
    asio::cancellation_signal signal;
    f.reactor.async_wait(fences[0], [&](std::error_code ec) { results[0] = ec; });
    f.reactor.async_wait(fences[1], asio::bind_cancellation_slot(signal.slot(),
                                                                  [&, c = test::counted{}](std::error_code ec) {
                                                                    results[1] = ec;
                                                                  }));
    f.reactor.async_wait(fences[2], [&](std::error_code ec) { results[2] = ec; });
    CHECK(f.reactor.poll() == 0);

    signal.emit(asio::cancellation_type::terminal);
    CHECK(f.reactor.poll() == 1);  // the fences before it are still pending
    run_delivered(f.loop);
    CHECK(results[1] == asio::error::operation_aborted);
    CHECK(results[0] == asio::error::would_block);
    CHECK(f.reactor.pending() == 2);
    CHECK(test::counted::alive == 0);    // the handler and the op are gone
    CHECK(fences[1].use_count() == 1);   // and so is the op's copy of the fence
    CHECK(fences[1].queries() == 0);     // never asked: it was never the oldest

    // The queue closed over the gap: the fence after the cancelled one
    // becomes the oldest once the first one is done.
    fences[0].signal();
    fences[2].signal();
    CHECK(f.reactor.poll() == 2);
    run_delivered(f.loop);
    CHECK_FALSE(results[0]);
    CHECK_FALSE(results[2]);
  }
  CHECK(test::counted::alive == 0);
}

TEST_CASE("cancelling the oldest and the newest waits of a stream leaves the rest in order",
          "[coro][reactor][order][cancel]") {
  fixture f;
  auto fences = stream_of(coro::new_order_stream(), 4);
  std::vector<asio::cancellation_signal> signals(4);
  std::vector<std::error_code> results(4, asio::error::would_block);
  for (std::size_t i = 0; i < fences.size(); ++i) {
    f.reactor.async_wait(fences[i], asio::bind_cancellation_slot(signals[i].slot(), [&results, i](std::error_code ec) {
                           results[i] = ec;
                         }));
  }
  CHECK(f.reactor.poll() == 0);
  signals[3].emit(asio::cancellation_type::partial);
  signals[0].emit(asio::cancellation_type::total);
  CHECK(f.reactor.poll() == 2);
  run_delivered(f.loop);
  CHECK(results[0] == asio::error::operation_aborted);
  CHECK(results[3] == asio::error::operation_aborted);
  fences[0].signal();
  fences[1].signal();
  CHECK(f.reactor.poll() == 1);  // fence 1 is the oldest now; fence 2 is pending
  fences[2].signal();
  CHECK(f.reactor.poll() == 1);
  run_delivered(f.loop);
  CHECK_FALSE(results[1]);
  CHECK_FALSE(results[2]);
}

TEST_CASE("a cancellation after the completion was delivered changes nothing", "[coro][reactor][order][cancel]") {
  test::counted::reset();
  {
    fixture f;
    auto fences = stream_of(coro::new_order_stream(), 1);
    asio::cancellation_signal signal;
    std::error_code result = asio::error::would_block;
    f.reactor.async_wait(fences[0], asio::bind_cancellation_slot(signal.slot(),
                                                                  [&, c = test::counted{}](std::error_code ec) {
                                                                    result = ec;
                                                                  }));
    fences[0].signal();
    CHECK(f.reactor.poll() == 1);  // posted, not yet run: the slot is still connected
    signal.emit(asio::cancellation_type::terminal);
    run_delivered(f.loop);  // the handler runs; the cancellation still holds the op
    CHECK_FALSE(result);
    CHECK(f.reactor.poll() == 0);  // lets go of it
    CHECK(fences[0].use_count() == 1);
  }
  CHECK(test::counted::alive == 0);
}

TEST_CASE("a wait cancelled before it reached the poller is aborted when it arrives",
          "[coro][reactor][order][cancel]") {
  fixture f;
  auto fences = stream_of(coro::new_order_stream(), 1);
  asio::cancellation_signal signal;
  std::error_code result = asio::error::would_block;
  f.reactor.async_wait(fences[0], asio::bind_cancellation_slot(signal.slot(), [&](std::error_code ec) { result = ec; }));
  signal.emit(asio::cancellation_type::terminal);  // before any poll
  CHECK(f.reactor.poll() == 1);
  run_delivered(f.loop);
  CHECK(result == asio::error::operation_aborted);
  CHECK(fences[0].queries() == 0);
}

TEST_CASE("ordered and unordered waits are swept side by side", "[coro][reactor][order]") {
  fixture f;
  auto ordered = stream_of(coro::new_order_stream(), 100);
  std::vector<manual_fence> unordered(100);
  int done = 0;
  for (auto& fence : ordered) f.reactor.async_wait(fence, [&](std::error_code) { ++done; });
  for (auto& fence : unordered) f.reactor.async_wait(fence, [&](std::error_code) { ++done; });
  CHECK(f.reactor.poll() == 0);
  CHECK(total_queries(ordered) == 1);
  CHECK(total_queries(unordered) == 100);  // today's path: every one, every sweep
  unordered[57].signal();
  ordered[0].signal();
  CHECK(f.reactor.poll() == 2);
  for (auto& fence : ordered) fence.signal();
  for (auto& fence : unordered) fence.signal();
  CHECK(f.reactor.poll() == 198);
  run_delivered(f.loop);
  CHECK(done == 200);
}

TEST_CASE("shutdown aborts ordered waits wherever they stand", "[coro][reactor][order]") {
  test::counted::reset();
  coro::run_loop loop;
  int aborted = 0;
  asio::cancellation_signal signal;  // holds the cancellation handler until the op finishes
  {
    coro::completion_reactor reactor(loop.get_executor());
    auto fences = stream_of(coro::new_order_stream(), 10);
    for (std::size_t i = 0; i < fences.size(); ++i) {
      auto handler = [&, c = test::counted{}](std::error_code ec) { aborted += ec == asio::error::operation_aborted; };
      if (i == 5) {
        reactor.async_wait(fences[i], asio::bind_cancellation_slot(signal.slot(), handler));
      } else {
        reactor.async_wait(fences[i], handler);
      }
    }
    CHECK(reactor.poll() == 0);
    signal.emit(asio::cancellation_type::terminal);  // still on its way when the reactor goes
  }
  loop.run();
  CHECK(aborted == 10);
  CHECK(test::counted::alive == 0);
}

TEST_CASE("streams that went quiet do not pile up", "[coro][reactor][order]") {
  fixture f;
  int done = 0;
  // Many short-lived streams, each with one wait: the table forgets the quiet
  // ones (checked by ASan and by the absence of growth in pending()).
  for (int round = 0; round < 1000; ++round) {
    manual_fence fence(coro::fence_order{coro::new_order_stream(), 1});
    f.reactor.async_wait(fence, [&](std::error_code ec) { done += !ec; });
    fence.signal();
    CHECK(f.reactor.poll() == 1);
  }
  run_delivered(f.loop);
  CHECK(done == 1000);
  CHECK(f.reactor.pending() == 0);
}
