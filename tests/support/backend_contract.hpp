// The promises every backend of gpu:: makes, written once and run against
// each backend: the host backend in gpu_tests (always, in CI), the CUDA
// backend in cuda_tests (on a GPU, by scripts/gpu-check). A backend takes
// part by implementing contract::backend and naming itself in
// COBATCH_BACKEND_CONTRACT(type, "name"), which registers one Catch2 test
// case per promise, tagged [contract][name].
//
// Work is enqueued as host functions (stream.enqueue), which both backends
// run in stream order (CUDA: cudaLaunchHostFunc, also inside graphs), so the
// data each promise is checked on is plain host memory; collectives move
// data in memory the backend provides. Orderings are made certain by gates
// opened by hand (a host function that waits for the test), never by
// sleeping.
#pragma once

#include "cobatch/coro/run_loop.hpp"
#include "cobatch/coro/sync_wait.hpp"
#include "cobatch/coro/use_task.hpp"
#include "cobatch/gpu/collective_wait.hpp"
#include "cobatch/gpu/communicator.hpp"
#include "cobatch/gpu/copy.hpp"
#include "cobatch/gpu/device_memory.hpp"
#include "cobatch/gpu/device.hpp"
#include "cobatch/gpu/error.hpp"
#include "cobatch/gpu/kernels/resolve_refs.hpp"

#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <future>
#include <memory>
#include <numeric>
#include <span>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

namespace contract {

namespace gpu = cobatch::gpu;
namespace coro = cobatch::coro;

/// What a backend lends the contract.
class backend {
 public:
  virtual ~backend() = default;
  virtual coro::run_loop& loop() = 0;
  /// The device of rank `r` (every rank's, for a backend with one device).
  virtual gpu::device& device(int r = 0) = 0;
  /// Ranks one process can hold (the host backend: any; CUDA: one per GPU).
  virtual int max_ranks() const = 0;
  virtual std::vector<gpu::communicator> communicators(int ranks, std::chrono::milliseconds timeout) = 0;
  /// `bytes` of memory that rank `r`'s collectives can use, zeroed, alive
  /// until the backend object is destroyed.
  virtual void* collective_memory(int r, std::size_t bytes) = 0;
  /// Copies in the order of `s`, between host memory and collective memory.
  virtual void copy(void* dst, const void* src, std::size_t bytes, gpu::stream_ref s) = 0;
  /// Opens what issuing one collective on every rank from this thread needs
  /// (NCCL: a thread-wide group); nothing for backends whose ranks do not
  /// wait for each other while being issued.
  virtual std::shared_ptr<void> all_ranks_scope() { return nullptr; }
};

/// A host function that holds its stream until the test opens it.
class gate {
 public:
  void enqueue_on(gpu::stream_ref s) {
    auto opened = opened_;
    s.enqueue([opened] { opened->wait(); });
  }
  void open() { promise_.set_value(); }

 private:
  std::promise<void> promise_;
  std::shared_ptr<std::shared_future<void>> opened_ =
      std::make_shared<std::shared_future<void>>(promise_.get_future().share());
};

inline std::error_code await_stream(backend& b, gpu::stream_ref s) {
  auto body = [&]() -> coro::task<std::error_code> {
    auto [ec] = co_await s.async_wait(coro::as_tuple_task);
    co_return ec;
  };
  return coro::sync_wait(b.loop(), body());
}

inline std::error_code await_fence(backend& b, gpu::fence f) {
  auto body = [&]() -> coro::task<std::error_code> {
    auto [ec] = co_await b.device().reactor().async_wait(f, coro::as_tuple_task);
    co_return ec;
  };
  return coro::sync_wait(b.loop(), body());
}

inline std::error_code injected() { return make_error_code(gpu::errc::out_of_memory); }

// --- streams, events, fences -------------------------------------------------

// --- memory ---------------------------------------------------------------------

// What the engine's step runner does each step, on a small scale: staged
// values and references in pinned host memory, one copy in, references
// resolved on the device from a table the device holds, one copy back out.
inline void pinned_staging_and_references_round_trip(backend& b) {
  gpu::device& d = b.device();
  gpu::stream s = d.make_stream();
  const std::vector<std::int32_t> staged{5, -1, 7, -3, -2, 0, -4, 9};  // -4: past the table
  const std::vector<std::int32_t> table{100, 200, 300};
  const std::vector<std::int32_t> want{5, 100, 7, 300, 200, 0, 0, 9};
  gpu::pinned_buffer in = gpu::allocate_pinned(d, staged.size() * sizeof(std::int32_t));
  gpu::pinned_buffer out = gpu::allocate_pinned(d, want.size() * sizeof(std::int32_t));
  REQUIRE(in.size() == staged.size() * sizeof(std::int32_t));
  for (std::byte x : out.bytes()) REQUIRE(x == std::byte{0});
  std::memcpy(in.data(), staged.data(), in.size());
  gpu::typed_buffer<std::int32_t> src(d, staged.size()), refs(d, table.size()), dst(d, want.size());
  gpu::copy_async(refs.span(), std::span<const std::int32_t>(table), s);
  gpu::copy_async(src.span(), std::span<const std::int32_t>(reinterpret_cast<const std::int32_t*>(in.data()), staged.size()), s);
  gpu::kernels::resolve_refs_args a;
  a.src = src.data();
  a.table = refs.data();
  a.dst = dst.data();
  a.count = static_cast<std::int32_t>(staged.size());
  a.table_size = static_cast<std::int32_t>(table.size());
  gpu::kernels::enqueue_resolve_refs(d.backend(), a, s);
  const std::span<std::int32_t> back(reinterpret_cast<std::int32_t*>(out.data()), want.size());
  gpu::copy_async(back, gpu::device_span<const std::int32_t>(dst.span()), s);
  REQUIRE_FALSE(await_stream(b, s));
  CHECK(std::vector<std::int32_t>(back.begin(), back.end()) == want);
  a.count = -1;
  CHECK_THROWS_AS(gpu::kernels::enqueue_resolve_refs(d.backend(), a, s), std::system_error);
  CHECK_THROWS_AS(gpu::allocate_pinned(d, 0), std::system_error);
}

inline void stream_runs_in_order(backend& b) {
  auto s = b.device().make_stream();
  std::vector<int> order;  // written only in stream order
  for (int i = 0; i < 200; ++i) s.enqueue([&order, i] { order.push_back(i); });
  REQUIRE_FALSE(await_stream(b, s));
  std::vector<int> expected(200);
  std::iota(expected.begin(), expected.end(), 0);
  CHECK(order == expected);
}

inline void event_joins_streams(backend& b) {
  auto producer = b.device().make_stream();
  auto consumer = b.device().make_stream();
  auto ready = b.device().make_event();
  std::vector<int> data(1000, 0);
  long sum = -1;
  gate g;
  g.enqueue_on(producer);
  producer.enqueue([&] { std::iota(data.begin(), data.end(), 0); });
  producer.record(ready);
  consumer.wait(ready);  // a device-side join: no host thread blocks here
  consumer.enqueue([&] { sum = std::accumulate(data.begin(), data.end(), 0L); });
  auto consumed = consumer.ref().mark();
  // The producer is held: the consumer cannot have run, whatever the timing.
  CHECK(ready.query().is_pending());
  CHECK(consumed.query().is_pending());
  g.open();
  REQUIRE_FALSE(await_fence(b, consumed));
  CHECK(sum == 999L * 1000 / 2);
  CHECK(ready.query().is_ready());
  // An event never recorded counts as reached, as a CUDA event does.
  CHECK(b.device().make_event().query().is_ready());
}

inline void fences_cover_what_came_before(backend& b) {
  auto s = b.device().make_stream();
  gate g;
  g.enqueue_on(s);
  bool first = false, second = false;
  s.enqueue([&] { first = true; });
  auto after_first = s.ref().mark();
  s.enqueue([&] { second = true; });
  auto after_second = s.ref().mark();
  CHECK(after_first.query().is_pending());
  g.open();
  REQUIRE_FALSE(await_fence(b, after_first));
  CHECK(first);
  REQUIRE_FALSE(await_fence(b, after_second));
  CHECK(second);
  // A failure fails the fences after it and none before it.
  auto clean = s.ref().mark();
  s.enqueue([] { throw std::system_error(injected(), "contract: injected failure"); });
  auto failed = s.ref().mark();
  CHECK_FALSE(await_fence(b, clean));
  CHECK(await_fence(b, failed) == injected());
  CHECK(s.ref().error() == injected());
  CHECK(await_stream(b, s) == injected());
  // What a host function throws that is no std::system_error still fails
  // its stream, as errc::operation_failed.
  auto other = b.device().make_stream();
  other.enqueue([] { throw 42; });
  CHECK(await_stream(b, other) == gpu::errc::operation_failed);
}

inline void failures_cross_joins(backend& b) {
  auto a = b.device().make_stream();
  auto bs = b.device().make_stream();
  auto c = b.device().make_stream();
  auto b_before = bs.ref().mark();
  a.enqueue([] { throw std::system_error(injected(), "contract: producer failed"); });
  auto from_a = b.device().make_event();
  a.record(from_a);
  bs.wait(from_a);
  bool ran_after_join = false;
  bs.enqueue([&] { ran_after_join = true; });
  CHECK(await_stream(b, bs) == injected());
  CHECK(bs.ref().error() == injected());
  CHECK_FALSE(await_fence(b, b_before));  // work before the join is clean
  // Transitively: a stream joining the consumer fails too.
  auto from_b = b.device().make_event();
  bs.record(from_b);
  c.wait(from_b);
  CHECK(await_stream(b, c) == injected());
  (void)ran_after_join;  // whether later work runs is the backend's choice; its failure is not
}

// --- graphs ----------------------------------------------------------------------

namespace detail {
// One step of two streams over persistent host buffers: the main stream
// computes, forks a side stream through an event, both transform, the main
// stream joins the side back and combines.
struct two_stream_step {
  gpu::stream_ref main, side;
  gpu::event fork, join;
  std::vector<long> in, doubled, squared, combined;
  int runs = 0;

  two_stream_step(gpu::device& dev, gpu::stream_ref m, gpu::stream_ref s, std::size_t n)
      : main(m), side(s), fork(dev.make_event()), join(dev.make_event()), in(n), doubled(n), squared(n), combined(n) {}

  void enqueue() {
    main.enqueue([this] {
      for (std::size_t i = 0; i < in.size(); ++i) doubled[i] = 2 * in[i];
    });
    main.record(fork);
    side.wait(fork);
    side.enqueue([this] {
      for (std::size_t i = 0; i < in.size(); ++i) squared[i] = doubled[i] * doubled[i];
    });
    side.record(join);
    main.wait(join);
    main.enqueue([this] {
      for (std::size_t i = 0; i < in.size(); ++i) combined[i] = squared[i] - doubled[i];
      ++runs;
    });
  }
};
}  // namespace detail

inline void graph_replay_equals_eager(backend& b) {
  constexpr std::size_t n = 512;
  auto main = b.device().make_stream();
  auto side = b.device().make_stream();
  detail::two_stream_step eager(b.device(), main, side, n), graphed(b.device(), main, side, n);

  main.ref().begin_capture();
  CHECK(main.ref().capturing());
  graphed.enqueue();
  auto g = main.ref().end_capture();
  CHECK_FALSE(main.ref().capturing());
  CHECK(graphed.runs == 0);  // captured, not run
  auto exec = g.instantiate();

  for (int replay = 0; replay < 4; ++replay) {
    for (std::size_t i = 0; i < n; ++i) {
      eager.in[i] = static_cast<long>(i * 7 + replay * 13) % 101 - 50;
      graphed.in[i] = eager.in[i];
    }
    eager.enqueue();
    REQUIRE_FALSE(await_stream(b, main));
    exec.launch(main);
    REQUIRE_FALSE(await_stream(b, main));
    CHECK(graphed.combined == eager.combined);
    CHECK(graphed.runs == replay + 1);
  }
  // A failing node reaches whoever awaits the replay.
  auto failing = b.device().make_stream();
  failing.ref().begin_capture();
  failing.enqueue([] { throw std::system_error(injected(), "contract: node failed"); });
  auto bad = failing.ref().end_capture().instantiate();
  bad.launch(failing);
  CHECK(await_stream(b, failing) == injected());
  // Ending a capture that was never begun is refused.
  auto idle = b.device().make_stream();
  CHECK_THROWS_AS(idle.ref().end_capture(), std::system_error);
}

inline void capture_misuse_is_refused(backend& b) {
  auto origin = b.device().make_stream();
  auto side = b.device().make_stream();
  auto fork = b.device().make_event();
  origin.ref().begin_capture();
  CHECK_THROWS_AS(origin.ref().mark(), std::system_error);  // nothing to wait for in a capture
  origin.record(fork);
  side.wait(fork);  // side joins the capture
  side.enqueue([] {});  // and is never joined back
  CHECK_THROWS_AS(origin.ref().end_capture(), std::system_error);
  CHECK_FALSE(origin.ref().capturing());
}

// --- communicators ---------------------------------------------------------------

inline void collectives_move_the_right_data(backend& b) {
  const int ranks = std::min(4, b.max_ranks());
  auto comms = b.communicators(ranks, std::chrono::seconds(30));
  REQUIRE(static_cast<int>(comms.size()) == ranks);
  constexpr std::size_t count = 64;
  const auto bytes = count * sizeof(float);
  const auto world = static_cast<std::size_t>(ranks);
  std::vector<gpu::stream> streams;
  std::vector<void*> send, gathered, reduced, scattered, a2a;
  std::vector<std::vector<float>> host_send(world), host_gathered(world), host_reduced(world), host_scattered(world),
      host_a2a(world);
  for (int r = 0; r < ranks; ++r) {
    const auto ur = static_cast<std::size_t>(r);
    streams.push_back(b.device(r).make_stream({gpu::stream_priority::high}));
    send.push_back(b.collective_memory(r, bytes * world));
    gathered.push_back(b.collective_memory(r, bytes * world));
    reduced.push_back(b.collective_memory(r, bytes * world));
    scattered.push_back(b.collective_memory(r, bytes));
    a2a.push_back(b.collective_memory(r, bytes * world));
    host_send[ur].resize(count * world);
    // Element i of slice q on rank r: 1000 r + 100 q + i.
    for (std::size_t q = 0; q < world; ++q) {
      for (std::size_t i = 0; i < count; ++i) host_send[ur][q * count + i] = float(1000 * r + 100 * int(q) + int(i));
    }
    b.copy(send[ur], host_send[ur].data(), bytes * world, streams[ur]);
  }
  {
    auto scope = b.all_ranks_scope();
    for (int r = 0; r < ranks; ++r) {
      const auto ur = static_cast<std::size_t>(r);
      comms[ur].all_gather(send[ur], gathered[ur], count, gpu::data_type::f32, streams[ur]);
      comms[ur].all_reduce(send[ur], reduced[ur], count * world, gpu::data_type::f32, gpu::reduce_op::sum, streams[ur]);
      comms[ur].reduce_scatter(send[ur], scattered[ur], count, gpu::data_type::f32, gpu::reduce_op::max, streams[ur]);
      gpu::group_guard group(comms[ur]);
      comms[ur].all_to_all(group, send[ur], a2a[ur], count, gpu::data_type::f32, streams[ur]);
    }
    for (int r = 0; r < ranks; ++r) comms[static_cast<std::size_t>(r)].barrier(streams[static_cast<std::size_t>(r)]);
  }
  // Point to point, in a ring: every rank sends its first slice to the next
  // and receives the previous one's (one rank: to and from itself).
  std::vector<void*> ring(world);
  std::vector<std::vector<float>> host_ring(world, std::vector<float>(count));
  for (int r = 0; r < ranks; ++r) ring[static_cast<std::size_t>(r)] = b.collective_memory(r, bytes);
  {
    auto scope = b.all_ranks_scope();
    for (int r = 0; r < ranks; ++r) {
      const auto ur = static_cast<std::size_t>(r);
      gpu::group_guard group(comms[ur]);
      comms[ur].send(group, send[ur], count, gpu::data_type::f32, (r + 1) % ranks, streams[ur]);
      comms[ur].recv(group, ring[ur], count, gpu::data_type::f32, (r + ranks - 1) % ranks, streams[ur]);
    }
  }
  for (int r = 0; r < ranks; ++r) {
    const auto ur = static_cast<std::size_t>(r);
    b.copy(host_ring[ur].data(), ring[ur], bytes, streams[ur]);
  }
  for (int r = 0; r < ranks; ++r) {
    const auto ur = static_cast<std::size_t>(r);
    host_gathered[ur].resize(count * world);
    host_reduced[ur].resize(count * world);
    host_scattered[ur].resize(count);
    host_a2a[ur].resize(count * world);
    b.copy(host_gathered[ur].data(), gathered[ur], bytes * world, streams[ur]);
    b.copy(host_reduced[ur].data(), reduced[ur], bytes * world, streams[ur]);
    b.copy(host_scattered[ur].data(), scattered[ur], bytes, streams[ur]);
    b.copy(host_a2a[ur].data(), a2a[ur], bytes * world, streams[ur]);
  }
  for (int r = 0; r < ranks; ++r) {
    auto body = [&]() -> coro::task<std::error_code> {
      auto [ec] = co_await gpu::async_wait_collective(comms[static_cast<std::size_t>(r)],
                                                      streams[static_cast<std::size_t>(r)], coro::as_tuple_task);
      co_return ec;
    };
    REQUIRE_FALSE(coro::sync_wait(b.loop(), body()));
  }
  for (std::size_t r = 0; r < world; ++r) {
    for (std::size_t q = 0; q < world; ++q) {
      for (std::size_t i = 0; i < count; i += 7) {
        // all_gather: slice q is rank q's first slice.
        REQUIRE(host_gathered[r][q * count + i] == float(1000 * int(q) + int(i)));
        // all_reduce: the sum over ranks.
        float sum = 0;
        for (std::size_t p = 0; p < world; ++p) sum += host_send[p][q * count + i];
        REQUIRE(host_reduced[r][q * count + i] == sum);
        // all_to_all: slice q is rank q's slice for r.
        REQUIRE(host_a2a[r][q * count + i] == float(1000 * int(q) + 100 * int(r) + int(i)));
      }
    }
    for (std::size_t i = 0; i < count; i += 7) {
      // reduce_scatter with max: rank r gets slice r, largest from the last rank.
      REQUIRE(host_scattered[r][i] == float(1000 * (ranks - 1) + 100 * int(r) + int(i)));
      // send/recv: the previous rank's first slice.
      const int previous = (int(r) + ranks - 1) % ranks;
      REQUIRE(host_ring[r][i] == float(1000 * previous + int(i)));
    }
  }
}

inline void an_aborted_collective_fails_its_stream_and_the_streams_that_joined_it(backend& b) {
  auto comms = b.communicators(1, std::chrono::seconds(30));
  auto comm_stream = b.device().make_stream({gpu::stream_priority::high});
  auto compute = b.device().make_stream();
  void* buf = b.collective_memory(0, 4 * sizeof(float));
  gate g;
  g.enqueue_on(comm_stream);  // the collective waits behind this, unfinished at the abort
  comms[0].all_reduce(buf, buf, 4, gpu::data_type::f32, gpu::reduce_op::sum, comm_stream);
  auto reduced = b.device().make_event();
  comm_stream.record(reduced);
  compute.wait(reduced);  // the micro-batch pattern: compute consumes the result
  compute.enqueue([] {});
  // The gate opens once the abort has returned or has visibly failed the
  // collective, whichever comes first: never before the abort took hold
  // (the collective must be unfinished then), and never after an abort that
  // waits for the held stream (NCCL's may).
  auto collective = comm_stream.ref().mark();
  std::atomic<bool> abort_returned{false};
  std::thread opener([&] {
    while (!abort_returned.load() && collective.query().is_pending()) std::this_thread::yield();
    g.open();
  });
  comms[0].abort();
  abort_returned = true;
  opener.join();
  CHECK(await_stream(b, compute) == gpu::errc::communicator_aborted);
  CHECK(await_stream(b, comm_stream) == gpu::errc::communicator_aborted);
  // A later collective fails too: refused when issued, or failed on its
  // stream (the backend's choice), with the same reason either way.
  auto later = b.device().make_stream();
  try {
    comms[0].all_reduce(buf, buf, 4, gpu::data_type::f32, gpu::reduce_op::sum, later);
    CHECK(await_stream(b, later) == gpu::errc::communicator_aborted);
  } catch (const std::system_error& e) {
    CHECK(e.code() == gpu::errc::communicator_aborted);
  }
}

}  // namespace contract

#define COBATCH_CONTRACT_CASE(backend_type, name, promise, title)         \
  TEST_CASE(name ": " title, "[contract][" name "]") {                   \
    backend_type b;                                                        \
    ::contract::promise(b);                                                \
  }

/// Registers every promise of the contract for `backend_type` (default
/// constructible, a contract::backend), tagged [contract][name].
#define COBATCH_BACKEND_CONTRACT(backend_type, name)                                                                  \
  COBATCH_CONTRACT_CASE(backend_type, name, pinned_staging_and_references_round_trip,                                \
                        "pinned staging and device-resolved references round-trip through stream-ordered copies")     \
  COBATCH_CONTRACT_CASE(backend_type, name, stream_runs_in_order, "a stream runs its work in order")                  \
  COBATCH_CONTRACT_CASE(backend_type, name, event_joins_streams, "an event join orders work across streams")          \
  COBATCH_CONTRACT_CASE(backend_type, name, fences_cover_what_came_before,                                            \
                        "a fence covers the work before it, and fails only for failures before it")                   \
  COBATCH_CONTRACT_CASE(backend_type, name, failures_cross_joins, "a failure crosses event joins, transitively")       \
  COBATCH_CONTRACT_CASE(backend_type, name, graph_replay_equals_eager,                                                \
                        "a captured two-stream graph replays like eager execution")                                   \
  COBATCH_CONTRACT_CASE(backend_type, name, capture_misuse_is_refused,                                                \
                        "capture misuse is refused, not silently recorded")                                           \
  COBATCH_CONTRACT_CASE(backend_type, name, collectives_move_the_right_data,                                          \
                        "collectives move the right data between ranks")                                              \
  COBATCH_CONTRACT_CASE(backend_type, name, an_aborted_collective_fails_its_stream_and_the_streams_that_joined_it,     \
                        "an aborted collective fails its stream and the streams that joined it")
