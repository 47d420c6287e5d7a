#include "cobatch/gpu/host/host_device.hpp"

#include "cobatch/coro/run_loop.hpp"
#include "cobatch/coro/sync_wait.hpp"
#include "cobatch/coro/use_task.hpp"
#include "cobatch/coro/when_all.hpp"
#include "cobatch/gpu/error.hpp"
#include "host_fixture.hpp"

#include <catch2/catch.hpp>

#include <random>
#include <vector>

using namespace cobatch;

namespace {

using fixture = test::host_fixture;

// Two micro-batches, three layers: compute on the shared compute stream, then
// a "collective" on the comm stream that the next layer's compute depends on,
// joined on the device. The micro-batches are coroutines that interleave at
// yield, in the order an overlapped step enqueues its work.
struct step_data {
  std::vector<float> x[2], y[2], z[2];
  explicit step_data(std::size_t n) {
    for (auto* v : {x, y, z}) {
      for (int mb = 0; mb < 2; ++mb) v[mb].assign(n, 0.0f);
    }
  }
};

coro::task<void> micro_batch(coro::run_loop& loop, int mb, step_data& d, gpu::stream_ref compute,
                             gpu::stream_ref comm, gpu::event_ref to_comm, gpu::event_ref to_compute) {
  for (int layer = 0; layer < 3; ++layer) {
    compute.enqueue([&d, mb, layer] {
      const auto& in = layer == 0 ? d.x[mb] : d.z[mb];
      for (std::size_t i = 0; i < in.size(); ++i) d.y[mb][i] = in[i] * 2.0f + static_cast<float>(layer);
    });
    compute.record(to_comm);
    comm.wait(to_comm);
    comm.enqueue([&d, mb] {
      for (std::size_t i = 0; i < d.y[mb].size(); ++i) d.z[mb][i] = d.y[mb][i] + d.y[mb][(i + 1) % d.y[mb].size()];
    });
    comm.record(to_compute);
    compute.wait(to_compute);
    co_await loop.yield();
  }
}

}  // namespace

TEST_CASE("an interleaved two-stream micro-batch step captures as one graph and replays like eager",
          "[gpu][host][graph]") {
  fixture f;
  auto compute = f.dev.make_stream();
  auto comm = f.dev.make_stream({gpu::stream_priority::high});
  gpu::event to_comm[2] = {f.dev.make_event(), f.dev.make_event()};
  gpu::event to_compute[2] = {f.dev.make_event(), f.dev.make_event()};
  auto done = f.dev.make_event();
  step_data eager(64), replay(64);

  auto step = [&](step_data& d) -> coro::task<void> {
    co_await coro::when_all(micro_batch(f.loop, 0, d, compute, comm, to_comm[0], to_compute[0]),
                            micro_batch(f.loop, 1, d, compute, comm, to_comm[1], to_compute[1]));
  };

  // Capture the whole interleaved step, started on the compute stream; the
  // comm stream joins the capture through the first event it waits on.
  compute.ref().begin_capture();
  coro::sync_wait(f.loop, step(replay));
  CHECK(comm.ref().capturing());
  compute.record(done);
  auto g = compute.ref().end_capture();
  CHECK_FALSE(comm.ref().capturing());
  CHECK(g.node_count() == 2 * 3 * 6 + 1);
  auto exec = g.instantiate();

  std::mt19937 rng(11);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  for (int round = 0; round < 4; ++round) {
    for (int mb = 0; mb < 2; ++mb) {
      for (std::size_t i = 0; i < 64; ++i) eager.x[mb][i] = replay.x[mb][i] = dist(rng);
    }
    auto run = [&]() -> coro::task<void> {
      co_await step(eager);
      co_await compute.async_wait(coro::use_task);
      exec.launch(compute);
      co_await done.async_wait(coro::use_task);  // the graph's own record
    };
    coro::sync_wait(f.loop, run());
    for (int mb = 0; mb < 2; ++mb) {
      REQUIRE(replay.z[mb] == eager.z[mb]);
      REQUIRE(replay.y[mb] == eager.y[mb]);
    }
  }
}

TEST_CASE("a capture that leaves a joined stream's work unjoined is rejected", "[gpu][host][graph]") {
  fixture f;
  auto origin = f.dev.make_stream();
  auto side = f.dev.make_stream();
  auto fork = f.dev.make_event();
  origin.ref().begin_capture();
  origin.record(fork);
  side.wait(fork);  // side joins the capture
  side.enqueue([] {});
  CHECK_THROWS_AS(origin.ref().end_capture(), std::system_error);
  CHECK_FALSE(side.ref().capturing());  // the failed capture still ended
  CHECK_THROWS_AS(side.ref().end_capture(), std::system_error);
}

TEST_CASE("a graph's failed node reaches whoever awaits the replay", "[gpu][host][graph][error]") {
  fixture f;
  auto s = f.dev.make_stream();
  auto e = f.dev.make_event();
  s.ref().begin_capture();
  s.enqueue([] { throw std::system_error(std::make_error_code(std::errc::invalid_argument)); });
  s.record(e);
  auto exec = s.ref().end_capture().instantiate();
  exec.launch(s);
  auto body = [&]() -> coro::task<std::error_code> {
    auto [ec] = co_await e.async_wait(coro::as_tuple_task);
    co_return ec;
  };
  CHECK(coro::sync_wait(f.loop, body()) == std::errc::invalid_argument);
}

namespace {
// The capture of a fork/join in which the side lane waits on an event recorded
// before the capture, and the origin re-records that event later in the
// capture. Returns what the side lane saw of the origin's pre-capture write.
struct rerecord_sequence {
  gpu::stream origin, side;
  gpu::event before, fork, join;
  int value = 0;
  int seen_by_side = -1;
  explicit rerecord_sequence(gpu::device& dev)
      : origin(dev.make_stream()), side(dev.make_stream()), before(dev.make_event()), fork(dev.make_event()),
        join(dev.make_event()) {}
  void enqueue_body() {
    origin.record(fork);
    side.wait(fork);
    side.wait(before);  // recorded before the capture: an external wait
    side.enqueue([this] { seen_by_side = value; });
    side.record(join);
    origin.wait(join);
    origin.enqueue([this] { ++value; });
    origin.record(before);  // the same event, re-recorded inside the capture
  }
};
}  // namespace

TEST_CASE("a replay's external wait sees the event as it was at launch, not the graph's own later record",
          "[gpu][host][graph]") {
  fixture f;
  rerecord_sequence seq(f.dev);
  seq.origin.enqueue([&] { seq.value = 41; });
  seq.origin.record(seq.before);

  // Eager: the side lane waits for the record made before, then the origin
  // re-records the event after joining the side lane.
  seq.enqueue_body();
  auto wait_origin = [&]() -> coro::task<void> { co_await seq.origin.async_wait(coro::use_task); };
  coro::sync_wait(f.loop, wait_origin());
  CHECK(seq.seen_by_side == 41);
  CHECK(seq.value == 42);

  seq.origin.ref().begin_capture();
  seq.enqueue_body();
  auto exec = seq.origin.ref().end_capture().instantiate();
  // Replayed, the same sequence must mean the same: the side lane's external
  // wait is on the event's record at launch, never on the replay's own later
  // record of it (which only comes after the origin joined the side lane).
  for (int round = 0; round < 3; ++round) {
    exec.launch(seq.origin);
    coro::sync_wait(f.loop, wait_origin());
    CHECK(seq.seen_by_side == 42 + round);
    CHECK(seq.value == 43 + round);
  }
}

TEST_CASE("a graph owns what it records and waits on: its events may be destroyed before it is launched",
          "[gpu][host][graph]") {
  fixture f;
  auto origin = f.dev.make_stream();
  auto side = f.dev.make_stream();
  std::vector<int> order;
  gpu::graph_exec exec;
  {
    auto fork = f.dev.make_event();
    auto join = f.dev.make_event();
    auto outside = f.dev.make_event();
    origin.record(outside);
    origin.ref().begin_capture();
    origin.record(fork);
    side.wait(fork);
    side.wait(outside);  // external: read at launch
    side.enqueue([&] { order.push_back(1); });
    side.record(join);
    origin.wait(join);
    origin.enqueue([&] { order.push_back(2); });
    origin.record(outside);  // recorded by each replay, with no event left to hold it
    exec = origin.ref().end_capture().instantiate();
  }  // the events die here, as a scheduler's do while its cached graphs live on
  for (int round = 0; round < 2; ++round) {
    exec.launch(origin);
    auto wait_origin = [&]() -> coro::task<void> { co_await origin.async_wait(coro::use_task); };
    coro::sync_wait(f.loop, wait_origin());
  }
  CHECK(order == std::vector<int>{1, 2, 1, 2});
}
