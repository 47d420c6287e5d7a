#include "cobatch/gpu/cuda/cuda_device.hpp"

#include "cobatch/gpu/cuda/error.hpp"
#include "cobatch/gpu/cuda/probe_kernels.hpp"
#include "cobatch/gpu/error.hpp"
#include "cuda_fixture.hpp"

#include <catch2/catch.hpp>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <stdexcept>

using namespace cobatch;
using cuda_test::fixture;
namespace probe = gpu::cuda::probe;

TEST_CASE("a kernel on another stream sees the data after an event join", "[cuda][stream][event]") {
  fixture f;
  constexpr std::size_t n = 1 << 16;
  constexpr std::uint32_t iterations = 20000;  // long enough that a missing join reads unfinished data
  auto producer = f.dev.make_stream();
  auto consumer = f.dev.make_stream();
  auto ready = f.dev.make_event();
  const auto input = cuda_test::random_floats(n, 1);
  gpu::cuda::device_buffer in(n * sizeof(float), producer), mid(n * sizeof(float), producer),
      out(n * sizeof(float), producer);
  auto host = cuda_test::pinned_floats(n);
  gpu::cuda::fill_async(mid.data(), 0, n * sizeof(float), producer);
  gpu::cuda::copy_async(in.data(), input.data(), n * sizeof(float), producer);
  probe::fma_chain(in.as<float>(), mid.as<float>(), n, iterations, producer);
  producer.record(ready);
  consumer.wait(ready);  // on the device: no host thread blocks
  probe::scale_copy(mid.as<float>(), out.as<float>(), n, 2.0f, consumer);
  gpu::cuda::copy_async(host.data(), out.data(), n * sizeof(float), consumer);
  auto body = [&]() -> coro::task<void> { co_await consumer.async_wait(coro::use_task); };
  coro::sync_wait(f.loop, body());
  for (std::size_t i = 0; i < n; i += 97) {
    REQUIRE(host.as<float>()[i] == 2.0f * probe::expected_fma(input[i], iterations));
  }
  CHECK(ready.query().is_ready());
  // Buffers are freed in the order of the stream they were made on; the
  // consumer's last use must be joined into it first.
  auto done = f.dev.make_event();
  consumer.record(done);
  producer.wait(done);
}

TEST_CASE("an awaited event resumes the coroutine only after its kernel finished", "[cuda][event]") {
  fixture f;
  auto s = f.dev.make_stream();
  auto e = f.dev.make_event();
  gpu::cuda::allocation flag_host(sizeof(std::uint32_t), gpu::cuda::memory_kind::pinned_host);
  gpu::cuda::device_buffer flag(sizeof(std::uint32_t), s);
  *flag_host.as<std::uint32_t>() = 0;
  gpu::cuda::fill_async(flag.data(), 0, sizeof(std::uint32_t), s);
  // About 20 ms on current GPUs: the coroutine suspends for real.
  probe::spin(std::uint64_t{40'000'000}, flag.as<std::uint32_t>(), 0xC0FFEEu, s);
  gpu::cuda::copy_async(flag_host.data(), flag.data(), sizeof(std::uint32_t), s);
  s.record(e);
  bool pending_before = false;
  std::uint32_t seen = 0;
  auto body = [&]() -> coro::task<void> {
    pending_before = e.query().is_pending();
    co_await e.async_wait(coro::use_task);
    seen = *static_cast<volatile std::uint32_t*>(flag_host.as<std::uint32_t>());
  };
  coro::sync_wait(f.loop, body());
  CHECK(pending_before);
  CHECK(seen == 0xC0FFEEu);
  CHECK(e.query().is_ready());
}

TEST_CASE("an invalid launch reaches the awaiting coroutine as a CUDA error", "[cuda][error]") {
  fixture f;
  auto s = f.dev.make_stream();
  probe::empty(s);
  auto before = s.ref().mark();  // a fence of work before the failure is unaffected
  probe::invalid_launch(s);
  auto body = [&]() -> coro::task<std::error_code> {
    auto [ec] = co_await s.async_wait(coro::as_tuple_task);
    co_return ec;
  };
  const auto ec = coro::sync_wait(f.loop, body());
  CHECK(cuda_test::is_refused_launch(ec));
  CHECK(s.ref().error() == ec);
  auto wait_before = [&]() -> coro::task<std::error_code> {
    auto [e2] = co_await f.reactor.async_wait(before, coro::as_tuple_task);
    co_return e2;
  };
  CHECK_FALSE(coro::sync_wait(f.loop, wait_before()));
  // The device is unharmed: a fresh stream works.
  auto t = f.dev.make_stream();
  probe::empty(t);
  auto ok = [&]() -> coro::task<void> { co_await t.async_wait(coro::use_task); };
  CHECK_NOTHROW(coro::sync_wait(f.loop, ok()));
}

TEST_CASE("cuda_device basics: memory, priorities, events, native handles", "[cuda][device]") {
  fixture f;
  CHECK(gpu::cuda::cuda_device::count() >= 1);
  CHECK(f.dev.backend() == gpu::backend_kind::cuda);
  CHECK_FALSE(f.dev.name().empty());
  const auto mem = f.dev.memory();
  CHECK(mem.total > 0);
  CHECK(mem.free <= mem.total);

  auto low = f.dev.make_stream({gpu::stream_priority::low});
  auto high = f.dev.make_stream({gpu::stream_priority::high});
  int p_low = 0, p_high = 0, least = 0, greatest = 0;
  REQUIRE(cudaStreamGetPriority(static_cast<cudaStream_t>(low.ref().native_handle()), &p_low) == cudaSuccess);
  REQUIRE(cudaStreamGetPriority(static_cast<cudaStream_t>(high.ref().native_handle()), &p_high) == cudaSuccess);
  REQUIRE(cudaDeviceGetStreamPriorityRange(&least, &greatest) == cudaSuccess);
  CHECK(p_low == least);
  CHECK(p_high == greatest);

  // Pooled events come back: many short-lived events cost no new CUDA events.
  for (int i = 0; i < 1000; ++i) {
    auto e = f.dev.make_event();
    low.record(e);
  }
  auto timed_start = f.dev.make_event(gpu::cuda::event_timing::enabled);
  auto timed_stop = f.dev.make_event(gpu::cuda::event_timing::enabled);
  low.record(timed_start);
  probe::spin(1'000'000, nullptr, 0, low);
  low.record(timed_stop);
  auto body = [&]() -> coro::task<void> { co_await timed_stop.async_wait(coro::use_task); };
  coro::sync_wait(f.loop, body());
  CHECK(gpu::cuda::elapsed_ms(timed_start, timed_stop) > 0.0f);

  // Ownership is the type's. An owning stream hands its CUDA stream back...
  auto* raw = static_cast<cudaStream_t>(high.release());
  CHECK_FALSE(high);
  {
    // ...a borrow uses it without owning it, one record per native stream...
    auto borrowed = f.dev.borrow(raw);
    CHECK(f.dev.borrow(raw) == borrowed);
    probe::empty(borrowed);
    auto w = [&]() -> coro::task<void> { co_await borrowed.async_wait(coro::use_task); };
    coro::sync_wait(f.loop, w());
    f.dev.forget(raw);
  }
  CHECK(cudaStreamQuery(raw) == cudaSuccess);  // the borrow left it alone
  {
    // ...and adopting it makes an owning stream again, which destroys it.
    auto adopted = f.dev.from_native_handle(raw);
    probe::empty(adopted);
    auto w = [&]() -> coro::task<void> { co_await adopted.async_wait(coro::use_task); };
    coro::sync_wait(f.loop, w());
    CHECK(static_cast<cudaStream_t>(adopted.release()) == raw);
  }
  CHECK(cudaStreamDestroy(raw) == cudaSuccess);  // handed back, so still ours to destroy
  // Events: a pooled event handed back leaves the pool; adopting takes it again.
  auto pooled = f.dev.make_event();
  auto* raw_event = static_cast<cudaEvent_t>(pooled.release());
  CHECK(cudaEventQuery(raw_event) == cudaSuccess);
  auto adopted_event = f.dev.from_native_handle(raw_event);
  low.record(adopted_event);
  auto e = [&]() -> coro::task<void> { co_await adopted_event.async_wait(coro::use_task); };
  coro::sync_wait(f.loop, e());
  // A typed null pointer still compiles (the nullptr overloads are deleted);
  // it is refused at run time.
  CHECK_THROWS_AS(f.dev.from_native_handle(static_cast<CUstream_st*>(nullptr)), std::system_error);
  CHECK_THROWS_AS(f.dev.borrow(static_cast<CUevent_st*>(nullptr)), std::system_error);
}
