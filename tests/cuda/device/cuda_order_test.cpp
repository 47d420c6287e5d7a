// CUDA events claim their place on their stream, so the reactor keeps their
// waits ordered per stream (docs/completion_reactor.md): ordering, a failure
// and a cancellation in the middle of a stream's queue, on a device.
#include "cobatch/gpu/cuda/cuda_device.hpp"

#include "cobatch/gpu/cuda/error.hpp"
#include "cobatch/gpu/cuda/probe_kernels.hpp"
#include "cuda_fixture.hpp"

#include <asio/bind_cancellation_slot.hpp>
#include <asio/cancellation_signal.hpp>
#include <catch2/catch.hpp>
#include <cuda_runtime.h>

#include <cstdint>
#include <system_error>
#include <vector>

using namespace cobatch;
using cuda_test::fixture;
namespace probe = gpu::cuda::probe;

namespace {
// About 5 ms on current GPUs: long enough that the waits below are pending
// when they are submitted.
constexpr std::uint64_t spin_cycles = 10'000'000;
}  // namespace

TEST_CASE("CUDA markers claim increasing positions and complete in stream order", "[cuda][order]") {
  fixture f;
  auto s = f.dev.make_stream();
  auto t = f.dev.make_stream();
  auto e = f.dev.make_event();
  std::vector<gpu::fence> marks;
  for (int i = 0; i < 3; ++i) {
    probe::spin(spin_cycles, nullptr, 0, s);
    if (i == 1) {
      s.record(e);
      marks.push_back(e.ref().impl().current());
    } else {
      marks.push_back(s.ref().mark());
    }
  }
  REQUIRE(marks[0].order().claimed());
  CHECK(marks[1].order().stream == marks[0].order().stream);
  CHECK(marks[2].order().stream == marks[0].order().stream);
  CHECK(marks[0].order().position < marks[1].order().position);
  CHECK(marks[1].order().position < marks[2].order().position);
  CHECK(t.ref().mark().order().stream != marks[0].order().stream);

  std::vector<int> order;
  for (int i : {2, 0, 1}) {
    f.reactor.async_wait(marks[static_cast<std::size_t>(i)], [&order, i](std::error_code ec) {
      CHECK_FALSE(ec);
      order.push_back(i);
    });
  }
  f.loop.run();
  CHECK(order == std::vector<int>{0, 1, 2});
}

TEST_CASE("a CUDA fence after a refused launch fails at once and claims no order", "[cuda][order][error]") {
  fixture f;
  auto s = f.dev.make_stream();
  probe::spin(spin_cycles, nullptr, 0, s);
  const auto before = s.ref().mark();
  probe::invalid_launch(s);
  const auto after = s.ref().mark();
  CHECK(before.order().claimed());
  CHECK_FALSE(after.order().claimed());  // its failure must not wait behind `before`
  std::error_code before_ec = asio::error::would_block;
  std::error_code after_ec;
  f.reactor.async_wait(before, [&](std::error_code ec) { before_ec = ec; });
  f.reactor.async_wait(after, [&](std::error_code ec) { after_ec = ec; });
  f.loop.run();
  CHECK_FALSE(before_ec);
  CHECK(cuda_test::is_refused_launch(after_ec));
}

TEST_CASE("a cancelled wait in the middle of a CUDA stream completes with operation_aborted",
          "[cuda][order][cancel]") {
  fixture f;
  auto s = f.dev.make_stream();
  std::vector<gpu::fence> marks;
  for (int i = 0; i < 3; ++i) {
    probe::spin(spin_cycles, nullptr, 0, s);
    marks.push_back(s.ref().mark());
  }
  std::vector<std::error_code> results(3, asio::error::would_block);
  asio::cancellation_signal signal;
  f.reactor.async_wait(marks[0], [&](std::error_code ec) { results[0] = ec; });
  f.reactor.async_wait(marks[1], asio::bind_cancellation_slot(signal.slot(), [&](std::error_code ec) {
                         results[1] = ec;
                       }));
  f.reactor.async_wait(marks[2], [&](std::error_code ec) { results[2] = ec; });
  f.loop.poll();
  signal.emit(asio::cancellation_type::terminal);
  f.loop.run();
  CHECK_FALSE(results[0]);
  CHECK(results[1] == asio::error::operation_aborted);
  CHECK_FALSE(results[2]);
}
